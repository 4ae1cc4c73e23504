"""Tiny DeepSeek-V3 (DeepseekV3ForCausalLM) and DeepSeek-V2-Lite (DeepseekV2ForCausalLM) checkpoints in the released
layout, for generators.models (see FAMILIES there).

deepseek-ai/DeepSeek-V3 (and R1, which has the same config.json) at tiny size: multi-head latent attention with a
low-rank query (q_lora_rank) and a compressed KV (kv_lora_rank plus a shared RoPE key of qk_rope_head_dim), one
dense layer (first_k_dense_replace) before the MoE layers, 16 routed experts in 4 groups (2 groups kept per token,
4 experts chosen) with sigmoid scores, the learned correction bias (e_score_correction_bias) and a scaling factor,
one shared expert, YaRN RoPE scaling x40 with mscale and mscale_all_dim. The release also holds one multi-token
prediction layer after the last decoder layer (model.layers.<num_hidden_layers>.*, num_nextn_predict_layers 1),
which llama.cpp's converter leaves out: release() adds it. The release stores FP8 weights with block scales; this
fixture is the bf16 layout of the same tensors (as DeepSeek's own fp8_cast_bf16.py writes it).

DeepSeek-V3's tokenizer (a byte-level BPE of 129280 entries) is not among llama.cpp's test vocabularies: GPT-2's
byte-level BPE stands in (its special token id replaces the release's 0 and 1). It is the smallest byte-level one
(50257 tokens): reading a GGUF's vocabulary and merges dominates the time of this family's tests.
"""
from __future__ import annotations

import json
from pathlib import Path

MODEL_TYPES = {"DeepseekV3ForCausalLM": "deepseek_v3", "DeepseekV2ForCausalLM": "deepseek_v2"}

# The release's rope_scaling, as its config.json states it (v4 spelling: "type")
V3_ROPE_SCALING = {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0, "mscale_all_dim": 1.0,
                   "original_max_position_embeddings": 4096, "type": "yarn"}

BASE = {
    "deepseek_v3": dict(
        hidden_size=64, intermediate_size=128, moe_intermediate_size=32, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=4, q_lora_rank=96, kv_lora_rank=64, qk_nope_head_dim=32,
        qk_rope_head_dim=16, v_head_dim=32, n_routed_experts=16, n_shared_experts=1, num_experts_per_tok=4,
        n_group=4, topk_group=2, first_k_dense_replace=1, norm_topk_prob=True, routed_scaling_factor=2.5,
        hidden_act="silu", max_position_embeddings=163840, rms_norm_eps=1e-6, attention_bias=False,
        attention_dropout=0.0, initializer_range=0.02, use_cache=True, pretraining_tp=1,
        rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 40.0, "beta_fast": 32.0,
                         "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0,
                         "original_max_position_embeddings": 4096}),
    # deepseek-ai/DeepSeek-V2-Lite: a plain q_proj (q_lora_rank null), softmax routing over all experts (one
    # group, greedy top-k), no top-k normalisation, two shared experts, YaRN with mscale 0.707. 27 layers, as
    # released: llama.cpp recognises a model without q_lora_rank by that layer count alone
    "deepseek_v2": dict(
        hidden_size=64, intermediate_size=128, moe_intermediate_size=32, num_hidden_layers=27,
        num_attention_heads=4, num_key_value_heads=4, q_lora_rank=None, kv_lora_rank=64, qk_nope_head_dim=32,
        qk_rope_head_dim=16, v_head_dim=32, n_routed_experts=12, n_shared_experts=2, num_experts_per_tok=4,
        n_group=1, topk_group=1, topk_method="greedy", first_k_dense_replace=1, norm_topk_prob=False,
        routed_scaling_factor=1.0, hidden_act="silu", max_position_embeddings=163840, rms_norm_eps=1e-6,
        attention_bias=False, attention_dropout=0.0, initializer_range=0.02, use_cache=True, pretraining_tp=1,
        rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 40.0, "beta_fast": 32.0,
                         "beta_slow": 1.0, "mscale": 0.707, "mscale_all_dim": 0.707,
                         "original_max_position_embeddings": 4096}),
}

VARIANTS = {
    # DeepSeek-V3 / R1: bf16, sharded, one tensor per expert, the MTP layer, the release's config.json
    "deepseek-v3": dict(arch="DeepseekV3ForCausalLM", vocab="gpt-2", dtype="bfloat16", tied=False,
                        sharded=True, seed=60),
    # DeepSeek-V2-Lite: bf16, one file
    "deepseek-v2-lite": dict(arch="DeepseekV2ForCausalLM", vocab="gpt-2", dtype="bfloat16", tied=False, seed=61),
}

