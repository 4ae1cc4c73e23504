"""Qwen1.5/Qwen2 MoE (Qwen2MoeForCausalLM): Qwen2's attention with q/k/v biases; routed experts plus one
shared expert, always on, scaled by its own sigmoid gate (ffn_gate_inp_shexp)."""
import gguf

from .base import register
from .moe import MoE


@register("Qwen2MoeForCausalLM")
class Qwen2Moe(MoE):
    gguf_arch = gguf.MODEL_ARCH.QWEN2MOE
    tokenizer_options = dict(kinds=("gpt2",))

    def set_kv(self, w):
        super().set_kv(w)
        if self.hparams.get("moe_intermediate_size") is not None:
            w.add_expert_feed_forward_length(self.hparams["moe_intermediate_size"])
        if self.hparams.get("shared_expert_intermediate_size") is not None:
            w.add_expert_shared_feed_forward_length(self.hparams["shared_expert_intermediate_size"])

    def expected_shapes(self, n_vocab):
        q, kv, e = self.n_head * self.head_dim, self.n_kv_head * self.head_dim, self.n_embd
        s = self.int_hparam("shared_expert_intermediate_size")
        return super().expected_shapes(n_vocab) | {
            "blk.{bid}.attn_q.bias": (q,), "blk.{bid}.attn_k.bias": (kv,), "blk.{bid}.attn_v.bias": (kv,),
            "blk.{bid}.ffn_gate_shexp.weight": (s, e), "blk.{bid}.ffn_up_shexp.weight": (s, e),
            "blk.{bid}.ffn_down_shexp.weight": (e, s), "blk.{bid}.ffn_gate_inp_shexp.weight": (1, e)}
