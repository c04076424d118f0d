"""Progressive Imbalance-aware CutMix (METHOD.md, PIC step). Torch only, no nnU-Net import."""
