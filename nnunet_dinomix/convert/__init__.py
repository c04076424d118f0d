"""Converters from the public benchmark downloads to nnU-Net raw datasets with an unlabeled folder."""
