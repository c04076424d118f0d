"""nnU-Net trainers. Import the classes from the submodules; nothing heavy is imported here."""
