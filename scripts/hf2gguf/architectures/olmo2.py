"""OLMo 2 (Olmo2ForCausalLM): RMS norms after attention and after the FFN (none before), and RMS norms over the
whole Q and K projections (all heads at once, not per head). llama.cpp applies NeoX RoPE, as stored."""
import gguf

from .base import register
from .decoder import Decoder


@register("Olmo2ForCausalLM")
class Olmo2(Decoder):
    gguf_arch = gguf.MODEL_ARCH.OLMO2
    tokenizer_options = dict(kinds=("gpt2",))

    def set_kv(self, w):
        super().set_kv(w)
        if "sliding_window" in self.hparams:  # as the reference: the key's presence, with OLMo 3's default pattern
            w.add_sliding_window(self.hparams["sliding_window"])
            types = self.hparams.get("layer_types")
            w.add_sliding_window_pattern([t == "sliding_attention" for t in types] if types else
                                         [(i + 1) % 4 != 0 for i in range(self.block_count)])

    def expected_shapes(self, n_vocab):
        e, q, kv = self.n_embd, self.n_head * self.head_dim, self.n_kv_head * self.head_dim
        shapes = super().expected_shapes(n_vocab)
        del shapes["blk.{bid}.attn_norm.weight"], shapes["blk.{bid}.ffn_norm.weight"]
        return shapes | {"blk.{bid}.post_attention_norm.weight": (e,), "blk.{bid}.post_ffw_norm.weight": (e,),
                         "blk.{bid}.attn_q_norm.weight": (q,), "blk.{bid}.attn_k_norm.weight": (kv,)}
