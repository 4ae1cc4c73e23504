"""The per-architecture numeric work, each against an independent formulation of what it must achieve:
the Q/K permutation turns Hugging Face's rotate-half RoPE into llama.cpp's interleaved RoPE; llama3's
rope factors equal transformers' own; Gemma's +1 happens in the tensor's own precision. The end-to-end
comparison with llama.cpp's converter and with transformers' logits is in test_reference.py and
test_logits.py."""
from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import write_safetensors

from hf2gguf.architectures import REGISTRY, architecture_for
from hf2gguf.architectures.gemma import plus_one
from hf2gguf.architectures.llama import llama3_rope_factors, permute
from hf2gguf.errors import ConversionError
from hf2gguf.source import ModelFolder

HF_ARCHITECTURES = {"GPT2LMHeadModel", "LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM",
                    "Qwen3ForCausalLM", "GemmaForCausalLM", "Gemma2ForCausalLM", "Phi3ForCausalLM",
                    "MixtralForCausalLM", "Qwen2MoeForCausalLM", "Qwen3MoeForCausalLM", "OlmoeForCausalLM",
                    "Gemma3ForCausalLM", "Gemma3ForConditionalGeneration"}
HF_ARCHITECTURES |= {"StableLmForCausalLM", "Starcoder2ForCausalLM", "PhiForCausalLM", "GPTNeoXForCausalLM",
                     "CohereForCausalLM"}
HF_ARCHITECTURES |= {"SmolLM3ForCausalLM", "Olmo2ForCausalLM", "GraniteForCausalLM", "Glm4ForCausalLM"}


