"""GPT-NeoX and Pythia (GPTNeoXForCausalLM): one fused Q/K/V projection, LayerNorm with biases, attention and FFN
in parallel (use_parallel_residual), NeoX-style RoPE on part of each head (rotary_pct).

Hugging Face stores the fused projection head by head ([q, k, v] of head 0, then of head 1, ...); llama.cpp's
gptneox reads all queries, then all keys, then all values. by_projection() reorders the rows."""
import gguf
import numpy as np

from .base import register
from .layernorm import LayerNormDecoder


def by_projection(n_head: int):
    """Rows (head, q/k/v, d) -> (q/k/v, head, d), of a weight or of a bias."""
    def apply(a: np.ndarray) -> np.ndarray:
        return a.reshape(n_head, 3, -1, *a.shape[1:]).swapaxes(0, 1).reshape(a.shape)
    return apply


@register("GPTNeoXForCausalLM")
class GPTNeoX(LayerNormDecoder):
    gguf_arch = gguf.MODEL_ARCH.GPTNEOX
    writes_file_type = False  # as llama.cpp's converter, which only prints it for gptneox

    def __init__(self, model):
        super().__init__(model)
        if self.n_kv_head != self.n_head or self.head_dim * self.n_head != self.n_embd:
            self.config_error("GPT-NeoX has as many key/value heads as query heads, of hidden_size / heads each")
        self.rope_dims = int(self.rotary_fraction("rotary_pct") * (self.n_embd // self.n_head))

    def skip(self, hf_name):  # causal-mask buffers of older checkpoints
        return super().skip(hf_name) or hf_name.endswith((".attention.bias", ".attention.masked_bias"))

    def set_kv(self, w):
        w.add_context_length(self.hparam("max_position_embeddings"))
        w.add_embedding_length(self.n_embd)
        w.add_block_count(self.block_count)
        w.add_feed_forward_length(self.n_ff)
        w.add_rope_dimension_count(self.rope_dims)
        w.add_head_count(self.n_head)
        w.add_parallel_residual(self.hparams.get("use_parallel_residual", True))
        w.add_layer_norm_eps(self.eps)

    def modify(self, gguf_name, hf_name, shape):
        if hf_name.endswith((".query_key_value.weight", ".query_key_value.bias")):
            return shape, by_projection(self.n_head)
        return shape, None

    def expected_shapes(self, n_vocab):
        e, f = self.n_embd, self.n_ff
        shapes = {"token_embd.weight": (n_vocab, e), "output_norm.weight": (e,), "output.weight": (n_vocab, e),
                  "blk.{bid}.attn_norm.weight": (e,), "blk.{bid}.ffn_norm.weight": (e,),
                  "blk.{bid}.attn_qkv.weight": (3 * e, e), "blk.{bid}.attn_output.weight": (e, e),
                  "blk.{bid}.ffn_up.weight": (f, e), "blk.{bid}.ffn_down.weight": (e, f)}
        return self.with_biases(shapes, "output_norm.weight", "attn_norm", "ffn_norm", "attn_qkv", "attn_output",
                                "ffn_up", "ffn_down")
