#!/usr/bin/env python3
"""Tiny random checkpoints of every architecture the converter supports, for the reference and fidelity tests.

A test tool: it needs torch and transformers, which the converter never imports. Each variant is built with
transformers (random init), then every parameter is redrawn at a visible scale, seeded: norm weights in
[0.5, 1.5] as applied (Gemma stores w of 1 + w: [-0.5, 0.5]), biases N(0, 0.2), projections and embeddings
N(0, 1/fan_in). With transformers' default init (norms 1, biases 0) a dropped norm, a missing Gemma +1 or an
unpermuted Q/K would not change the logits; with these, such bugs move them by 0.1 to 10, while llama.cpp's
own converter stays within 1e-5 (SiLU) and 2e-3 (GELU) of transformers.

The folder holds what a Hugging Face checkpoint holds (config.json, safetensors, sharded with an index for the
sharded variants, tokenizer files from generators.tokenizers), plus reference_logits.npz: transformers' float32
logits for a fixed sequence of token ids. They are computed on the weights as saved (f16/bf16 values widened to
float32), because that is what a converted F32 GGUF holds exactly.

    python tests/generators/models.py --out DIR [VARIANT ...]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
# run as a script, this folder comes first on sys.path, and its tokenizers.py would hide the tokenizers package
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent))  # tests/, for generators.tokenizers

import numpy as np  # noqa: E402

SEQUENCE_LENGTH = 24  # positions of the recorded logits; longer than Gemma 2's sliding window below


@dataclass(frozen=True)
class Variant:
    arch: str  # config.json's architectures[0]
    vocab: str  # tokenizer (generators.tokenizers.VOCABS); its token count gives the embedding rows
    dtype: str  # how the checkpoint is stored: float32, float16 or bfloat16
    tied: bool  # tie_word_embeddings: no lm_head.weight in the checkpoint
    style: str = "v5"  # config.json as transformers v4 (torch_dtype, rope_theta, rope_scaling) or v5 writes it
    sharded: bool = False  # several safetensors files and model.safetensors.index.json
    config: dict = field(default_factory=dict)  # overrides of BASE[model_type]
    seed: int = 0
    # convert_hf_to_gguf.py (b11312) converts it: not GPT-2 as transformers v5 saves it (it reads n_ctx)
    reference: bool = True
    # MoE: each layer's experts saved as transformers 5 holds them (experts.gate_up_proj, experts.down_proj),
    # not one tensor per expert as released (and as save_pretrained writes by default)
    fused_experts: bool = False
    # the environment llama.cpp's converter runs in: "test" (this one), or "transformers4" (the workflow's fallback
    # environment, scripts/reference_converter.py: transformers 4.57.6, as llama.cpp pins it)
    reference_env: str = "test"
    # max |logit difference| allowed against transformers, where neither of test_logits.py's SiLU and GELU
    # tolerances applies (calibrated on llama.cpp's own converter's output; the family module says why)
    tolerance: float | None = None

    @property
    def model_type(self) -> str:
        return MODEL_TYPES[self.arch]

    @property
    def gelu(self) -> bool:
        """llama.cpp's CPU GELU uses an fp16 table: these models get a looser logit tolerance."""
        return self.model_type in ("gpt2", "gemma", "gemma2") + GEMMA3 + ("starcoder2", "phi", "gpt_neox")


MODEL_TYPES = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral", "Qwen2ForCausalLM": "qwen2",
               "Qwen3ForCausalLM": "qwen3", "GemmaForCausalLM": "gemma", "Gemma2ForCausalLM": "gemma2",
               "Phi3ForCausalLM": "phi3", "GPT2LMHeadModel": "gpt2"}
MODEL_TYPES |= {"Gemma3ForCausalLM": "gemma3_text", "Gemma3ForConditionalGeneration": "gemma3"}
GEMMA3 = ("gemma3_text", "gemma3")
MODEL_TYPES |= {"MixtralForCausalLM": "mixtral", "Qwen2MoeForCausalLM": "qwen2_moe",
                "Qwen3MoeForCausalLM": "qwen3_moe", "OlmoeForCausalLM": "olmoe"}

