"""Tiny Llama 4 text (Llama4ForCausalLM) checkpoints in the released layout, for generators.models (see FAMILIES there).

config.json holds the fields of Llama-4-Scout-17B-16E's text_config (meta-llama's release, written by transformers
4.51: torch_dtype, rope_theta and llama3 rope_scaling, moe_layers and no_rope_layers stated, no layer_types) at
tiny size: 4 layers, as llama.cpp leaves RoPE out of every 4th layer and needs at least 4. The experts are stored
as released and as transformers holds them: `feed_forward.experts.gate_up_proj` [n_expert, n_embd, 2 * n_ff] and
`down_proj` [n_expert, n_ff, n_embd] ([in, out]), one router, one shared expert.

- "llama4": Scout: 16 experts, MoE in every layer, Q/K L2 norm in the RoPE layers, bf16, sharded.
- "llama4-maverick": Maverick (Llama-4-Maverick-17B-128E-Instruct): 128 experts (llama.cpp turns the Q/K norm off
  for exactly that count, as Maverick's use_qk_norm false says), MoE in every 2nd layer, dense FFNs of
  intermediate_size_mlp in the others; in the released multimodal layout: Llama4ForConditionalGeneration, the
  language model's tensors under language_model.*, its settings in text_config, beside a vision model (2 layers of
  width 32, 4x4 patches) and its projector, sharded.

Temperature tuning and chunked attention act only from position 8191 on (floor_scale and attention_chunk_size
8192, which llama.cpp fixes): the recorded 24 positions cannot show them; the converter refuses other values.

Tokenizer: Llama 4's 202k-token BPE vocabulary is not among llama.cpp's test vocabularies; Llama 3's byte-level
BPE (llama-bpe, which llama.cpp's converter reads the same way, with _set_vocab_gpt2) stands in, with its special
token ids.
"""
from __future__ import annotations

import json
from pathlib import Path

MODEL_TYPES = {"Llama4ForCausalLM": "llama4_text"}

# Llama-4-Scout-17B-16E's text_config at hidden size 64: 4 query heads of 16 on 2 KV heads, experts of 32 (Scout:
# 8192), dense FFNs of 128 (16384)
BASE = {
    "llama4_text": dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                        head_dim=16, intermediate_size=32, intermediate_size_mlp=128, num_local_experts=16,
                        num_experts_per_tok=1, interleave_moe_layer_step=1, moe_layers=[0, 1, 2, 3],
                        no_rope_layers=[1, 1, 1, 0], max_position_embeddings=10485760, rms_norm_eps=1e-5,
                        use_qk_norm=True, attention_chunk_size=8192, attn_temperature_tuning=True,
                        floor_scale=8192, attn_scale=0.1, attention_bias=False, attention_dropout=0.0,
                        hidden_act="silu", initializer_range=0.02, output_router_logits=False,
                        router_aux_loss_coef=0.001, router_jitter_noise=0.0),
}

