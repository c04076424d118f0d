"""Foundational Knowledge Distillation pieces (no nnU-Net import). Importing timm happens inside the functions,
so trainers and nnUNetv2_predict never import it unless a teacher is actually built."""
