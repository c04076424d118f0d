# nnU-Net external-trainer shim: the classes live in the installed nnunet_dinomix package, listed once in
# nnunet_dinomix.training.registry; nnU-Net's finder looks them up as attributes of this module.
from nnunet_dinomix.training.registry import all_trainers

globals().update(all_trainers())
