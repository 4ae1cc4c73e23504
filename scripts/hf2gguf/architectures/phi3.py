"""Phi-3 (Phi3ForCausalLM): fused Q/K/V (attn_qkv) and fused gate/up (ffn_up) projections, kept fused as
llama.cpp's phi3 architecture reads them; partial rotary dimensions; longrope factors as tensors."""
import math

import gguf
import numpy as np

from .base import register
from .decoder import Decoder


@register("Phi3ForCausalLM")
class Phi3(Decoder):
    gguf_arch = gguf.MODEL_ARCH.PHI3
    tokenizer_options = dict(kinds=("phi3",))

    def __init__(self, model):
        super().__init__(model)
        self.n_ctx = self.hparam("n_positions", "max_position_embeddings")
        if "original_max_position_embeddings" not in self.rope:
            self.config_error("Phi-3 needs original_max_position_embeddings")
        self.orig_ctx = self.rope["original_max_position_embeddings"]
        self.rope_dims = int(self.rope.get("partial_rotary_factor", 1.0) * self.n_embd) // self.n_head

    def set_kv(self, w):
        w.add_context_length(self.n_ctx)
        w.add_rope_scaling_orig_ctx_len(self.orig_ctx)
        w.add_embedding_length(self.n_embd)
        w.add_feed_forward_length(self.n_ff)
        w.add_block_count(self.block_count)
        w.add_head_count(self.n_head)
        w.add_head_count_kv(self.hparam("num_key_value_heads", "n_head_kv"))
        w.add_layer_norm_rms_eps(self.hparam("rms_norm_eps"))
        w.add_rope_dimension_count(self.rope_dims)
        w.add_rope_freq_base(self.rope["rope_theta"])
        w.add_sliding_window(self.hparams.get("sliding_window") or 0)
        if self.rope.get("long_factor"):
            w.add_rope_scaling_attn_factors(self.longrope_attn_factor())

    def longrope_attn_factor(self) -> float:
        scale = self.n_ctx / self.orig_ctx
        kind = str(self.rope.get("rope_type", "")).lower()
        if kind in ("su", "longrope"):
            return math.sqrt(1 + math.log(scale) / math.log(self.orig_ctx)) if scale > 1.0 else 1.0
        if kind == "yarn":
            return 0.1 * math.log(scale) + 1.0 if scale > 1.0 else 1.0
        self.config_error(f"rope scaling type {kind!r} with long_factor is not supported (su, longrope, yarn)")

    def extra_tensors(self):
        long, short = self.rope.get("long_factor"), self.rope.get("short_factor")
        if not long:
            return {}
        if not short or len(long) != len(short) or len(long) != self.rope_dims / 2:
            self.config_error(f"rope long_factor and short_factor must both have {self.rope_dims // 2} values")
        return {"rope_factors_long.weight": np.array(long, np.float32),
                "rope_factors_short.weight": np.array(short, np.float32)}

    def expected_shapes(self, n_vocab):
        e, f, d = self.n_embd, self.n_ff, self.head_dim
        shapes = super().expected_shapes(n_vocab)
        for k in ("attn_q", "attn_k", "attn_v", "ffn_gate"):
            del shapes[f"blk.{{bid}}.{k}.weight"]
        return shapes | {"blk.{bid}.attn_qkv.weight": ((self.n_head + 2 * self.n_kv_head) * d, e),
                         "blk.{bid}.ffn_up.weight": (2 * f, e)}
