"""Qwen3 (Qwen3ForCausalLM): Qwen2 without the biases, with an RMS norm over each head of Q and K."""
import gguf

from .base import register
from .decoder import Decoder


@register("Qwen3ForCausalLM")
class Qwen3(Decoder):
    gguf_arch = gguf.MODEL_ARCH.QWEN3
    tokenizer_options = dict(kinds=("sentencepiece", "gpt2"))

    def expected_shapes(self, n_vocab):
        d = self.head_dim
        return super().expected_shapes(n_vocab) | {"blk.{bid}.attn_q_norm.weight": (d,),
                                                   "blk.{bid}.attn_k_norm.weight": (d,)}
