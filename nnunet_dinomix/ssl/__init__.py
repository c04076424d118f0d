"""Semi-supervised building blocks that need torch only, not nnU-Net: EMA, losses, schedules, perturbations."""
