"""Phi-2 (PhiForCausalLM): one LayerNorm feeds attention and a GELU FFN in parallel, biases everywhere (the output
projection too), partial NeoX-style RoPE. llama.cpp's converter writes the FFN length as 4 x hidden and no BOS."""
import gguf

from .base import register
from .layernorm import LayerNormDecoder


@register("PhiForCausalLM")
class Phi2(LayerNormDecoder):
    gguf_arch = gguf.MODEL_ARCH.PHI2
    tokenizer_options = dict(kinds=("gpt2",), add_bos=False)

    def __init__(self, model):
        super().__init__(model)
        if self.n_ff != 4 * self.n_embd:
            self.config_error(f"intermediate_size {self.n_ff} is not 4 x hidden_size {self.n_embd}, which llama.cpp's "
                              "phi2 assumes")
        self.n_ctx = self.hparam("n_positions", "max_position_embeddings")
        self.rope_dims = int(self.rotary_fraction() * self.n_embd) // self.n_head

    def set_kv(self, w):
        w.add_context_length(self.n_ctx)
        w.add_embedding_length(self.n_embd)
        w.add_feed_forward_length(4 * self.n_embd)
        w.add_block_count(self.block_count)
        w.add_head_count(self.n_head)
        w.add_head_count_kv(self.n_head)
        w.add_layer_norm_eps(self.eps)
        w.add_rope_dimension_count(self.rope_dims)

    def expected_shapes(self, n_vocab):
        shapes = super().expected_shapes(n_vocab)
        del shapes["blk.{bid}.ffn_gate.weight"], shapes["blk.{bid}.ffn_norm.weight"]
        shapes = self.with_biases(shapes, "output_norm.weight", "attn_norm", "attn_q", "attn_k", "attn_v",
                                  "attn_output", "ffn_up", "ffn_down")
        if "lm_head.weight" in self.model.tensors:
            shapes |= {"output.weight": (n_vocab, self.n_embd), "output.bias": (n_vocab,)}
        return shapes