# 2 layers, hidden size 64, GQA (4 query heads, 2 KV heads) wherever the architecture has it.
_DECODER = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                intermediate_size=128, max_position_embeddings=256, rms_norm_eps=1e-5)
BASE = {
    "llama": _DECODER,
    "mistral": _DECODER | dict(sliding_window=None),
    "qwen2": _DECODER | dict(rms_norm_eps=1e-6),
    "qwen3": _DECODER | dict(head_dim=32, rms_norm_eps=1e-6),  # head_dim != hidden / heads, as in Qwen3
    "gemma": _DECODER | dict(head_dim=16, hidden_activation="gelu_pytorch_tanh", rms_norm_eps=1e-6),
    # soft-capping and sliding window at values that change the logits of these tiny models. llama.cpp scales
    # queries by 1/sqrt(head_dim) (1/sqrt(hidden/heads) for the 27B) and has no key for query_pre_attn_scalar,
    # so it equals head_dim here, as in Gemma 2 2B and 9B.
    "gemma2": _DECODER | dict(head_dim=16, hidden_activation="gelu_pytorch_tanh", rms_norm_eps=1e-6,
                              query_pre_attn_scalar=16, attn_logit_softcapping=5.0, final_logit_softcapping=3.0,
                              sliding_window=8),
    "phi3": _DECODER | dict(original_max_position_embeddings=256, sliding_window=None),
    "gpt2": dict(n_embd=64, n_layer=2, n_head=4, n_positions=128, layer_norm_epsilon=1e-5),
    # Mixture of Experts, with the released configs' fields and routing (experts per token, top-k
    # normalisation); at least 4 experts and 2 active, and more than 10 where the release has more, so that
    # expert 10 must come after expert 9
    "mixtral": _DECODER | dict(num_local_experts=8, num_experts_per_tok=2, sliding_window=None,
                               router_aux_loss_coef=0.02, output_router_logits=False),
    "qwen2_moe": _DECODER | dict(rms_norm_eps=1e-6, num_experts=12, num_experts_per_tok=4, moe_intermediate_size=32,
                                 shared_expert_intermediate_size=128, decoder_sparse_step=1, mlp_only_layers=[],
                                 norm_topk_prob=False, use_sliding_window=False, max_window_layers=2),
    "qwen3_moe": _DECODER | dict(head_dim=32, rms_norm_eps=1e-6, num_experts=16, num_experts_per_tok=4,
                                 moe_intermediate_size=32, decoder_sparse_step=1, mlp_only_layers=[],
                                 norm_topk_prob=True, use_sliding_window=False, max_window_layers=2,
                                 attention_bias=False),
    "olmoe": _DECODER | dict(num_key_value_heads=4, num_experts=10, num_experts_per_tok=2, norm_topk_prob=False,
                             clip_qkv=None, max_position_embeddings=4096),
    # gemma-3-1b at tiny size: 4 query heads of 256 on 1 KV head. 6 layers, as llama.cpp fixes the pattern (every
    # 6th layer global, the others sliding), and a window shorter than the recorded sequence
    "gemma3_text": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=6, num_attention_heads=4,
                        num_key_value_heads=1, head_dim=256, query_pre_attn_scalar=256, max_position_embeddings=32768,
                        rms_norm_eps=1e-6, sliding_window=8, hidden_activation="gelu_pytorch_tanh"),
    # gemma-3-4b at tiny size: text_config states what the release's does (heads: the defaults, 8 of 256 on 4),
    # and a 2-layer SigLIP of 4x4 patches pooled to 2x2 image tokens
    "gemma3": dict(text_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=6, sliding_window=8),
                   vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                      image_size=56, patch_size=14, vision_use_head=False),
                   mm_tokens_per_image=4),
}


def _rope(kind: str, theta: float, **scaling) -> dict:
    return {"rope_parameters": {"rope_type": kind, "rope_theta": theta, **scaling}}


