"""Tiny gpt-oss (GptOssForCausalLM) checkpoints in the released layout, for generators.models (see FAMILIES there).

Two layouts of the same model:
- "gptoss", as OpenAI released openai/gpt-oss-20b: every expert projection in MXFP4 (`experts.gate_up_proj_blocks`
  [n_expert, 2 * n_ff, n_embd / 32, 16] uint8, two 4-bit codes a byte, element 2i in the low nibble, and
  `..._scales` [n_expert, 2 * n_ff, n_embd / 32] uint8, a power-of-two exponent biased by 127 for each 32 values;
  `down_proj_blocks` / `_scales` alike, over n_ff), gate and up rows interleaved (even rows gate, odd rows up),
  everything else bf16, and config.json with quantization_config {quant_method: mxfp4, modules_to_not_convert}.
- "gptoss-bf16", as the dequantized community copies (unsloth/gpt-oss-20b-BF16) store it: transformers' own
  layout, experts.gate_up_proj [n_expert, n_embd, 2 * n_ff] (input-major: transposed, columns interleaved) and
  experts.down_proj [n_expert, n_ff, n_embd], all bf16.

The expert weights of both are values MXFP4 holds exactly (release_values, run by models.make_model before the
model is saved and its logits recorded), as in the real release and in the copies dequantized from it: the MXFP4
folder then holds the model's own values, and transformers, which dequantizes MXFP4 on a CPU without Triton
kernels, reads it back as the same model (make_model checks that its logits are reproduced).

Tokenizer: gpt-oss's o200k_harmony vocabulary is not among llama.cpp's test vocabularies, so both use Llama 3's
byte-level BPE (llama-bpe, the tiktoken-style vocabulary o200k grew from) and its special token ids.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

MODEL_TYPES = {"GptOssForCausalLM": "gpt_oss"}

N_LAYERS = 2
BASE = {
    # openai/gpt-oss-20b at tiny size: head_dim stated and != hidden / heads (64 of 2880 / 64 there), the expert FFN
    # a multiple of 32 (one MXFP4 block), 16 experts of which 4 are active, sliding-window layers alternating with
    # full ones (sliding first) and a window shorter than the recorded sequence, attention sinks, q/k/v/o biases
    "gpt_oss": dict(hidden_size=64, num_hidden_layers=N_LAYERS, num_attention_heads=4, num_key_value_heads=2,
                    head_dim=32, intermediate_size=64, num_local_experts=16, num_experts_per_tok=4,
                    experts_per_token=4, max_position_embeddings=131072, initial_context_length=4096,
                    rms_norm_eps=1e-5, sliding_window=8, attention_bias=True, hidden_act="silu",
                    swiglu_limit=7.0, router_aux_loss_coef=0.9, output_router_logits=False,
                    layer_types=["sliding_attention", "full_attention"] * (N_LAYERS // 2)),
}

# The release's YaRN: factor 32 over 4096 positions, and "truncate": false, which transformers applies (unrounded
# correction range) and llama.cpp's YaRN ignores (it always rounds it): about 4e-3 to 6e-3 of logit difference on
# these fixtures. "gptoss" also runs its experts through llama.cpp's MXFP4 kernels, which quantize the activations to
# Q8_0 (ggml-cpu's vec_dot_type for MXFP4) where transformers multiplies in float32: 4.6e-2 in all, the same for
# llama.cpp's own converter's file (byte-identical), hence its tolerance of 6e-2. "gptoss-bf16" states no truncate
# (transformers' default: rounded, as llama.cpp computes it) and has float experts, so its logits are held to the
# SiLU tolerance (1e-4) and prove the rest of the model (sinks, sliding window, biases, router, SwiGLU) exactly.
YARN = dict(rope_type="yarn", rope_theta=150000.0, factor=32.0, beta_fast=32.0, beta_slow=1.0,
            original_max_position_embeddings=4096)

VARIANTS = {
    "gptoss": dict(arch="GptOssForCausalLM", vocab="llama-bpe", dtype="bfloat16", tied=False, sharded=True, seed=60,
                   tolerance=6e-2, config=dict(rope_parameters=YARN | dict(truncate=False))),
    "gptoss-bf16": dict(arch="GptOssForCausalLM", vocab="llama-bpe", dtype="bfloat16", tied=False, seed=61,
                        config=dict(rope_parameters=YARN)),
}
MXFP4_VARIANTS = {VARIANTS["gptoss"]["seed"]}  # the variants saved with MXFP4 experts, known by their seed

# gguf's kvalues_mxfp4 halved: the E2M1 values of the 16 codes (bit 3 the sign)
FP4 = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6], np.float32)
MODULES_TO_NOT_CONVERT = ["model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]
RELEASE_VERSION = "4.55.0.dev0"  # the transformers_version of openai/gpt-oss-20b's config.json
# openai/gpt-oss-20b's config.json keys (the community copies add torch_dtype and drop quantization_config)
RELEASE_KEYS = ("architectures", "attention_bias", "attention_dropout", "eos_token_id", "experts_per_token",
                "head_dim", "hidden_act", "hidden_size", "initial_context_length", "initializer_range",
                "intermediate_size", "layer_types", "max_position_embeddings", "model_type", "num_attention_heads",
                "num_experts_per_tok", "num_hidden_layers", "num_key_value_heads", "num_local_experts",
                "output_router_logits", "pad_token_id", "rms_norm_eps", "router_aux_loss_coef", "sliding_window",
                "swiglu_limit", "tie_word_embeddings", "use_cache", "vocab_size")


def mxfp4_quantize(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """w [..., n] (n a multiple of 32) -> (codes uint8 [..., n], exponents uint8 [..., n / 32], biased by 127).
    Each block of 32 gets the exponent that puts its largest magnitude in [4, 8), and each value the nearest code
    (6 at most). The rounded block's largest magnitude is then 4 or 6 times the same power of two, so quantizing
    the dequantized values again gives the same codes and exponents."""
    b = w.astype(np.float32).reshape(*w.shape[:-1], -1, 32)
    amax = np.abs(b).max(-1)
    e = np.floor(np.log2(np.where(amax > 0, amax, 1.0))).astype(np.int32) - 2
    x = b / np.exp2(e)[..., None].astype(np.float32)
    codes = np.abs(np.abs(x)[..., None] - FP4[:8]).argmin(-1).astype(np.uint8) | (np.signbit(x) << 3).astype(np.uint8)
    return codes.reshape(w.shape), (e + 127).astype(np.uint8)


def mxfp4_dequantize(codes: np.ndarray, exponents: np.ndarray) -> np.ndarray:
    b = FP4[codes.reshape(*exponents.shape, 32)] * np.exp2(exponents.astype(np.float32) - 127)[..., None]
    return b.reshape(codes.shape)


def pack(codes: np.ndarray) -> np.ndarray:
    """codes uint8 [..., n] -> the release's blocks [..., n / 32, 16]: element 2i in the low nibble of byte i."""
    pairs = codes.reshape(*codes.shape[:-1], -1, 16, 2)
    return pairs[..., 0] | (pairs[..., 1] << 4)


