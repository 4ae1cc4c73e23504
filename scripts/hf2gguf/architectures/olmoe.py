"""OLMoE (OlmoeForCausalLM): routed experts, and Q and K norms over the whole projection (not per head).
llama.cpp's converter writes the RMS norm epsilon as 1e-5 whatever config.json says."""
import gguf

from .base import register
from .moe import MoE


@register("OlmoeForCausalLM")
class Olmoe(MoE):
    gguf_arch = gguf.MODEL_ARCH.OLMOE
    tokenizer_options = dict(kinds=("gpt2",))

    def set_kv(self, w):
        self.hparams = self.hparams | {"rms_norm_eps": 1e-5}
        super().set_kv(w)

    def expected_shapes(self, n_vocab):
        q, kv = self.n_head * self.head_dim, self.n_kv_head * self.head_dim
        return super().expected_shapes(n_vocab) | {"blk.{bid}.attn_q_norm.weight": (q,),
                                                   "blk.{bid}.attn_k_norm.weight": (kv,)}
