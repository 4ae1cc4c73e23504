"""Gemma 2 (Gemma2ForCausalLM): Gemma's norm + 1, plus soft-capping of attention and final logits, a sliding
window on alternate layers, and norms after attention and after the FFN."""
import gguf

from .base import register
from .gemma import Gemma


@register("Gemma2ForCausalLM")
class Gemma2(Gemma):
    gguf_arch = gguf.MODEL_ARCH.GEMMA2
    tokenizer_options = dict(kinds=("sentencepiece",), add_space_prefix=False)

    def set_kv(self, w):
        super().set_kv(w)
        w.add_attn_logit_softcapping(self.hparam("attn_logit_softcapping"))
        w.add_final_logit_softcapping(self.hparam("final_logit_softcapping"))
        w.add_sliding_window(self.hparam("sliding_window"))

    def expected_shapes(self, n_vocab):
        e = self.n_embd
        return super().expected_shapes(n_vocab) | {"blk.{bid}.post_attention_norm.weight": (e,),
                                                   "blk.{bid}.post_ffw_norm.weight": (e,)}