def release_values(model, variant) -> None:
    """Sets each expert weight to the nearest values MXFP4 holds, per 32 inputs, as the release stores them."""
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("experts.gate_up_proj", "experts.down_proj")):
                w = p.detach().float().numpy().swapaxes(1, 2)  # [n_expert, out, in]: blocks run over the inputs
                p.copy_(torch.from_numpy(np.ascontiguousarray(mxfp4_dequantize(*mxfp4_quantize(w)).swapaxes(1, 2))))


def read_back(variant) -> dict:
    """transformers 5.24 reads an MXFP4 folder only with accelerate installed, or when told to dequantize, which it
    does anyway on a CPU without Triton kernels (to the parameters' dtype: float32 here)."""
    if variant.seed not in MXFP4_VARIANTS:
        return {}
    from transformers import Mxfp4Config

    return dict(quantization_config=Mxfp4Config(dequantize=True))


def release(folder: Path, config, variant) -> None:
    """config.json as the release states it; for the MXFP4 variant, each expert projection as _blocks and _scales."""
    import torch
    from safetensors.torch import load_file, save_file

    mxfp4 = variant.seed in MXFP4_VARIANTS
    if mxfp4:
        index = folder / "model.safetensors.index.json"
        weight_map = json.loads(index.read_text())["weight_map"] if index.exists() else None
        for shard in sorted(folder.glob("*.safetensors")):
            tensors = load_file(shard)
            for name in [n for n in tensors if n.endswith(("experts.gate_up_proj", "experts.down_proj"))]:
                w = tensors.pop(name).float().numpy().swapaxes(1, 2)
                codes, exponents = mxfp4_quantize(w)
                if not np.array_equal(mxfp4_dequantize(codes, exponents), w):
                    raise RuntimeError(f"{name}: the saved values are not MXFP4 values (release_values not run?)")
                tensors[f"{name}_blocks"] = torch.from_numpy(np.ascontiguousarray(pack(codes)))
                tensors[f"{name}_scales"] = torch.from_numpy(np.ascontiguousarray(exponents))
                if weight_map is not None:
                    file = weight_map.pop(name)
                    weight_map |= {f"{name}_blocks": file, f"{name}_scales": file}
            save_file(tensors, shard, metadata={"format": "pt"})
        if weight_map is not None:
            data = json.loads(index.read_text())
            data["weight_map"] = dict(sorted(weight_map.items()))
            index.write_text(json.dumps(data, indent=2) + "\n")
    d = config.to_dict()
    rope = dict(d["rope_parameters"])
    out = {k: d[k] for k in RELEASE_KEYS} | dict(rope_theta=rope.pop("rope_theta"), rope_scaling=rope,
                                                  transformers_version=RELEASE_VERSION)
    if mxfp4:
        out["quantization_config"] = dict(modules_to_not_convert=MODULES_TO_NOT_CONVERT, quant_method="mxfp4")
    else:
        out["torch_dtype"] = "bfloat16"
    (folder / "config.json").write_text(json.dumps(dict(sorted(out.items())), indent=2) + "\n")
