"""The package's commands, one module each: argument parsing, the user-facing error wrapper
(:func:`nnunet_dinomix.errors.command`) and printing; the work is done by the library modules they call.
Library code never imports from here.

=============================  ====================================================================
dinomix_preprocess_unlabeled   the unlabeled pool, with the dataset's own nnU-Net plans
dinomix_plans_preset           a derived (e.g. CPU-sized) plans file
dinomix_doctor                 checks an installation and a dataset's readiness
dinomix_demo                   the whole workflow on the synthetic phantom
dinomix_generate_phantom       the synthetic phantom as an nnU-Net raw dataset
dinomix_evaluate               per-class Dice / ASD / HD95 report of trained models
dinomix_convert                Synapse / AMOS downloads into nnU-Net datasets with the SSL splits
dinomix_reproduce              the commands of a published DHC / DINO-Mix setting
dinomix_offline_pl             offline pseudo-labelling rounds (the anchor)
dinomix_show_pic               pictures of PIC's mixed batches
dinomix_trainer_dir            the folder for nnUNet_extTrainer
=============================  ====================================================================
"""