# Scout's llama3 rope scaling (low and high frequency factors both 1: a hard cut at 8192 positions)
_ROPE = {"rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 16.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 1.0, "original_max_position_embeddings": 8192}}

VARIANTS = {
    "llama4": dict(arch="Llama4ForCausalLM", vocab="llama-bpe", dtype="bfloat16", tied=False, style="v4",
                   sharded=True, seed=60, config=dict(_ROPE)),
    # as Meta released it (Llama4ForConditionalGeneration, rewritten by release() from the text model transformers
    # builds): the language model under language_model.*, its settings in text_config, beside a vision model
    "llama4-maverick": dict(arch="Llama4ForCausalLM", vocab="llama-bpe", dtype="bfloat16", tied=False, style="v4",
                            sharded=True, seed=61, config=dict(_ROPE, num_local_experts=128,
                                                               interleave_moe_layer_step=2, moe_layers=[1, 3],
                                                               use_qk_norm=False)),
}

# the fields of Scout's text_config (besides architectures), as transformers 5 names them before the v4 rewrite
RELEASE_FIELDS = ("attention_bias", "attention_chunk_size", "attention_dropout", "attn_scale",
                  "attn_temperature_tuning", "bos_token_id", "dtype", "eos_token_id", "floor_scale", "head_dim",
                  "hidden_act", "hidden_size", "initializer_range", "interleave_moe_layer_step", "intermediate_size",
                  "intermediate_size_mlp", "max_position_embeddings", "model_type", "moe_layers", "no_rope_layers",
                  "num_attention_heads", "num_experts_per_tok", "num_hidden_layers", "num_key_value_heads",
                  "num_local_experts", "output_router_logits", "pad_token_id", "rms_norm_eps", "rope_parameters",
                  "router_aux_loss_coef", "router_jitter_noise", "tie_word_embeddings", "use_cache", "use_qk_norm",
                  "vocab_size")


def release(folder: Path, config, variant) -> None:
    """config.json with the release's fields only (transformers 5 adds layer_types, no_rope_layer_interval, ...),
    and its cache_implementation."""
    path = folder / "config.json"
    saved = json.loads(path.read_text())
    out = {"architectures": saved["architectures"]} | {k: saved[k] for k in RELEASE_FIELDS if k in saved}
    out["cache_implementation"] = "hybrid"
    if variant.seed == VARIANTS["llama4-maverick"]["seed"]:  # (seeds name the variants)
        out = conditional_generation(folder, out)
    path.write_text(json.dumps(dict(sorted(out.items())), indent=2) + "\n")


# Scout's vision_config at tiny size: 2 layers of width 32 over 4x4 patches of 14 pixels, pixel shuffle 0.5
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=56,
              patch_size=14, vision_output_dim=64, projector_input_dim=64, projector_output_dim=64,
              pixel_shuffle_ratio=0.5, norm_eps=1e-5, hidden_act="gelu", num_channels=3, initializer_range=0.02,
              multi_modal_projector_bias=False, projector_dropout=0.0, attention_dropout=0.0,
              vision_feature_select_strategy="default", rope_theta=10000)
# Scout's <|image_start|>, <|image_end|> and <|image|> are not in the stand-in vocabulary: Llama 3's reserved
# special tokens take their place
IMAGE_TOKENS = dict(boi_token_index=128011, eoi_token_index=128012, image_token_index=128013)


def conditional_generation(folder: Path, text: dict) -> dict:
    """Rewrites the saved Llama4ForCausalLM as Scout and Maverick are released: model.* and lm_head.* under language_model.,
    a vision model (transformers' own, seeded) under vision_model.* and its projector in the last shard, and the
    text settings in text_config (v4 spelling). Returns the top-level config.json."""
    import torch
    import transformers
    from generators.models import config_v4
    from safetensors.torch import load_file, save_file

    torch.manual_seed(61)
    vision = transformers.models.llama4.Llama4VisionModel(transformers.Llama4VisionConfig(**VISION)).eval()
    extra = {f"vision_model.{k}": v.to(torch.bfloat16) for k, v in vision.state_dict().items()}
    extra["multi_modal_projector.linear_1.weight"] = (torch.randn(text["hidden_size"], VISION["vision_output_dim"])
                                                      * VISION["vision_output_dim"] ** -0.5).to(torch.bfloat16)
    shards = sorted(folder.glob("*.safetensors"))
    weight_map = {}
    for shard in shards:
        tensors = {"language_model." + k: t for k, t in load_file(shard).items()}
        if shard == shards[-1]:
            tensors |= extra
        save_file(tensors, shard, metadata={"format": "pt"})
        weight_map |= {k: shard.name for k in tensors}
    index = folder / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    data["weight_map"] = dict(sorted(weight_map.items()))
    index.write_text(json.dumps(data, indent=2) + "\n")
    text_config = config_v4({k: v for k, v in text.items() if k not in ("architectures", "tie_word_embeddings")},
                            "llama4_text")
    del text_config["transformers_version"]
    return dict(architectures=["Llama4ForConditionalGeneration"], model_type="llama4", text_config=text_config,
                vision_config=VISION | dict(model_type="llama4_vision_model"), tie_word_embeddings=False,
                dtype=text["dtype"]) | IMAGE_TOKENS
