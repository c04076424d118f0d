"""Randomly initialised DINOv3 ViT-S/16 weights in Meta's released checkpoint layout.

For tests and cost benchmarks only: a random teacher carries no knowledge. The real weights are licence-gated and
never downloaded; this writes a file with the exact key names and extra entries of Meta's ``.pth`` so that the
real loading path (:func:`nnunet_dinomix.fkd.teacher.build_dinov3`) is what reads it. No nnU-Net import.
"""
import os

import torch

META_VITS16_FILE = "dinov3_vits16_pretrain_lvd1689m-08c60483.pth"


def random_dinov3(depth: int = 12, seed: int = 0):
    """A timm DINOv3 ViT-S/16 with random weights; layer scales and norms randomised so every block matters."""
    import timm
    torch.manual_seed(seed)
    model = timm.create_model("vit_small_patch16_dinov3", pretrained=False, depth=depth, num_classes=0).eval()
    with torch.no_grad():  # layer scale starts at 1e-5
        for name, p in model.named_parameters():
            if "gamma" in name or "norm" in name:
                p.copy_(torch.rand_like(p) + 0.5)
    return model


def write_meta_checkpoint(model, folder) -> str:
    """Save ``model`` as Meta's released ViT-S/16 file (name and key layout) in ``folder``; returns the path."""
    path = os.path.join(str(folder), META_VITS16_FILE)
    torch.save(meta_state_dict(model), path)
    return path


def meta_state_dict(model):
    """timm -> Meta key names, as in Meta's released .pth (incl. the entries timm discards)."""
    sd = {}
    for k, v in model.state_dict().items():
        k = k.replace("reg_token", "storage_tokens").replace("gamma_1", "ls1.gamma").replace("gamma_2", "ls2.gamma")
        sd[k] = v.clone()
    dim = sd["cls_token"].shape[-1]
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    sd["mask_token"] = torch.zeros(1, dim)
    sd["rope_embed.periods"] = torch.rand(dim // 6 // 4).to(torch.bfloat16)
    for i in range(depth):
        sd[f"blocks.{i}.attn.qkv.bias"] = torch.zeros(3 * dim)  # released weights: all-zero qkv biases
        sd[f"blocks.{i}.attn.qkv.bias_mask"] = torch.ones(3 * dim)
    return sd