def _gemma3_rope(**scaling) -> dict:
    """Global layers at 1e6 (with the release's scaling), sliding layers at 1e4: Gemma 3's RoPE bases."""
    full = {"rope_type": "linear" if scaling else "default", "rope_theta": 1_000_000.0, **scaling}
    return {"full_attention": full, "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0}}


VARIANTS: dict[str, Variant] = {
    # Llama 1/2: SentencePiece, untied, f32, a v4 config
    "llama2": Variant("LlamaForCausalLM", "llama-spm", "float32", tied=False, style="v4",
                      config=_rope("default", 10000.0)),
    # head_dim 32 != 64/4, linear RoPE scaling (v4's {"type": "linear"}), tied, f16
    "llama-head-dim": Variant("LlamaForCausalLM", "llama-spm", "float16", tied=True, style="v4", seed=1,
                              config=dict(head_dim=32) | _rope("linear", 20000.0, factor=2.0)),
    # YaRN RoPE scaling, bf16, a v4 config
    "llama-yarn": Variant("LlamaForCausalLM", "llama-spm", "bfloat16", tied=False, style="v4", seed=2,
                          config=_rope("yarn", 10000.0, factor=4.0, original_max_position_embeddings=64)),
    # Llama 3.2-like: byte-level BPE, llama3 RoPE (rope_freqs.weight), tied, bf16, sharded
    "llama3": Variant("LlamaForCausalLM", "llama-bpe", "bfloat16", tied=True, sharded=True, seed=3,
                      config=_rope("llama3", 500000.0, factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                   original_max_position_embeddings=64)),
    "mistral": Variant("MistralForCausalLM", "llama-spm", "bfloat16", tied=False, style="v4", seed=4,
                       config=_rope("default", 1000000.0)),
    # Qwen2.5-0.5B-like: q/k/v biases, tied, bf16, v4 config
    "qwen2": Variant("Qwen2ForCausalLM", "qwen2", "bfloat16", tied=True, style="v4", seed=5,
                     config=_rope("default", 1000000.0)),
    "qwen2-untied": Variant("Qwen2ForCausalLM", "qwen2", "float16", tied=False, sharded=True, seed=6,
                            config=_rope("default", 1000000.0)),
    # per-head q/k norms
    "qwen3": Variant("Qwen3ForCausalLM", "qwen2", "bfloat16", tied=True, seed=7, config=_rope("default", 1000000.0)),
    # norm weights stored as w, applied as 1 + w
    "gemma": Variant("GemmaForCausalLM", "llama-spm", "float32", tied=True, style="v4", seed=8,
                     config=_rope("default", 10000.0)),
    "gemma2": Variant("Gemma2ForCausalLM", "llama-spm", "bfloat16", tied=True, seed=9,
                      config=_rope("default", 10000.0)),
    # fused qkv_proj and gate_up_proj
    "phi3": Variant("Phi3ForCausalLM", "phi-3", "bfloat16", tied=False, style="v4", seed=10,
                    config=_rope("default", 10000.0)),
    "gpt2": Variant("GPT2LMHeadModel", "gpt-2", "float32", tied=True, style="v4", seed=11),
    "gpt2-untied": Variant("GPT2LMHeadModel", "gpt-2", "float16", tied=False, style="v4", sharded=True, seed=12),
    # as transformers v5 saves GPT-2: no n_ctx, which llama.cpp's converter requires (logits tier only)
    "gpt2-v5": Variant("GPT2LMHeadModel", "gpt-2", "bfloat16", tied=True, seed=13, reference=False),
    # Mixtral-8x7B-like: SentencePiece, untied, bf16, sharded, one tensor per expert (w1, w2, w3)
    "mixtral": Variant("MixtralForCausalLM", "llama-spm", "bfloat16", tied=False, style="v4", sharded=True, seed=16,
                       config=_rope("default", 1000000.0)),
    # Qwen1.5-MoE-A2.7B-like: q/k/v biases, a shared expert and its sigmoid gate
    "qwen2moe": Variant("Qwen2MoeForCausalLM", "qwen2", "bfloat16", tied=False, style="v4", seed=17,
                        config=_rope("default", 1000000.0)),
    # Qwen3-30B-A3B-like: per-head q/k norms, no shared expert
    "qwen3moe": Variant("Qwen3MoeForCausalLM", "qwen2", "bfloat16", tied=False, style="v4", seed=18,
                        config=_rope("default", 1000000.0)),
    # Qwen3-MoE as transformers 5 holds it in memory: experts fused (one checkpoint tensor for gate and up)
    "qwen3moe-fused": Variant("Qwen3MoeForCausalLM", "qwen2", "bfloat16", tied=True, seed=20, fused_experts=True,
                              config=_rope("default", 1000000.0)),
    # OLMoE-1B-7B-like: q/k norms over the whole projection, a GPT-NeoX-style byte-level BPE, f32
    "olmoe": Variant("OlmoeForCausalLM", "gpt-2", "float32", tied=False, style="v4", seed=19,
                     config=_rope("default", 10000.0)),
    # Gemma 3: configs and tensor names as published (gemma3_release). gemma-3-1b-it: a complete config
    "gemma3": Variant("Gemma3ForCausalLM", "llama-spm", "bfloat16", tied=True, style="v4", seed=14,
                      config=dict(rope_parameters=_gemma3_rope())),
    # gemma-3-4b-it: config.json states only what differs from the defaults, linear RoPE scaling x8 on the global
    # layers, language_model.model.* tensors beside the vision tower's, sharded
    "gemma3-mm": Variant("Gemma3ForConditionalGeneration", "llama-spm", "bfloat16", tied=True, style="v4",
                         sharded=True, seed=15, config=dict(rope_parameters=_gemma3_rope(factor=8.0))),
}

# Dense decoders of issue 16, with the release's config.json fields at tiny size
MODEL_TYPES |= {"SmolLM3ForCausalLM": "smollm3", "Olmo2ForCausalLM": "olmo2", "GraniteForCausalLM": "granite",
                "Glm4ForCausalLM": "glm4"}
BASE |= {
    # HuggingFaceTB/SmolLM3-3B: 4 layers, as llama.cpp fixes the no-RoPE layers to every 4th
    "smollm3": _DECODER | dict(num_hidden_layers=4, max_position_embeddings=65536, rms_norm_eps=1e-6,
                               no_rope_layer_interval=4, use_sliding_window=False, sliding_window=None,
                               max_window_layers=4, attention_bias=False, mlp_bias=False),
    # allenai/OLMo-2-0425-1B: as many KV heads as query heads
    "olmo2": _DECODER | dict(num_key_value_heads=4, max_position_embeddings=4096, rms_norm_eps=1e-6,
                             attention_bias=False, pad_token_id=None),  # GPT-2's vocabulary has no <|pad|>
    # ibm-granite/granite-3.3-2b-instruct: its multipliers; attention_multiplier is 1 / head_dim there (1/64), here
    # 1/16, not the 1/sqrt(head_dim) llama.cpp uses without it
    "granite": _DECODER | dict(max_position_embeddings=131072, rms_norm_eps=1e-5, attention_bias=False,
                               mlp_bias=False, embedding_multiplier=12.0, residual_multiplier=0.22,
                               attention_multiplier=0.0625, logits_scaling=8.0),
    # THUDM/GLM-4-9B-0414: head_dim stated, RoPE on half of each head
    "glm4": _DECODER | dict(head_dim=16, max_position_embeddings=32768, attention_bias=True,
                            partial_rotary_factor=0.5),
}
VARIANTS |= {
    "smollm3": Variant("SmolLM3ForCausalLM", "llama-bpe", "bfloat16", tied=True, style="v4", seed=30,
                       config=_rope("default", 5000000.0)),
    "olmo2": Variant("Olmo2ForCausalLM", "gpt-2", "float32", tied=False, style="v4", seed=31,
                     config=_rope("default", 500000.0)),
    # as transformers 5 saves it: rope_parameters, dtype; sharded
    "olmo2-v5": Variant("Olmo2ForCausalLM", "gpt-2", "bfloat16", tied=False, sharded=True, seed=32,
                        config=_rope("default", 500000.0)),
    "granite": Variant("GraniteForCausalLM", "granite", "bfloat16", tied=True, style="v4", seed=33,
                       config=_rope("default", 10000000.0)),
    "glm4": Variant("Glm4ForCausalLM", "glm4", "bfloat16", tied=False, style="v4", sharded=True, seed=34,
                    config=_rope("default", 10000.0)),
}

# The LayerNorm decoders of issue 16 (and Phi-4), with the releases' config.json fields at tiny size
MODEL_TYPES |= {"StableLmForCausalLM": "stablelm", "Starcoder2ForCausalLM": "starcoder2", "PhiForCausalLM": "phi",
                "GPTNeoXForCausalLM": "gpt_neox", "CohereForCausalLM": "cohere"}
_LAYERNORM = {k: v for k, v in _DECODER.items() if k != "rms_norm_eps"}
BASE |= {
    # stabilityai/stablelm-2-1_6b: Q/K/V biases, RoPE on a quarter of each head, as many KV heads as heads
    "stablelm": _LAYERNORM | dict(num_key_value_heads=4, max_position_embeddings=4096, layer_norm_eps=1e-5,
                                  hidden_act="silu", use_qkv_bias=True, qk_layernorm=False,
                                  use_parallel_residual=False, hidden_dropout=0.0, attention_dropout=0.0),
    # bigcode/starcoder2-3b: a window longer than the recorded sequence (llama.cpp has none for starcoder2)
    "starcoder2": _LAYERNORM | dict(max_position_embeddings=16384, norm_epsilon=1e-5, hidden_act="gelu_pytorch_tanh",
                                    use_bias=True, sliding_window=4096, residual_dropout=0.0, embedding_dropout=0.0),
    # microsoft/phi-2: the FFN 4 x hidden (llama.cpp's converter writes that), RoPE on 40% of each head
    "phi": _LAYERNORM | dict(num_key_value_heads=4, intermediate_size=256, max_position_embeddings=2048,
                             layer_norm_eps=1e-5, hidden_act="gelu_new", qk_layernorm=False, resid_pdrop=0.1,
                             embd_pdrop=0.0),
    # EleutherAI/pythia-*: RoPE on a quarter of each head, attention and FFN in parallel
    "gpt_neox": {k: v for k, v in _LAYERNORM.items() if k != "num_key_value_heads"} | dict(
        intermediate_size=256, max_position_embeddings=2048, layer_norm_eps=1e-5, hidden_act="gelu",
        use_parallel_residual=True, attention_bias=True),
    # CohereForAI/aya-23-8B: grouped-query attention, logit scale 1/8
    "cohere": _LAYERNORM | dict(max_position_embeddings=8192, layer_norm_eps=1e-5, logit_scale=0.125,
                                use_qk_norm=False, attention_bias=False),
}
VARIANTS |= {
    # stabilityai/stablelm-3b-4e1t: GPT-NeoX-20B's tokenizer, no Q/K/V biases
    "stablelm": Variant("StableLmForCausalLM", "mpt", "bfloat16", tied=False, style="v4", seed=40,
                        config=dict(use_qkv_bias=False) | _rope("default", 10000.0, partial_rotary_factor=0.25)),
    # stablelm-2-1_6b: Q/K/V biases (its Arcade100k tokenizer is not among llama.cpp's test vocabularies:
    # GPT-NeoX-20B's stands in)
    "stablelm2": Variant("StableLmForCausalLM", "mpt", "float16", tied=False, style="v4", seed=49,
                         config=_rope("default", 10000.0, partial_rotary_factor=0.25)),
    # stablelm-2-12b: per-head Q/K layer norms, attention and FFN in parallel, grouped-query attention, sharded.
    # llama.cpp's converter (b11312) fails on it ("Unprocessed norms": its StableLM modify_tensors returns the
    # generator that stacks the norms instead of yielding from it): proved against transformers' logits alone
    "stablelm2-12b": Variant("StableLmForCausalLM", "mpt", "bfloat16", tied=False, style="v4", sharded=True,
                             seed=41, reference=False,
                             config=dict(num_key_value_heads=2, use_qkv_bias=False, qk_layernorm=True,
                                         use_parallel_residual=True)
                             | _rope("default", 10000.0, partial_rotary_factor=0.25)),
    "starcoder2": Variant("Starcoder2ForCausalLM", "starcoder", "bfloat16", tied=True, style="v4", seed=42,
                          config=_rope("default", 999999.4420358813)),
    # starcoder2-15b: its own output projection, f32, sharded
    "starcoder2-untied": Variant("Starcoder2ForCausalLM", "starcoder", "float32", tied=False, style="v4",
                                 sharded=True, seed=43, config=_rope("default", 100000.0)),
    # phi-2: CodeGen's tokenizer, biases everywhere, the output projection's too
    "phi2": Variant("PhiForCausalLM", "phi-2", "float16", tied=False, style="v4", seed=44,
                    config=_rope("default", 10000.0, partial_rotary_factor=0.4)),
    # microsoft/phi-4: Phi3ForCausalLM with a GPT2Tokenizer (tiktoken's cl100k is not among llama.cpp's test
    # vocabularies: GPT-2's stands in), no sliding window, RoPE base 250000 and no scaling
    "phi4": Variant("Phi3ForCausalLM", "gpt-2", "bfloat16", tied=False, style="v4", seed=45,
                    config=dict(max_position_embeddings=16384, original_max_position_embeddings=16384)
                    | _rope("default", 250000.0)),
    # EleutherAI/pythia-160m: config.json as released (rotary_pct, rotary_emb_base), GPT-NeoX-20B's tokenizer.
    # llama.cpp's converter reads rotary_pct from transformers' config object, which transformers 5 no longer has:
    # the reference runs with transformers 4 (reference_env)
    "pythia": Variant("GPTNeoXForCausalLM", "mpt", "float16", tied=False, style="v4", seed=46,
                      reference_env="transformers4", config=_rope("default", 10000.0, partial_rotary_factor=0.25)),
    # aya-23-8B: the command-r tokenizer, the embedding as output
    "cohere": Variant("CohereForCausalLM", "command-r", "float16", tied=True, style="v4", seed=47,
                      config=_rope("default", 10000.0)),
    # c4ai-command-r-plus: per-head Q/K norms, which llama.cpp reads only from models of 64 layers or more (the
    # release has 64), model_max_length beyond max_position_embeddings, sharded
    "cohere-qk-norm": Variant("CohereForCausalLM", "command-r", "float16", tied=True, style="v4", sharded=True,
                              seed=48, config=dict(num_hidden_layers=64, use_qk_norm=True, model_max_length=131072,
                                                   logit_scale=0.8333333333333334) | _rope("default", 75000000.0)),
}

# Families with a generator module of their own (tests/generators/<family>.py): each holds MODEL_TYPES, BASE and
# VARIANTS (keyword arguments of Variant) as above, and may hold release(folder, config, variant), which rewrites
# the saved folder as the real release is laid out (run before the v4 config rewrite), and release_values(model,
# variant), which sets the model's values to those the release's storage holds exactly (run before the model is saved
# and its logits recorded: gpt-oss's MXFP4 experts), and read_back(variant), from_pretrained's keyword arguments for
# reading the saved folder back (gpt-oss's MXFP4 one on a CPU: dequantize)
FAMILIES = ("deepseek", "gptoss", "llama4")
RELEASE = {}
RELEASE_VALUES = {}
READ_BACK = {}


def _add_families() -> None:
    import importlib

    for name in FAMILIES:
        family = importlib.import_module(f"generators.{name}")
        MODEL_TYPES.update(family.MODEL_TYPES)
        BASE.update(family.BASE)
        VARIANTS.update({k: Variant(**kw) for k, kw in family.VARIANTS.items()})
        if hasattr(family, "release"):
            RELEASE.update({k: family.release for k in family.VARIANTS})
        if hasattr(family, "release_values"):
            RELEASE_VALUES.update({k: family.release_values for k in family.VARIANTS})
        if hasattr(family, "read_back"):
            READ_BACK.update({k: family.read_back for k in family.VARIANTS})


_add_families()

V4_VERSION = "4.46.3"  # the transformers_version a v4 folder states
CONV1D = (".c_attn.weight", ".c_proj.weight", ".c_fc.weight")  # GPT-2 stores these [in, out]


def redraw(model, variant: Variant) -> None:
    """Every parameter at a visible scale, seeded (tied weights are one parameter and drawn once)."""
    import torch

    g = torch.Generator().manual_seed(1000 + variant.seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0.0, 0.2, generator=g)
            elif p.ndim == 1 or name.endswith(("q_norm.weight", "k_norm.weight")):  # norm weights (Cohere's
                # per-head ones are [heads, head_dim]); Gemma stores w and scales by 1 + w
                gemma = variant.model_type in ("gemma", "gemma2") + GEMMA3 and "vision_tower." not in name
                shift = 1.0 if gemma else 0.0
                p.uniform_(0.5 - shift, 1.5 - shift, generator=g)
            elif name.endswith(("embed_tokens.weight", "wte.weight")):  # tied, also the output projection
                p.normal_(0.0, p.shape[1] ** -0.5, generator=g)
            elif name.endswith("wpe.weight"):
                p.normal_(0.0, 0.3, generator=g)
            else:
                # [out, in], or [experts, out, in] for transformers 5's fused experts
                fan_in = p.shape[0] if variant.model_type == "gpt2" and name.endswith(CONV1D) else p.shape[-1]
                p.normal_(0.0, fan_in ** -0.5, generator=g)
        for name, b in model.named_buffers():  # learned values that transformers holds as buffers
            if name.endswith("e_score_correction_bias"):  # DeepSeek-V3's expert-bias correction of the routing
                b.normal_(0.0, 0.2, generator=g)


def fuse_experts(path: Path) -> None:
    """Rewrites a one-file checkpoint's per-expert tensors (experts.E.gate_proj/up_proj/down_proj) as the fused
    experts.gate_up_proj [n, 2 * n_ff, n_embd] and experts.down_proj [n, n_embd, n_ff] of each layer."""
    import re

    import torch
    from safetensors.torch import load_file, save_file

    tensors, experts = load_file(path), {}
    for name in list(tensors):
        if m := re.fullmatch(r"(.+\.experts)\.(\d+)\.(\w+)\.weight", name):
            experts.setdefault(m[1], {})[int(m[2]), m[3]] = tensors.pop(name)
    for prefix, group in experts.items():
        n = len(group) // 3
        tensors[f"{prefix}.gate_up_proj"] = torch.stack([torch.cat([group[e, "gate_proj"], group[e, "up_proj"]])
                                                         for e in range(n)])
        tensors[f"{prefix}.down_proj"] = torch.stack([group[e, "down_proj"] for e in range(n)])
    save_file(tensors, path, metadata={"format": "pt"})


def config_v4(config: dict, model_type: str) -> dict:
    """config.json as transformers v4 wrote it: torch_dtype, rope_theta and rope_scaling instead of dtype and
    rope_parameters; GPT-2 with n_ctx."""
    out = {}
    for k, v in config.items():
        if k == "dtype":
            out["torch_dtype"] = v
        elif k == "rope_parameters" and isinstance(v, dict) and "rope_theta" in v:
            rope = dict(v)
            out["rope_theta"] = rope.pop("rope_theta")
            if "partial_rotary_factor" in rope:
                out["partial_rotary_factor"] = rope.pop("partial_rotary_factor")
            kind = rope.pop("rope_type", "default")
            if kind == "default":
                out["rope_scaling"] = None
            elif kind == "linear":  # the spelling of the Llama 2 era
                out["rope_scaling"] = {"type": "linear", **rope}
            else:
                out["rope_scaling"] = {"rope_type": kind, **rope}
        else:
            out[k] = v
    if model_type == "gpt2":
        out.setdefault("n_ctx", out["n_positions"])
    if model_type == "gpt_neox":  # Pythia's names for these
        out["rotary_pct"], out["rotary_emb_base"] = out.pop("partial_rotary_factor"), out.pop("rope_theta")
        del out["rope_scaling"]
    out["transformers_version"] = V4_VERSION
    return out


def gemma3_multimodal(settings: dict) -> dict:
    """Gemma3ForConditionalGeneration's settings: the language model's go in text_config. As in gemma-3-4b, its
    embedding has 64 rows more than the tokenizer has tokens (262208 for 262144), the first for the image token."""
    n_tokens = settings["vocab_size"]
    text = settings["text_config"] | dict(rope_parameters=settings["rope_parameters"], vocab_size=n_tokens + 64,
                                          pad_token_id=None)  # Gemma's <pad> is 0; this stand-in tokenizer has none
    rest = {k: v for k, v in settings.items() if k not in ("vocab_size", "rope_parameters")}
    return rest | dict(text_config=text, image_token_index=n_tokens)


# What Google's config.json files state (transformers 4.50.0.dev0 wrote them): gemma-3-1b-it all of Gemma3TextConfig;
# gemma-3-4b-it, at the top, only these, and in text_config and vision_config only what differs from the defaults
GEMMA3_RELEASE_VERSION = "4.50.0.dev0"
GEMMA3_1B = ("architectures", "attention_bias", "attention_dropout", "attn_logit_softcapping", "bos_token_id",
             "eos_token_id", "final_logit_softcapping", "head_dim", "hidden_activation", "hidden_size",
             "initializer_range", "intermediate_size", "max_position_embeddings", "model_type", "num_attention_heads",
             "num_hidden_layers", "num_key_value_heads", "pad_token_id", "query_pre_attn_scalar", "rms_norm_eps",
             "sliding_window", "use_cache", "vocab_size")
GEMMA3_4B = ("architectures", "boi_token_index", "eoi_token_index", "eos_token_id", "image_token_index",
             "initializer_range", "mm_tokens_per_image", "model_type")
GEMMA3_4B_TEXT = ("hidden_size", "intermediate_size", "model_type", "num_hidden_layers", "sliding_window",
                  "vocab_size")  # vocab_size: the fixture's tokenizer is not Gemma's
GEMMA3_4B_VISION = ("hidden_size", "image_size", "intermediate_size", "model_type", "num_attention_heads",
                    "num_hidden_layers", "patch_size", "vision_use_head")
# The release's tensor names. transformers 5.24 names its modules model.language_model.*, model.vision_tower.*,
# model.multi_modal_projector.*, and saves them as language_model.model.* (as released) but vision_tower.* (not
# vision_tower.vision_model.*) and multi_modal_projector.*
GEMMA3_4B_TENSORS = ((r"^(model\.)?language_model\.(model\.)?", "language_model.model."),
                     (r"^(model\.)?vision_tower\.(vision_model\.)?", "vision_tower.vision_model."),
                     (r"^(model\.)?multi_modal_projector\.", "multi_modal_projector."))


def gemma3_release(folder: Path, config, dtype: str) -> None:
    """Rewrites a saved Gemma 3 folder as Google's releases are: config.json in their layout (v4 RoPE fields,
    sliding_window_pattern), and for gemma-3-4b-it the tensor names of its safetensors files."""
    from safetensors.torch import load_file, save_file

    d = config.to_dict()
    text = d.get("text_config", d)
    full, local = text["rope_parameters"]["full_attention"], text["rope_parameters"]["sliding_attention"]
    scaling = {k: v for k, v in sorted(full.items()) if k != "rope_theta"} if full["rope_type"] != "default" else None
    if "text_config" in d:
        out = {k: d[k] for k in GEMMA3_4B} | dict(
            text_config={k: text[k] for k in GEMMA3_4B_TEXT} | dict(rope_scaling=scaling),
            vision_config={k: d["vision_config"][k] for k in GEMMA3_4B_VISION})
        for shard in folder.glob("*.safetensors"):
            tensors = load_file(shard)
            save_file({_renamed(k): t for k, t in tensors.items()}, shard, metadata={"format": "pt"})
        index = folder / "model.safetensors.index.json"
        if index.exists():
            data = json.loads(index.read_text())
            data["weight_map"] = {_renamed(k): f for k, f in data["weight_map"].items()}
            index.write_text(json.dumps(data, indent=2) + "\n")
    else:
        out = {k: d[k] for k in GEMMA3_1B} | dict(cache_implementation="hybrid", rope_scaling=scaling,
                                                   rope_local_base_freq=local["rope_theta"],
                                                   rope_theta=full["rope_theta"], sliding_window_pattern=6)
    out |= dict(torch_dtype=dtype, transformers_version=GEMMA3_RELEASE_VERSION)
    (folder / "config.json").write_text(json.dumps(dict(sorted(out.items())), indent=2) + "\n")
    generation = folder / "generation_config.json"
    generation.write_text(json.dumps(json.loads(generation.read_text()) | {"cache_implementation": "hybrid",
                                     "transformers_version": GEMMA3_RELEASE_VERSION}, indent=2) + "\n")
    if "text_config" in d:  # transformers reads the release's names back, the vision tower's too
        import transformers

        _, info = transformers.AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True)
        if any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")):
            raise RuntimeError(f"transformers does not read the renamed tensors back: {info}")