# config.json of deepseek-ai/DeepSeek-V3 as released (transformers 4.33.1 wrote it), less quantization_config (FP8)
# and auto_map (the release's own modeling code, which transformers no longer needs)
V3_RELEASE = {"aux_loss_alpha": 0.001, "ep_size": 1, "moe_layer_freq": 1, "num_nextn_predict_layers": 1,
              "scoring_func": "sigmoid", "seq_aux": True, "topk_method": "noaux_tc", "rope_theta": 10000,
              "rope_scaling": V3_ROPE_SCALING, "torch_dtype": "bfloat16", "transformers_version": "4.33.1"}
V3_FIELDS = ("architectures", "attention_bias", "attention_dropout", "bos_token_id", "eos_token_id",
             "first_k_dense_replace", "hidden_act", "hidden_size", "initializer_range", "intermediate_size",
             "kv_lora_rank", "max_position_embeddings", "model_type", "moe_intermediate_size", "n_group",
             "n_routed_experts", "n_shared_experts", "norm_topk_prob", "num_attention_heads", "num_experts_per_tok",
             "num_hidden_layers", "num_key_value_heads", "pretraining_tp", "q_lora_rank", "qk_nope_head_dim",
             "qk_rope_head_dim", "rms_norm_eps", "routed_scaling_factor", "tie_word_embeddings", "topk_group",
             "use_cache", "v_head_dim", "vocab_size")

# config.json of deepseek-ai/DeepSeek-V2-Lite as released, less auto_map
V2_RELEASE = {"aux_loss_alpha": 0.001, "ep_size": 1, "moe_layer_freq": 1, "scoring_func": "softmax", "seq_aux": True,
              "rope_theta": 10000, "rope_scaling": V3_ROPE_SCALING | {"mscale": 0.707, "mscale_all_dim": 0.707},
              "torch_dtype": "bfloat16", "transformers_version": "4.33.1"}
V2_FIELDS = tuple(sorted(set(V3_FIELDS) | {"topk_method"}))

# the MTP layer's own tensors, beside a full decoder layer (names as in the release's model.layers.61)
MTP_OWN = ("embed_tokens.weight", "enorm.weight", "hnorm.weight", "eh_proj.weight", "shared_head.norm.weight",
           "shared_head.head.weight")


def release(folder: Path, config, variant) -> None:
    """config.json as DeepSeek released it and, for V3, the multi-token prediction layer appended to the last
    shard."""
    import torch
    from safetensors.torch import load_file, save_file

    d = config.to_dict()
    v3 = variant.arch == "DeepseekV3ForCausalLM"
    out = {k: d[k] for k in V3_FIELDS} | V3_RELEASE if v3 else {k: d[k] for k in V2_FIELDS} | V2_RELEASE
    (folder / "config.json").write_text(json.dumps(dict(sorted(out.items())), indent=2) + "\n")
    if not v3:
        return

    n = d["num_hidden_layers"]
    index_path = folder / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    last = sorted(set(index["weight_map"].values()))[-1]
    shards = {f: load_file(folder / f) for f in set(index["weight_map"].values())}
    every = {k: t for s in shards.values() for k, t in s.items()}
    g = torch.Generator().manual_seed(2000 + variant.seed)
    mtp = {}
    # a decoder layer like the last one (MoE), its values redrawn: the converter must not use them
    for name, t in every.items():
        if name.startswith(f"model.layers.{n - 1}."):
            mtp[f"model.layers.{n}." + name.split(".", 3)[3]] = torch.randn(t.shape, generator=g).to(t.dtype)
    e, vocab = d["hidden_size"], d["vocab_size"]
    shapes = {"embed_tokens.weight": (vocab, e), "enorm.weight": (e,), "hnorm.weight": (e,),
              "eh_proj.weight": (e, 2 * e), "shared_head.norm.weight": (e,), "shared_head.head.weight": (vocab, e)}
    for name in MTP_OWN:
        mtp[f"model.layers.{n}.{name}"] = torch.randn(shapes[name], generator=g).to(torch.bfloat16)
    save_file(shards[last] | mtp, folder / last, metadata={"format": "pt"})
    index["weight_map"] |= {k: last for k in mtp}
    index["weight_map"] = dict(sorted(index["weight_map"].items()))
    index["metadata"]["total_size"] += sum(t.numel() * t.element_size() for t in mtp.values())
    index_path.write_text(json.dumps(index, indent=2) + "\n")
