"""DINOv3 teacher loading from the three published formats, with randomly initialised weights (the real ones
are licence-gated). Each file is written in the exact on-disk layout of its format and read back through the
package's loader; the loaded model must reproduce the reference model's tokens."""
import socket

import pytest
import torch
from safetensors.torch import save_file

from dinov3_files import DEPTH, hf_folder
from nnunet_dinomix.fkd.random_teacher import meta_state_dict, random_dinov3
from nnunet_dinomix.errors import DinoMixError
from nnunet_dinomix.fkd.teacher import build_dinov3, infer_arch, read_weights

@pytest.fixture(scope="module")
def reference():
    return random_dinov3(depth=DEPTH)


@pytest.fixture
def files(reference, tmp_path):
    meta = tmp_path / "dinov3_vits16_pretrain_lvd1689m-08c60483.pth"
    torch.save(meta_state_dict(reference), meta)
    timm_file = tmp_path / "vit_small_patch16_dinov3.safetensors"
    save_file(reference.state_dict(), str(timm_file))
    return {"meta": str(meta), "timm": str(timm_file), "hf": hf_folder(reference, tmp_path / "hf")}


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the teacher loader tried to open a network connection")
    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.mark.parametrize("fmt", ["meta", "timm", "hf"])
def test_each_format_reproduces_the_reference_tokens(reference, files, fmt, no_network):
    model = build_dinov3(files[fmt], arch="vits16", depth=DEPTH)  # shallow on purpose, to keep the test fast
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    x = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        expected = reference.forward_features(x)
        got = model.forward_features(x)
    assert got.shape == (2, 5 + 4 * 3, 384)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_architecture_is_read_from_the_file(files):
    arch, depth, qkv_bias = infer_arch(read_weights(files["meta"]))
    assert (arch.key, depth, qkv_bias) == ("vits16", DEPTH, False)


def test_wrong_size_truncated_or_missing_weights_fail_clearly(files, tmp_path):
    import timm
    base = timm.create_model("vit_base_patch16_dinov3", pretrained=False, depth=1, num_classes=0)
    base_file = tmp_path / "vitb.safetensors"
    save_file(base.state_dict(), str(base_file))
    with pytest.raises(DinoMixError, match="holds a DINOv3 vitb16.*vits16 was requested"):
        build_dinov3(str(base_file), arch="vits16")

    # a block short of the published depth: refused unless that depth is named on purpose
    with pytest.raises(DinoMixError, match=f"holds {DEPTH} transformer blocks.*vits16 has 12.*dinov3_depth = {DEPTH}"):
        build_dinov3(files["meta"])
    with pytest.raises(DinoMixError, match=f"dinov3_depth asks for {DEPTH + 1}"):
        build_dinov3(files["meta"], depth=DEPTH + 1)

    truncated = torch.load(files["meta"], weights_only=True)
    del truncated["blocks.1.mlp.fc2.weight"]
    cut = tmp_path / "cut.pth"
    torch.save(truncated, cut)
    with pytest.raises(DinoMixError, match="do not fit timm's vit_small_patch16_dinov3"):
        build_dinov3(str(cut), depth=DEPTH)

    with pytest.raises(DinoMixError, match="not found at .*licence-gated"):
        build_dinov3(str(tmp_path / "absent.pth"))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(DinoMixError, match="Could not read") as refused:
        build_dinov3(str(garbage))
    assert "weights_only=False" not in str(refused.value)  # torch's advice is not for a file of unknown origin
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    with pytest.raises(DinoMixError, match="lacks config.json and model.safetensors"):
        build_dinov3(str(empty_dir))
    with pytest.raises(DinoMixError, match="Unknown DINOv3 architecture"):
        build_dinov3(files["timm"], arch="vit_giant")
