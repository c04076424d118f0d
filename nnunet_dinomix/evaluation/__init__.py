"""Per-class segmentation metrics and the benchmark report (numpy/scipy; nnU-Net only for reading images)."""
