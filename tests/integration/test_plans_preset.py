"""Derived plans: smaller, consistent with nnU-Net's topology rules, sharing the preprocessed data."""
import json
import os

import numpy as np
import pytest
import torch
from batchgenerators.utilities.file_and_folder_operations import load_json

from nnunet_dinomix.cli.plans_preset import main as preset_main
from nnunet_dinomix.errors import DinoMixError
from nnunet_dinomix.plans_preset import derive_plans, load_preset, shrink_patch, write_derived_plans


def _big_plans():
    """nnU-Net's planner output for an abdominal CT-like dataset (structure of a real nnUNetPlans.json)."""
    return {
        "dataset_name": "Dataset001_X", "plans_name": "nnUNetPlans", "transpose_forward": [0, 1, 2],
        "configurations": {"3d_fullres": {
            "data_identifier": "nnUNetPlans_3d_fullres", "batch_size": 2, "patch_size": [80, 160, 160],
            "spacing": [2.5, 0.8, 0.8],
            "architecture": {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                             "arch_kwargs": {"n_stages": 6, "features_per_stage": [32, 64, 128, 256, 320, 320],
                                             "kernel_sizes": [[1, 3, 3]] + [[3, 3, 3]] * 5,
                                             "strides": [[1, 1, 1], [1, 2, 2]] + [[2, 2, 2]] * 4,
                                             "n_conv_per_stage": [2] * 6, "n_conv_per_stage_decoder": [2] * 5,
                                             "conv_op": "torch.nn.modules.conv.Conv3d", "conv_bias": True,
                                             "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                                             "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None,
                                             "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
                                             "nonlin_kwargs": {"inplace": True}},
                             "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}},
            "3d_cascade_fullres": {"inherits_from": "3d_fullres"}},
    }


def test_shrink_patch_respects_budget_and_aspect():
    p = shrink_patch([80, 160, 160], 32 * 64 * 64)
    assert np.prod(p) <= 32 * 64 * 64
    assert p[1] == p[2] and p[1] > p[0]
    assert shrink_patch([16, 32, 32], 10 ** 6) == [16, 32, 32]


def test_tiny_preset_topology_is_consistent():
    plans = _big_plans()
    derived = derive_plans(plans, load_preset("tiny_cpu"))
    conf = derived["configurations"]["3d_fullres"]
    arch = conf["architecture"]["arch_kwargs"]
    assert derived["plans_name"] == "nnUNetPlansTinyCPU"
    assert plans["plans_name"] == "nnUNetPlans"  # the source is not modified
    assert conf["data_identifier"] == "nnUNetPlans_3d_fullres"  # data shared with the source plans
    assert np.prod(conf["patch_size"]) <= 131072
    assert max(arch["features_per_stage"]) <= 128 and arch["features_per_stage"][0] == 16
    n = arch["n_stages"]
    assert len(arch["strides"]) == len(arch["kernel_sizes"]) == len(arch["features_per_stage"]) == n
    assert len(arch["n_conv_per_stage_decoder"]) == n - 1
    divisor = np.prod(np.array(arch["strides"]), axis=0)
    assert (np.array(conf["patch_size"]) % divisor == 0).all()
    assert arch["kernel_sizes"][0] == [1, 3, 3]  # anisotropic spacing keeps nnU-Net's in-plane first kernel

    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    pm = PlansManager(derived)
    cm = pm.get_configuration("3d_fullres")
    net = nnUNetTrainer.build_network_architecture(pm, cm, 1, 4, True)
    with torch.no_grad():
        out = net(torch.zeros(1, 1, *conf["patch_size"]))
    assert out[0].shape == (1, 4, *conf["patch_size"])


def test_preset_errors():
    with pytest.raises(DinoMixError, match="Unknown plans preset 'huge'.*tiny_cpu"):
        load_preset("huge")
    bad = {"plans_name": "P", "configurations": {"3d_cascade_fullres": {"base_num_features": 8,
                                                                         "max_num_features": 16}}}
    with pytest.raises(DinoMixError, match="inherits"):
        derive_plans(_big_plans(), bad)
    with pytest.raises(DinoMixError, match="which these plans do not have"):
        derive_plans(_big_plans(), {"plans_name": "P", "configurations": {"2d": {}}})


def test_written_plans_never_overwrite_different_content(phantom_dataset, capsys):
    target = os.path.join(phantom_dataset["preprocessed"], "nnUNetPlansTinyCPU.json")
    before = open(target).read()
    write_derived_plans(str(phantom_dataset["id"]), "tiny_cpu")  # same content: fine
    assert load_json(target) == json.loads(before)
    custom = {"plans_name": "nnUNetPlansTinyCPU", "configurations": {"3d_fullres": {
        "base_num_features": 8, "max_num_features": 32}}}
    path = os.path.join(os.path.dirname(target), "..", "custom_preset.json")
    with open(path, "w") as f:
        json.dump(custom, f)
    assert preset_main(["-d", str(phantom_dataset["id"]), "--preset", path]) == 1
    assert "exists with other content" in capsys.readouterr().err
    assert open(target).read() == before
    os.remove(path)
