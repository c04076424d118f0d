"""How nnU-Net finds this package's trainers: ``nnUNet_extTrainer`` pointing at the shipped shim folder."""
from __future__ import annotations

import os
from typing import List

ENV = "nnUNet_extTrainer"


def trainer_names() -> List[str]:
    """This package's trainers and their Budget twins (from :mod:`nnunet_dinomix.training.registry`)."""
    from nnunet_dinomix.training.registry import all_trainers
    return list(all_trainers())


def trainer_dir() -> str:
    """Installed location of the shim folder (the repository's ``trainers/``)."""
    import nnunet_dinomix.ext_trainers as shims
    return os.path.dirname(os.path.abspath(shims.__file__))


def ext_trainer_dirs() -> List[str]:
    return [p for p in os.environ.get(ENV, "").split(os.pathsep) if p]


def is_registered() -> bool:
    target = os.path.realpath(trainer_dir())
    return any(os.path.realpath(p) == target for p in ext_trainer_dirs())


def register_in_environment() -> None:
    """Add the shim folder to ``nnUNet_extTrainer`` of this process (and the processes it starts)."""
    if not is_registered():
        os.environ[ENV] = os.pathsep.join(ext_trainer_dirs() + [trainer_dir()])


def trainer_class(trainer: str) -> type:
    """The trainer class of that name, looked up the way nnU-Net looks it up (so subclasses defined elsewhere
    answer for themselves)."""
    import contextlib
    import io

    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    register_in_environment()
    with contextlib.redirect_stdout(io.StringIO()):  # nnU-Net narrates its search
        return recursive_find_trainer_class_by_name(trainer)


def check_dinov3_weights(trainers) -> None:
    """Before a long run: every trainer that distils from DINOv3 finds its weights (else a DinoMixError)."""
    from nnunet_dinomix.errors import DinoMixError
    from nnunet_dinomix.fkd.teacher import resolve_weights
    for name in trainers:
        cls = trainer_class(name)
        if getattr(cls, "use_fkd", False):
            try:
                resolve_weights(getattr(cls, "dinov3_weights", None))
            except DinoMixError as e:
                raise DinoMixError(f"{name} distils from DINOv3 and would need DINOv3 weights. {e}") from e