def rope_rotate_half(x: np.ndarray, pos: int, theta: float = 10000.0) -> np.ndarray:
    """Hugging Face's RoPE on one head's vector: pairs (i, i + d/2)."""
    d = x.shape[0]
    inv = theta ** (-np.arange(0, d, 2) / d)
    c, s = np.cos(pos * inv), np.sin(pos * inv)
    a, b = x[: d // 2], x[d // 2:]
    return np.concatenate([a * c - b * s, a * s + b * c])


def rope_interleaved(x: np.ndarray, pos: int, theta: float = 10000.0) -> np.ndarray:
    """llama.cpp's (normal, non-NeoX) RoPE on one head's vector: pairs (2i, 2i + 1)."""
    d = x.shape[0]
    inv = theta ** (-np.arange(0, d, 2) / d)
    c, s = np.cos(pos * inv), np.sin(pos * inv)
    a, b = x[0::2], x[1::2]
    out = np.empty_like(x)
    out[0::2], out[1::2] = a * c - b * s, a * s + b * c
    return out


@pytest.mark.parametrize("n_head", [1, 2, 4])
def test_permuted_q_gives_llama_cpp_the_same_attention_scores(n_head):
    rng = np.random.default_rng(n_head)
    head_dim, n_embd = 8, 16
    wq, wk = rng.standard_normal((2, n_head * head_dim, n_embd))
    x1, x2 = rng.standard_normal((2, n_embd))
    pq, pk = permute(n_head)(wq), permute(n_head)(wk)
    for h in range(n_head):
        rows = slice(h * head_dim, (h + 1) * head_dim)
        hf = rope_rotate_half(wq[rows] @ x1, 3) @ rope_rotate_half(wk[rows] @ x2, 7)
        ours = rope_interleaved(pq[rows] @ x1, 3) @ rope_interleaved(pk[rows] @ x2, 7)
        unpermuted = rope_interleaved(wq[rows] @ x1, 3) @ rope_interleaved(wk[rows] @ x2, 7)
        assert ours == pytest.approx(hf, rel=1e-9)
        assert abs(unpermuted - hf) > 1e-3  # the permutation matters: without it the scores differ


def test_permute_is_a_pure_reordering_of_rows():
    w = np.arange(4 * 6 * 3).reshape(24, 3)
    p = permute(4)(w)
    assert sorted(map(tuple, p)) == sorted(map(tuple, w)) and not np.array_equal(p, w)


def test_llama3_rope_factors_equal_transformers():
    transformers_rope = pytest.importorskip("transformers.modeling_rope_utils")
    from transformers import LlamaConfig

    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    config = LlamaConfig(hidden_size=2048, num_attention_heads=32, max_position_embeddings=131072,
                         rope_parameters=rope)
    inv_freq, _ = transformers_rope.ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    dim = 64
    base = 500000.0 ** -(np.arange(0, dim, 2, dtype=np.float64) / dim)
    factors = llama3_rope_factors(rope, dim)
    assert factors.dtype == np.float32 and factors.shape == (dim // 2,)
    # transformers divides the base frequencies by the factors llama.cpp reads from rope_freqs
    np.testing.assert_allclose(base / factors, inv_freq.numpy(), rtol=1e-5)
    assert factors.min() == 1.0 and factors.max() == 32.0  # both ends and a smooth band between


def test_gemma_plus_one_rounds_in_the_tensors_precision():
    x = np.array([1e-4, -1.0, 0.5], np.float16)
    y = plus_one(x)
    assert y.dtype == np.float16 and y.tolist() == [1.0, 0.0, 1.5]  # 1 + 1e-4 rounds to 1 in f16
    assert plus_one(x.astype(np.float32)).dtype == np.float32


def test_every_promised_architecture_is_registered():
    assert HF_ARCHITECTURES <= set(REGISTRY)


def llama_folder(tmp_path, **config):
    rng = np.random.default_rng(0)
    e, ff, heads, kv_heads, vocab = 32, 64, 4, 2, 64
    t = {"model.embed_tokens.weight": (vocab, e), "model.norm.weight": (e,)}
    for i in range(2):
        p = f"model.layers.{i}."
        t |= {p + "input_layernorm.weight": (e,), p + "post_attention_layernorm.weight": (e,),
              p + "self_attn.q_proj.weight": (e, e), p + "self_attn.k_proj.weight": (e * kv_heads // heads, e),
              p + "self_attn.v_proj.weight": (e * kv_heads // heads, e), p + "self_attn.o_proj.weight": (e, e),
              p + "mlp.gate_proj.weight": (ff, e), p + "mlp.up_proj.weight": (ff, e),
              p + "mlp.down_proj.weight": (e, ff)}
    write_safetensors(tmp_path / "model.safetensors",
                      {k: rng.standard_normal(s).astype(np.float32) for k, s in t.items()})
    cfg = {"architectures": ["LlamaForCausalLM"], "hidden_size": e, "intermediate_size": ff,
           "num_attention_heads": heads, "num_key_value_heads": kv_heads, "num_hidden_layers": 2,
           "vocab_size": vocab, "rms_norm_eps": 1e-5, "max_position_embeddings": 128, "rope_theta": 10000.0}
    (tmp_path / "config.json").write_text(json.dumps(cfg | config))
    return tmp_path


def test_a_k_projection_of_the_wrong_size_names_tensor_and_config(tmp_path):
    folder = llama_folder(tmp_path, num_key_value_heads=4)  # weights have 2 KV heads
    with pytest.raises(ConversionError, match=r"k_proj.weight has shape \[16, 32\], but config.json implies "
                                              r"\[32, 32\]"):
        architecture_for(ModelFolder(folder)).plan()


def test_heads_that_do_not_divide_are_refused(tmp_path):
    folder = llama_folder(tmp_path, num_key_value_heads=3)
    with pytest.raises(ConversionError, match="num_attention_heads 4 is not a multiple of num_key_value_heads 3"):
        architecture_for(ModelFolder(folder))


def test_llama3_rope_adds_rope_freqs_and_v4_v5_configs_agree(tmp_path):
    v4 = {"rope_theta": 500000.0, "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                  "high_freq_factor": 4.0, "original_max_position_embeddings": 64}}
    v5 = {"rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                              "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                              "original_max_position_embeddings": 64}}
    plans = []
    for name, cfg in (("v4", v4), ("v5", v5)):
        (tmp_path / name).mkdir()
        plans.append(architecture_for(ModelFolder(llama_folder(tmp_path / name, **cfg))).plan())
    freqs = [next(p for p in ps if p.name == "rope_freqs.weight") for ps in plans]
    assert freqs[0].shape == (4,) and freqs[0].source is None  # head_dim 8 -> 4 frequencies
    np.testing.assert_array_equal(freqs[0].data, freqs[1].data)
