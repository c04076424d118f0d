"""DINOv3 teacher loading from the three published formats, with randomly initialised weights (the real ones
are licence-gated). Each file is written in the exact on-disk layout of its format and read back through the
package's loader; the loaded model must reproduce the reference model's tokens."""
import json
import socket

import pytest
import torch
from safetensors.torch import save_file

from nnunet_dinomix.errors import DinoMixError
from nnunet_dinomix.fkd.teacher import build_dinov3, infer_arch, read_weights

DEPTH = 2


@pytest.fixture(scope="module")
def reference():
    import timm
    torch.manual_seed(0)
    model = timm.create_model("vit_small_patch16_dinov3", pretrained=False, depth=DEPTH, num_classes=0).eval()
    with torch.no_grad():  # make every block matter (layer scale starts at 1e-5)
        for name, p in model.named_parameters():
            if "gamma" in name or "norm" in name:
                p.copy_(torch.rand_like(p) + 0.5)
    return model


def _meta_state_dict(model):
    """timm -> Meta key names, as in Meta's released .pth (incl. the entries timm discards)."""
    sd = {}
    for k, v in model.state_dict().items():
        k = k.replace("reg_token", "storage_tokens").replace("gamma_1", "ls1.gamma").replace("gamma_2", "ls2.gamma")
        sd[k] = v.clone()
    dim = sd["cls_token"].shape[-1]
    sd["mask_token"] = torch.zeros(1, dim)
    sd["rope_embed.periods"] = torch.rand(dim // 6 // 4).to(torch.bfloat16)
    for i in range(DEPTH):
        sd[f"blocks.{i}.attn.qkv.bias"] = torch.zeros(3 * dim)  # released weights: all-zero qkv biases
        sd[f"blocks.{i}.attn.qkv.bias_mask"] = torch.ones(3 * dim)
    return sd


def _hf_folder(model, folder):
    """Meta -> Hugging Face layout (transformers' convert_dinov3_vit_to_hf.py mapping) + config.json."""
    meta = _meta_state_dict(model)
    hf = {"embeddings.cls_token": meta["cls_token"], "embeddings.register_tokens": meta["storage_tokens"],
          "embeddings.mask_token": meta["mask_token"].unsqueeze(1),
          "embeddings.patch_embeddings.weight": meta["patch_embed.proj.weight"],
          "embeddings.patch_embeddings.bias": meta["patch_embed.proj.bias"],
          "norm.weight": meta["norm.weight"], "norm.bias": meta["norm.bias"]}
    for i in range(DEPTH):
        b, l = f"blocks.{i}.", f"layer.{i}."
        q, k, v = meta[b + "attn.qkv.weight"].chunk(3)
        qb, _, vb = meta[b + "attn.qkv.bias"].chunk(3)
        hf.update({l + "attention.q_proj.weight": q, l + "attention.k_proj.weight": k,
                   l + "attention.v_proj.weight": v, l + "attention.q_proj.bias": qb,
                   l + "attention.v_proj.bias": vb,
                   l + "attention.o_proj.weight": meta[b + "attn.proj.weight"],
                   l + "attention.o_proj.bias": meta[b + "attn.proj.bias"],
                   l + "layer_scale1.lambda1": meta[b + "ls1.gamma"], l + "layer_scale2.lambda1": meta[b + "ls2.gamma"],
                   l + "mlp.up_proj.weight": meta[b + "mlp.fc1.weight"], l + "mlp.up_proj.bias": meta[b + "mlp.fc1.bias"],
                   l + "mlp.down_proj.weight": meta[b + "mlp.fc2.weight"],
                   l + "mlp.down_proj.bias": meta[b + "mlp.fc2.bias"]})
        for n in ("norm1", "norm2"):
            hf[l + f"{n}.weight"], hf[l + f"{n}.bias"] = meta[b + f"{n}.weight"], meta[b + f"{n}.bias"]
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in hf.items()}, str(folder / "model.safetensors"))
    config = {"model_type": "dinov3_vit", "hidden_size": 384, "intermediate_size": 1536, "num_hidden_layers": DEPTH,
              "num_attention_heads": 6, "num_register_tokens": 4, "patch_size": 16, "key_bias": False,
              "use_gated_mlp": False, "layerscale_value": 1e-5}
    (folder / "config.json").write_text(json.dumps(config))
    return str(folder)


@pytest.fixture
def files(reference, tmp_path):
    meta = tmp_path / "dinov3_vits16_pretrain_lvd1689m-08c60483.pth"
    torch.save(_meta_state_dict(reference), meta)
    timm_file = tmp_path / "vit_small_patch16_dinov3.safetensors"
    save_file(reference.state_dict(), str(timm_file))
    return {"meta": str(meta), "timm": str(timm_file), "hf": _hf_folder(reference, tmp_path / "hf")}


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the teacher loader tried to open a network connection")
    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.mark.parametrize("fmt", ["meta", "timm", "hf"])
def test_each_format_reproduces_the_reference_tokens(reference, files, fmt, no_network):
    model = build_dinov3(files[fmt], arch="vits16")
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

    truncated = torch.load(files["meta"], weights_only=True)
    del truncated["blocks.1.mlp.fc2.weight"]
    cut = tmp_path / "cut.pth"
    torch.save(truncated, cut)
    with pytest.raises(DinoMixError, match="do not fit timm's vit_small_patch16_dinov3"):
        build_dinov3(str(cut))

    with pytest.raises(DinoMixError, match="not found at .*licence-gated"):
        build_dinov3(str(tmp_path / "absent.pth"))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(DinoMixError, match="Could not read"):
        build_dinov3(str(garbage))
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    with pytest.raises(DinoMixError, match="lacks config.json and model.safetensors"):
        build_dinov3(str(empty_dir))
    with pytest.raises(DinoMixError, match="Unknown DINOv3 architecture"):
        build_dinov3(files["timm"], arch="vit_giant")


def test_doctor_identifies_or_rejects_the_configured_weights(files, tmp_path, monkeypatch):
    from nnunet_dinomix.doctor import FAIL, OK, check_teacher_weights
    from nnunet_dinomix.fkd.teacher import WEIGHTS_ENV
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    assert check_teacher_weights().status == OK
    monkeypatch.setenv(WEIGHTS_ENV, files["hf"])
    check = check_teacher_weights()
    assert check.status == OK and "vits16 (2 blocks, width 384)" in check.what
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path / "missing.pth"))
    check = check_teacher_weights()
    assert check.status == FAIL and "licence-gated" in check.detail
