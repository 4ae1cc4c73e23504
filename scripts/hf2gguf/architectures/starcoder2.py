"""Starcoder2 (Starcoder2ForCausalLM): LayerNorm with biases, biases on every projection, a GELU FFN without a
gate, grouped-query attention with full NeoX-style RoPE. Its KV pairs are the common ones."""
import gguf

from .base import register
from .layernorm import LayerNormDecoder


@register("Starcoder2ForCausalLM")
class Starcoder2(LayerNormDecoder):
    gguf_arch = gguf.MODEL_ARCH.STARCODER2

    def expected_shapes(self, n_vocab):
        shapes = super().expected_shapes(n_vocab)
        del shapes["blk.{bid}.ffn_gate.weight"]
        return self.with_biases(shapes, "output_norm.weight", "attn_norm", "ffn_norm", "attn_q", "attn_k", "attn_v",
                                "attn_output", "ffn_up", "ffn_down")
