"""Randomly initialised DINOv3 ViT-S weights written in the exact on-disk formats of the published checkpoints
(the real weights are licence-gated and never downloaded): Meta's .pth key names, Hugging Face folders."""
import json

import torch
from safetensors.torch import save_file

DEPTH = 2


def random_dinov3(depth: int = DEPTH, seed: int = 0):
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
    path = str(folder / "dinov3_vits16_pretrain_lvd1689m-08c60483.pth")
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


def hf_folder(model, folder):
    """Meta -> Hugging Face layout (transformers' convert_dinov3_vit_to_hf.py mapping) + config.json."""
    meta = meta_state_dict(model)
    depth = len(model.blocks)
    hf = {"embeddings.cls_token": meta["cls_token"], "embeddings.register_tokens": meta["storage_tokens"],
          "embeddings.mask_token": meta["mask_token"].unsqueeze(1),
          "embeddings.patch_embeddings.weight": meta["patch_embed.proj.weight"],
          "embeddings.patch_embeddings.bias": meta["patch_embed.proj.bias"],
          "norm.weight": meta["norm.weight"], "norm.bias": meta["norm.bias"]}
    for i in range(depth):
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
    config = {"model_type": "dinov3_vit", "hidden_size": 384, "intermediate_size": 1536, "num_hidden_layers": depth,
              "num_attention_heads": 6, "num_register_tokens": 4, "patch_size": 16, "key_bias": False,
              "use_gated_mlp": False, "layerscale_value": 1e-5}
    (folder / "config.json").write_text(json.dumps(config))
    return str(folder)
