"""The folder nnU-Net scans for external trainers (``nnUNet_extTrainer``).

nnU-Net imports every module here as a top-level module and afterwards removes them from ``sys.modules``, so
these files only re-export classes defined in the installed ``nnunet_dinomix`` package (whose classes stay
importable and picklable). ``dinomix_trainer_dir`` prints this folder's installed location.
"""
