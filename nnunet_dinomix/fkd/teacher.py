"""Load a frozen DINOv3 ViT from a local file, in any of the formats its weights are published in.

The architecture is timm's (``timm.models.eva``, Apache-2.0; it reproduces Meta's tokens exactly for the
same weights). Weights come only from a path the user gives; nothing is downloaded:

* Meta's original checkpoint (``dinov3_vits16_pretrain_lvd1689m-08c60483.pth`` and siblings): a plain
  state dict with Meta's key names, converted by timm's own ``checkpoint_filter_fn``;
* a Hugging Face model folder (``config.json`` + ``model.safetensors``, ``model_type: dinov3_vit``): keys
  mapped to Meta's names here, then the same timm filter;
* a timm checkpoint (``.safetensors``, or ``.pth``/``.bin`` with timm key names).

The size (S/16, S+/16, B/16, L/16, H+/16, 7B/16) is read from the tensors: embedding width, depth, and whether
the MLP is SwiGLU. The depth must be the published one: a file with a block missing is refused unless the depth
is named on purpose. The weights are licence-gated by Meta; this package never ships or fetches them.

This module is the one owner of the weights rule: :func:`resolve_weights` finds them (a trainer's
``dinov3_weights`` or ``$DINOMIX_DINOV3_WEIGHTS``), :func:`build_dinov3` loads them, :func:`describe_weights`
loads them as a trainer would and says what they are (the doctor's check).
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Dict, Optional

import torch
from torch import nn

from nnunet_dinomix.errors import DinoMixError

WEIGHTS_ENV = "DINOMIX_DINOV3_WEIGHTS"
WHERE_TO_GET = ("DINOv3 weights are licence-gated: request them from Meta (github.com/facebookresearch/dinov3, "
                "'Pretrained models') or accept the licence of a Hugging Face repository such as "
                "facebook/dinov3-vits16-pretrain-lvd1689m, then point nnunet-dinomix at the downloaded file or "
                f"folder with {WEIGHTS_ENV}=/path. nnunet-dinomix never downloads them.")


@dataclass(frozen=True)
class Arch:
    key: str  # the short name users give: vits16, vits16plus, vitb16, vitl16, vithplus16, vit7b16
    timm_name: str
    embed_dim: int
    depth: int
    swiglu: bool


ARCHS = {a.key: a for a in (
    Arch("vits16", "vit_small_patch16_dinov3", 384, 12, False),
    Arch("vits16plus", "vit_small_plus_patch16_dinov3", 384, 12, True),
    Arch("vitb16", "vit_base_patch16_dinov3", 768, 12, False),
    Arch("vitl16", "vit_large_patch16_dinov3", 1024, 24, False),
    Arch("vithplus16", "vit_huge_plus_patch16_dinov3", 1280, 32, True),
    Arch("vit7b16", "vit_7b_patch16_dinov3", 4096, 40, True),
)}


# ----------------------------------------------------------------------------- reading the formats
def _load_tensors(path: str) -> Dict[str, torch.Tensor]:
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        return load_file(path)
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        # torch's own message for a refused unpickle advises weights_only=False: not for a file of unknown origin
        reason = ("torch.load with weights_only=True cannot read it: not a PyTorch checkpoint, or one holding "
                  "Python objects besides tensors") if "weights_only" in str(e) else f"{type(e).__name__}: {e}"
        raise DinoMixError(f"Could not read {path} as a PyTorch checkpoint ({reason}). Expected Meta's DINOv3 .pth, a "
                           f"timm checkpoint or a Hugging Face folder. {WHERE_TO_GET}") from e
    for wrapper in ("model", "state_dict", "module"):  # training checkpoints wrap the weights
        if isinstance(content, dict) and isinstance(content.get(wrapper), dict):
            content = content[wrapper]
    if not isinstance(content, dict) or not all(isinstance(v, torch.Tensor) for v in content.values()):
        raise DinoMixError(f"{path} does not hold a state dict of tensors. {WHERE_TO_GET}")
    return content


_HF_LAYER = re.compile(r"^layer\.(\d+)\.(.+)$")
_HF_RENAMES = {"norm1": "norm1", "norm2": "norm2", "attention.o_proj": "attn.proj",
               "layer_scale1.lambda1": "ls1.gamma", "layer_scale2.lambda1": "ls2.gamma"}


def hf_to_meta(tensors: Dict[str, torch.Tensor], config: dict) -> Dict[str, torch.Tensor]:
    """Rename a ``DINOv3ViTModel`` state dict to Meta's key names (the inverse of transformers' converter)."""
    tensors = {k[len("model."):] if k.startswith("model.") else k: v for k, v in tensors.items()}
    gated = bool(config.get("use_gated_mlp", False))
    out: Dict[str, torch.Tensor] = {}
    layers: Dict[int, Dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        m = _HF_LAYER.match(k)
        if m:
            layers.setdefault(int(m.group(1)), {})[m.group(2)] = v
        elif k == "embeddings.cls_token":
            out["cls_token"] = v
        elif k == "embeddings.register_tokens":
            out["storage_tokens"] = v
        elif k == "embeddings.mask_token":
            out["mask_token"] = v.reshape(1, -1)
        elif k.startswith("embeddings.patch_embeddings."):
            out["patch_embed.proj." + k.rsplit(".", 1)[1]] = v
        elif k.startswith("norm."):
            out[k] = v
        else:
            raise DinoMixError(f"Unexpected key '{k}' in a Hugging Face DINOv3 checkpoint.")
    mlp = {"gate_proj": "w1", "up_proj": "w2", "down_proj": "w3"} if gated else {"up_proj": "fc1", "down_proj": "fc2"}
    for i, layer in sorted(layers.items()):
        prefix = f"blocks.{i}."
        for k, v in layer.items():
            name, _, leaf = k.rpartition(".")
            if name in ("attention.q_proj", "attention.k_proj", "attention.v_proj"):
                continue
            if name.startswith("mlp."):
                out[prefix + "mlp." + mlp[name[4:]] + "." + leaf] = v
            elif name in _HF_RENAMES:
                out[prefix + _HF_RENAMES[name] + "." + leaf] = v
            elif k in _HF_RENAMES:
                out[prefix + _HF_RENAMES[k]] = v
            else:
                raise DinoMixError(f"Unexpected key 'layer.{i}.{k}' in a Hugging Face DINOv3 checkpoint.")
        try:
            q, k_, v_ = (layer[f"attention.{p}_proj.weight"] for p in "qkv")
        except KeyError as e:
            raise DinoMixError(f"Layer {i} of the Hugging Face checkpoint lacks {e}; the file is incomplete.") from e
        out[prefix + "attn.qkv.weight"] = torch.cat((q, k_, v_))
        if "attention.q_proj.bias" in layer:
            qb, vb = layer["attention.q_proj.bias"], layer["attention.v_proj.bias"]
            out[prefix + "attn.qkv.bias"] = torch.cat((qb, torch.zeros_like(qb), vb))
    return out


def read_weights(path: str) -> Dict[str, torch.Tensor]:
    """Tensors from any supported format, with Meta's key names (or timm's, for timm checkpoints)."""
    if os.path.isdir(path):
        config_file, weights_file = os.path.join(path, "config.json"), os.path.join(path, "model.safetensors")
        missing = [os.path.basename(f) for f in (config_file, weights_file) if not os.path.isfile(f)]
        if missing:
            raise DinoMixError(f"{path} is a folder but lacks {' and '.join(missing)}; a Hugging Face DINOv3 folder "
                               f"holds config.json and model.safetensors. {WHERE_TO_GET}")
        with open(config_file) as f:
            config = json.load(f)
        if config.get("model_type") != "dinov3_vit":
            raise DinoMixError(f"{config_file} describes a '{config.get('model_type')}' model; nnunet-dinomix needs a "
                               f"DINOv3 ViT (model_type 'dinov3_vit').")
        return hf_to_meta(_load_tensors(weights_file), config)
    if not os.path.isfile(path):
        raise DinoMixError(f"DINOv3 weights not found at {path}. {WHERE_TO_GET}")
    return _load_tensors(path)


# ----------------------------------------------------------------------------- architecture from the tensors
def infer_arch(tensors: Dict[str, torch.Tensor]) -> tuple:
    """``(Arch, depth, qkv_bias)`` from Meta- or timm-named tensors."""
    if "cls_token" not in tensors or not any(k.startswith("blocks.") for k in tensors):
        if any(k.startswith(("downsample_layers.", "stages.")) for k in tensors):
            raise DinoMixError("These are DINOv3 ConvNeXt weights; nnunet-dinomix supports the DINOv3 ViTs "
                               f"({', '.join(ARCHS)}).")
        raise DinoMixError("The file does not look like a DINOv3 ViT (no cls_token / blocks.*). " + WHERE_TO_GET)
    embed_dim = tensors["cls_token"].shape[-1]
    depth = 1 + max(int(k.split(".")[1]) for k in tensors if k.startswith("blocks."))
    swiglu = any(".mlp.w1." in k or ".mlp.fc1_g." in k for k in tensors)
    candidates = [a for a in ARCHS.values() if a.embed_dim == embed_dim and a.swiglu == swiglu]
    if not candidates:
        raise DinoMixError(f"No DINOv3 ViT has embedding width {embed_dim}{' with SwiGLU' if swiglu else ''}.")
    arch = min(candidates, key=lambda a: abs(a.depth - depth))
    qkv_bias = any(k.endswith(("attn.qkv.bias", "attn.q_bias")) and v.abs().sum() > 0 for k, v in tensors.items())
    return arch, depth, qkv_bias


def build_dinov3(path: str, arch: Optional[str] = None, depth: Optional[int] = None) -> nn.Module:
    """A timm DINOv3 ViT with the weights at ``path``, strictly loaded, frozen and in eval mode.

    ``arch`` insists on a size; ``depth`` accepts a file with another number of blocks than its size was published
    with (a pruned model, on purpose). Without it, such a file is refused: it is most likely damaged."""
    import timm

    tensors = read_weights(path)
    found, found_depth, qkv_bias = infer_arch(tensors)
    if arch is not None:
        if arch not in ARCHS:
            raise DinoMixError(f"Unknown DINOv3 architecture '{arch}'; choose one of {', '.join(ARCHS)}.")
        if ARCHS[arch] != found:
            raise DinoMixError(f"{path} holds a DINOv3 {found.key} (width {found.embed_dim}, depth {found_depth}), "
                               f"but {arch} was requested. Use the matching weights or setting.")
    if found_depth != (found.depth if depth is None else depth):
        raise DinoMixError(
            f"{path} holds {found_depth} transformer blocks of width {found.embed_dim}; DINOv3 {found.key} has "
            + (f"{found.depth}. The file is probably truncated or modified; use the file as published. If its depth "
               f"was changed on purpose, set the trainer's dinov3_depth = {found_depth}."
               if depth is None else f"{found.depth} and dinov3_depth asks for {depth}."))
    depth = found_depth
    name = found.timm_name + ("_qkvb" if qkv_bias else "")
    overrides = {} if depth == found.depth else {"depth": depth}
    try:
        model = timm.create_model(name, pretrained=True, num_classes=0,
                                  pretrained_cfg_overlay=dict(state_dict=tensors), **overrides)
    except RuntimeError as e:  # strict load: missing or unexpected keys, wrong shapes
        raise DinoMixError(f"The weights in {path} do not fit timm's {name}: {str(e).splitlines()[0]} "
                           f"(truncated or modified file?). {WHERE_TO_GET}") from e
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def resolve_weights(weights: Optional[str] = None) -> str:
    """The DINOv3 weights to load: ``weights`` (a trainer's ``dinov3_weights``) or ``$DINOMIX_DINOV3_WEIGHTS``;
    a :class:`DinoMixError` that says how to provide them if neither names an existing path."""
    path = weights or os.environ.get(WEIGHTS_ENV)
    if not path:
        raise DinoMixError(f"{WEIGHTS_ENV} is not set. {WHERE_TO_GET}")
    if not os.path.exists(path):
        source = "the trainer's dinov3_weights" if weights else WEIGHTS_ENV
        raise DinoMixError(f"DINOv3 weights not found at {path} (from {source}). {WHERE_TO_GET}")
    return path


def describe_weights(weights: Optional[str] = None, arch: Optional[str] = None, depth: Optional[int] = None) -> str:
    """Resolve and load the weights exactly as a trainer would; a one-line description, or the trainer's error."""
    path = resolve_weights(weights)
    model = build_dinov3(path, arch, depth)
    n = sum(p.numel() for p in model.parameters())
    return f"{path}: DINOv3 ViT, {len(model.blocks)} blocks, width {model.embed_dim}, {n / 1e6:.1f}M parameters"
