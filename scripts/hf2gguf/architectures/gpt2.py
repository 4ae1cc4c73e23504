"""GPT-2 (GPT2LMHeadModel), as llama.cpp's gpt2 architecture expects it."""
import gguf

from ..tokenizer import load_bpe
from .base import Architecture, register

# GPT-2 uses Conv1D: these weights are stored [in, out] and must be transposed to [out, in].
CONV1D_WEIGHTS = (".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight", ".mlp.c_proj.weight")


def transpose(a):
    return a.T


@register("GPT2LMHeadModel")
class GPT2(Architecture):
    gguf_arch = gguf.MODEL_ARCH.GPT2
    strip_prefixes = ("transformer.",)

    def skip(self, hf_name):
        # causal-mask buffers that hub checkpoints carry
        return hf_name.endswith((".attn.bias", ".attn.masked_bias"))

    def modify(self, gguf_name, hf_name, shape):
        if hf_name.endswith(CONV1D_WEIGHTS):
            return shape[::-1], transpose
        return shape, None

    def set_kv(self, w):
        n_embd = self.hparam("n_embd")
        # transformers v5 no longer writes n_ctx: fall back to n_positions, then to the rows of wpe
        wpe = next((t for n, t in self.model.tensors.items() if n.endswith("wpe.weight")), None)
        n_ctx = self.hparam("n_ctx", "n_positions", default=wpe.shape[0] if wpe else None)
        w.add_context_length(n_ctx)
        w.add_embedding_length(n_embd)
        w.add_block_count(self.block_count)
        w.add_feed_forward_length(self.hparam("n_inner", default=4 * n_embd))
        w.add_head_count(self.hparam("n_head"))
        w.add_layer_norm_eps(self.hparam("layer_norm_epsilon"))

    def vocab(self, n_vocab):
        return load_bpe(self.model.path, n_vocab, pre="gpt-2", config=self.hparams)
