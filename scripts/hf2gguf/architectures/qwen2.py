"""Qwen2 (Qwen2ForCausalLM): rotate-half RoPE as stored (no permutation), q/k/v biases."""
import gguf

from .base import register
from .decoder import Decoder


@register("Qwen2ForCausalLM")
class Qwen2(Decoder):
    gguf_arch = gguf.MODEL_ARCH.QWEN2
    tokenizer_options = dict(kinds=("sentencepiece", "gpt2"))

    def expected_shapes(self, n_vocab):
        q, kv = self.n_head * self.head_dim, self.n_kv_head * self.head_dim
        return super().expected_shapes(n_vocab) | {"blk.{bid}.attn_q.bias": (q,), "blk.{bid}.attn_k.bias": (kv,),
                                                   "blk.{bid}.attn_v.bias": (kv,)}
