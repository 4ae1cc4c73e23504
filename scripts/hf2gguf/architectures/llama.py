"""Llama 1/2/3.x (LlamaForCausalLM), as llama.cpp's llama architecture expects it.

llama.cpp applies RoPE to interleaved pairs; Hugging Face stores Q and K for rotate-half RoPE. permute()
reorders each head's rows back. llama3-style rope scaling becomes a rope_freqs tensor of per-dimension
factors."""
import math

import gguf
import numpy as np

from .base import register
from .decoder import Decoder


def permute(n_head: int):
    """Rows of each of n_head heads: (2, half, ...) -> (half, 2, ...), i.e. [x0..x(h-1), y0..] -> [x0, y0, ...]."""
    def apply(w: np.ndarray) -> np.ndarray:
        return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
    return apply


def llama3_rope_factors(rope: dict, dim: int) -> np.ndarray:
    """Per-frequency divisors of llama3 rope scaling: 1 for short wavelengths, `factor` for long ones, and a
    smooth blend between. Computed in float32, as the reference converter does."""
    f32 = np.float32
    base = f32(rope.get("rope_theta", 10000.0))
    freqs = f32(1.0) / base ** (np.arange(0, dim, 2, dtype=f32) / f32(dim))
    factor = rope.get("factor", 8.0)
    low, high = rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
    old_ctx = rope.get("original_max_position_embeddings", 8192)
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    out = []
    for freq in freqs:
        wavelen = f32(2 * math.pi) / freq
        if wavelen < high_wavelen:
            out.append(f32(1))
        elif wavelen > low_wavelen:
            out.append(f32(factor))
        else:
            smooth = (f32(old_ctx) / wavelen - f32(low)) / f32(high - low)
            out.append(f32(1) / ((f32(1) - smooth) / f32(factor) + smooth))
    return np.array(out, dtype=f32)


@register("LlamaForCausalLM")
class Llama(Decoder):
    gguf_arch = gguf.MODEL_ARCH.LLAMA
    tokenizer_options = dict(space_prefix_from_config=True)

    # what llama.cpp's converter does for vocabularies of these sizes (CodeLlama; SmolLM and Granite's small models)
    BY_VOCAB_SIZE = {32016: dict(extra_special_ids={"eot": 32010}), 49152: dict(add_bos=False)}

    def vocab_options(self):
        return self.tokenizer_options | self.BY_VOCAB_SIZE.get(self.hparams.get("vocab_size"), {})

    def modify(self, gguf_name, hf_name, shape):
        if hf_name.endswith(("q_proj.weight", "q_proj.bias")):
            return shape, permute(self.n_head)
        if hf_name.endswith(("k_proj.weight", "k_proj.bias")):
            return shape, permute(self.n_kv_head)
        return shape, None

    def set_kv(self, w):
        super().set_kv(w)
        w.add_vocab_size(self.hparam("vocab_size"))
        w.add_rope_dimension_count(self.head_dim)

    def extra_tensors(self):
        if str(self.rope.get("rope_type", "")).lower() == "llama3":
            return {"rope_freqs.weight": llama3_rope_factors(self.rope, self.head_dim)}
        return {}
