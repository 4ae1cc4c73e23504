"""Qwen3 MoE (Qwen3MoeForCausalLM): Qwen3's attention (per-head Q and K norms, no biases) with routed experts
and no shared expert."""
import gguf

from .base import register
from .moe import MoE
from .qwen2moe import Qwen2Moe


@register("Qwen3MoeForCausalLM")
class Qwen3Moe(Qwen2Moe):
    gguf_arch = gguf.MODEL_ARCH.QWEN3MOE

    def expected_shapes(self, n_vocab):
        d = self.head_dim
        return MoE.expected_shapes(self, n_vocab) | {"blk.{bid}.attn_q_norm.weight": (d,),
                                                     "blk.{bid}.attn_k_norm.weight": (d,)}
