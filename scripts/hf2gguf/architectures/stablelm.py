"""StableLM (StableLmForCausalLM): StableLM 3B 4E1T, StableLM 2 1.6B and 12B. LayerNorm with biases, a gated SiLU
FFN, NeoX-style RoPE on part of each head, optional Q/K/V biases; StableLM 2 12B runs attention and FFN in
parallel and normalises Q and K per head with one LayerNorm weight per head, which become one [heads, head_dim]
tensor per layer (attn_q_norm, attn_k_norm), as llama.cpp's converter stacks them."""
import re

import gguf

from ..errors import ConversionError
from .base import Part, TensorPlan, register
from .layernorm import LayerNormDecoder

PER_HEAD_NORM = re.compile(r"(?P<attn>.+)\.(?P<which>[qk])_layernorm\.norms\.(?P<head>\d+)\.weight")


@register("StableLmForCausalLM")
class StableLM(LayerNormDecoder):
    gguf_arch = gguf.MODEL_ARCH.STABLELM
    eps_keys = ("layer_norm_eps", "norm_eps")

    def __init__(self, model):
        super().__init__(model)
        self.rope_dims = int(self.rotary_fraction() * (self.n_embd // self.n_head))
        self.parallel = self.hparams.get("use_parallel_residual", True)  # as llama.cpp's converter defaults it
        self.pending: dict[tuple[str, str], dict[int, str]] = {}  # (attention prefix, q or k) -> head -> name

    def set_kv(self, w):
        w.add_context_length(self.hparam("max_position_embeddings"))
        w.add_embedding_length(self.n_embd)
        w.add_block_count(self.block_count)
        w.add_feed_forward_length(self.n_ff)
        w.add_rope_dimension_count(self.rope_dims)
        w.add_head_count(self.n_head)
        w.add_head_count_kv(self.hparam("num_key_value_heads"))
        w.add_parallel_residual(self.parallel)
        w.add_layer_norm_eps(self.eps)

    def tensor_plans(self, hf_name):
        m = PER_HEAD_NORM.fullmatch(hf_name)
        if not m:
            return super().tensor_plans(hf_name)
        n = self.n_head if m["which"] == "q" else self.n_kv_head
        if int(m["head"]) >= n:
            raise ConversionError(self.model.path, f"has tensor {hf_name!r}, but config.json says {n} heads",
                                  "use the config.json that belongs to these weights")
        group = self.pending.setdefault((m["attn"], m["which"]), {})
        group[int(m["head"])] = hf_name
        if len(group) < n:
            return []
        del self.pending[m["attn"], m["which"]]
        name = self.map_name(f"{m['attn']}.{m['which']}_layernorm.weight")
        return [TensorPlan(name, (n, self.head_dim), tuple(Part(group[h]) for h in range(n)))]

    def check_complete(self):
        for (attn, which), group in self.pending.items():
            raise ConversionError(self.model.path, f"has {len(group)} of the per-head {which}_layernorm weights of "
                                  f"{attn}", "download every weight file")

    def expected_shapes(self, n_vocab):
        shapes = super().expected_shapes(n_vocab)
        if self.parallel:
            del shapes["blk.{bid}.ffn_norm.weight"]
        shapes = self.with_biases(shapes, "output_norm.weight", "attn_norm", *([] if self.parallel else ["ffn_norm"]))
        if self.hparams.get("use_qkv_bias"):
            shapes = self.with_biases(shapes, "attn_q", "attn_k", "attn_v")
        if self.hparams.get("qk_layernorm"):
            shapes |= {"blk.{bid}.attn_q_norm.weight": (self.n_head, self.head_dim),
                       "blk.{bid}.attn_k_norm.weight": (self.n_kv_head, self.head_dim)}
        return shapes
