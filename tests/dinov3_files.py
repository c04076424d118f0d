"""DINOv3 files for the tests: Meta's layout comes from the package (nnunet_dinomix.fkd.random_teacher); this adds
the Hugging Face folder layout (transformers' DINOv3ViTModel on disk)."""
import json

from safetensors.torch import save_file

from nnunet_dinomix.fkd.random_teacher import meta_state_dict

DEPTH = 2


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
                   l + "mlp.up_proj.weight": meta[b + "mlp.fc1.weight"],
                   l + "mlp.up_proj.bias": meta[b + "mlp.fc1.bias"],
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