def _renamed(name: str) -> str:
    for pattern, release in GEMMA3_4B_TENSORS:
        name = re.sub(pattern, release, name)
    return name


def input_ids(variant: Variant, n_vocab: int) -> list[int]:
    return np.random.default_rng(variant.seed).integers(0, n_vocab, SEQUENCE_LENGTH).tolist()


def logits_of(model, ids: list[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def make_model(variant: str, dest: Path) -> Path:
    """Builds VARIANTS[variant] into the folder dest (replaced atomically: a temporary folder, then a rename)."""
    import torch
    import transformers
    from generators.tokenizers import config_json, write_tokenizer

    v = VARIANTS[variant]
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        torch.manual_seed(v.seed)  # transformers' own init, before the redraw
        n_vocab = write_tokenizer(v.vocab, tmp)
        # the real model's special token ids, which llama.cpp's converter reads from config.json too
        settings = BASE[v.model_type] | v.config | config_json(v.vocab) | dict(vocab_size=n_vocab)
        if v.model_type == "gemma3":
            settings = gemma3_multimodal(settings)
        config = transformers.AutoConfig.for_model(v.model_type, tie_word_embeddings=v.tied, **settings)
        config.architectures = [v.arch]
        model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager",
                                                              dtype=torch.float32)
        redraw(model, v)
        if variant in RELEASE_VALUES:
            RELEASE_VALUES[variant](model, v)
        model.eval()
        for p in model.parameters():  # the stored dtype; buffers (RoPE frequencies) stay float32, as on loading
            p.data = p.data.to(getattr(torch, v.dtype))
        total = sum(p.numel() * p.element_size() for p in model.parameters())
        model.save_pretrained(tmp, max_shard_size=max(total // 3, 2**16) if v.sharded else 2**40)
        for p in model.parameters():
            p.data = p.data.float()
        if v.sharded and not (tmp / "model.safetensors.index.json").exists():
            raise RuntimeError(f"{variant}: transformers wrote no shard index")
        if v.fused_experts:
            fuse_experts(tmp / "model.safetensors")
        if variant in RELEASE:
            RELEASE[variant](tmp, config, v)
        if v.style == "v4":
            config_path = tmp / "config.json"
            config_path.write_text(json.dumps(config_v4(json.loads(config_path.read_text()), v.model_type),
                                              indent=2) + "\n")
            generation = tmp / "generation_config.json"
            if generation.exists():
                generation.write_text(json.dumps(json.loads(generation.read_text()) | {"transformers_version":
                                                                                       V4_VERSION}, indent=2))
        if v.model_type in GEMMA3:
            gemma3_release(tmp, config, v.dtype)

        ids = input_ids(v, n_vocab)
        expected = logits_of(model, ids)  # the saved values, in float32
        saved = transformers.AutoModelForCausalLM.from_pretrained(
            tmp, dtype=torch.float32, attn_implementation="eager",
            **(READ_BACK[variant](v) if variant in READ_BACK else {})).eval()
        logits = logits_of(saved, ids)
        # transformers reads the folder back as the model it saved (a v4 config rewrite loses nothing)
        drift = float(np.abs(logits - expected).max())
        if drift > 1e-5:
            raise RuntimeError(f"{variant}: the saved folder gives other logits than the model ({drift:.2e})")
        np.savez(tmp / "reference_logits.npz", input_ids=np.array(ids, np.int32), logits=logits,
                 variant=json.dumps({"name": variant, **asdict(v)}),
                 versions=json.dumps({"torch": torch.__version__, "transformers": transformers.__version__}))
        tmp.chmod(0o755)
        if dest.exists():
            shutil.rmtree(dest)
        os.rename(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="folder that receives one subfolder per variant")
    ap.add_argument("variants", nargs="*", help=f"default: all of {', '.join(VARIANTS)}")
    a = ap.parse_args()
    unknown = [n for n in a.variants if n not in VARIANTS]
    if unknown:
        ap.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    for name in a.variants or VARIANTS:
        path = make_model(name, a.out / name)
        size = sum(f.stat().st_size for f in path.iterdir())
        print(f"{name}: {path} ({size / 2**20:.1f} MiB)", flush=True)


if __name__ == "__main__":
    main()
