"""Derive a smaller plans file from a dataset's nnU-Net plans (the library behind ``dinomix_plans_preset``).

nnU-Net's documented way to change an architecture is a new plans file under a new plans identifier, trained
with ``-p``. A preset (``plans/*.json``) shrinks the patch to a voxel budget and caps the feature widths; the
network topology for the new patch comes from nnU-Net's own ``get_pool_and_conv_props``, as in its planner.
Spacing, normalisation and resampling stay, so the derived plans keep the source ``data_identifier`` and reuse
the already preprocessed data (labeled and unlabeled). The source plans file is never modified.
"""
from __future__ import annotations

import copy
import json
import os

import numpy as np

from nnunet_dinomix.errors import DinoMixError

_PLAIN_UNET = "dynamic_network_architectures.architectures.unet.PlainConvUNet"
_MIN_FEATURE_MAP_EDGE = 4  # nnU-Net's ExperimentPlanner.UNet_featuremap_min_edge_length


def preset_names():
    from importlib.resources import files
    return sorted(p.name[:-5] for p in files("nnunet_dinomix.plans").iterdir() if p.name.endswith(".json"))


def load_preset(name_or_path: str) -> dict:
    if os.path.isfile(name_or_path):
        path = name_or_path
    else:
        from importlib.resources import files
        path = str(files("nnunet_dinomix.plans") / f"{name_or_path}.json")
        if not os.path.isfile(path):
            raise DinoMixError(f"Unknown plans preset '{name_or_path}'. Shipped presets: {', '.join(preset_names())}; "
                               f"or give the path of a preset JSON file.")
    with open(path) as f:
        return json.load(f)


def shrink_patch(patch_size, max_voxels: int):
    """Scale a patch isotropically (in voxels) until it holds at most ``max_voxels``."""
    patch = np.asarray(patch_size, dtype=float)
    if np.prod(patch) <= max_voxels:
        return [int(p) for p in patch]
    scaled = patch * (max_voxels / np.prod(patch)) ** (1 / len(patch))
    return [max(int(np.floor(p)), 2 * _MIN_FEATURE_MAP_EDGE) for p in scaled]


def derive_plans(plans: dict, preset: dict) -> dict:
    from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props

    new = copy.deepcopy(plans)
    new["plans_name"] = preset["plans_name"]
    for name, settings in preset["configurations"].items():
        if name not in new["configurations"]:
            raise DinoMixError(f"The preset changes configuration '{name}', which these plans do not have "
                               f"(available: {', '.join(new['configurations'])}).")
        conf = new["configurations"][name]
        if "inherits_from" in conf or "architecture" not in conf:
            raise DinoMixError(f"Configuration '{name}' inherits its settings; presets only apply to full "
                               "configurations.")
        arch = conf["architecture"]
        if arch["network_class_name"] != _PLAIN_UNET:
            raise DinoMixError(f"Presets are written for {_PLAIN_UNET}; configuration '{name}' uses "
                               f"{arch['network_class_name']}.")
        patch = conf["patch_size"]
        if "max_patch_voxels" in settings:
            patch = shrink_patch(patch, int(settings["max_patch_voxels"]))
        _, strides, kernels, patch, _ = get_pool_and_conv_props(conf["spacing"], patch, _MIN_FEATURE_MAP_EDGE, 999999)
        n_stages = len(strides)
        base, cap = int(settings["base_num_features"]), int(settings["max_num_features"])
        kwargs = arch["arch_kwargs"]
        kwargs.update(
            n_stages=n_stages,
            features_per_stage=[min(cap, base * 2 ** i) for i in range(n_stages)],
            kernel_sizes=[list(k) for k in kernels],
            strides=[list(s) for s in strides],
            n_conv_per_stage=[int(settings.get("n_conv_per_stage", 2))] * n_stages,
            n_conv_per_stage_decoder=[int(settings.get("n_conv_per_stage_decoder", 2))] * (n_stages - 1),
        )
        conf["patch_size"] = [int(p) for p in patch]
        if "batch_size" in settings:
            conf["batch_size"] = int(settings["batch_size"])
        # data_identifier is left as it is: preprocessing is unchanged, so the data is shared
    return new


def write_derived_plans(dataset: str, preset_name: str, source_plans: str = "nnUNetPlans",
                        overwrite: bool = False) -> str:
    from batchgenerators.utilities.file_and_folder_operations import load_json, save_json
    from nnunet_dinomix import paths
    from nnunet_dinomix.paths import require_env

    preset = load_preset(preset_name)
    folder = os.path.join(require_env("nnUNet_preprocessed"), paths.resolve_dataset(dataset))
    source = os.path.join(folder, source_plans + ".json")
    if not os.path.isfile(source):
        raise DinoMixError(f"{source} does not exist. Run nnUNetv2_plan_and_preprocess -d {dataset} first.")
    if preset["plans_name"] == source_plans:
        raise DinoMixError("A preset must write a plans file under a new name; it never replaces the source plans.")
    derived = derive_plans(load_json(source), preset)
    target = os.path.join(folder, preset["plans_name"] + ".json")
    if os.path.isfile(target) and load_json(target) != json.loads(json.dumps(derived)) and not overwrite:
        raise DinoMixError(f"{target} exists with other content (made from older plans, or edited by hand). "
                           f"Nothing was written. Pass --overwrite to replace it.")
    save_json(derived, target, sort_keys=False)
    return target
