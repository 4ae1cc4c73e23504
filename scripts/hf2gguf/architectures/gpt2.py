"""GPT-2 (GPT2LMHeadModel), as llama.cpp's gpt2 architecture expects it."""
import gguf

from ..errors import ConversionError
from ..tokenizer import load_vocab
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

    def __init__(self, model):
        super().__init__(model)
        self.n_embd = self.int_hparam("n_embd")
        self.n_head = self.int_hparam("n_head")
        self.n_ff = self.int_hparam("n_inner", default=4 * self.n_embd)
        if self.n_embd % self.n_head:
            raise ConversionError(model.path / "config.json", f"n_embd {self.n_embd} is not a multiple of n_head "
                                  f"{self.n_head}", "use the config.json that belongs to these weights")
        # transformers v5 no longer writes n_ctx: fall back to n_positions, then to the rows of wpe
        wpe = next((t for n, t in model.tensors.items() if n.endswith("wpe.weight")), None)
        self.n_ctx = self.int_hparam("n_ctx", "n_positions", default=wpe.shape[0] if wpe else None)

    def expected_shapes(self, n_vocab):
        e, f = self.n_embd, self.n_ff
        shapes = {"token_embd.weight": (n_vocab, e), "output_norm.weight": (e,), "output_norm.bias": (e,),
                  "blk.{bid}.attn_norm.weight": (e,), "blk.{bid}.attn_norm.bias": (e,),
                  "blk.{bid}.attn_qkv.weight": (3 * e, e), "blk.{bid}.attn_qkv.bias": (3 * e,),
                  "blk.{bid}.attn_output.weight": (e, e), "blk.{bid}.attn_output.bias": (e,),
                  "blk.{bid}.ffn_norm.weight": (e,), "blk.{bid}.ffn_norm.bias": (e,),
                  "blk.{bid}.ffn_up.weight": (f, e), "blk.{bid}.ffn_up.bias": (f,),
                  "blk.{bid}.ffn_down.weight": (e, f), "blk.{bid}.ffn_down.bias": (e,)}
        if isinstance(self.hparams.get("n_positions"), int):
            shapes["position_embd.weight"] = (self.hparams["n_positions"], e)
        return shapes

    def set_kv(self, w):
        w.add_context_length(self.n_ctx)
        w.add_embedding_length(self.n_embd)
        w.add_block_count(self.block_count)
        w.add_feed_forward_length(self.n_ff)
        w.add_head_count(self.n_head)
        eps = self.hparam("layer_norm_epsilon", default=1e-5)
        if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not 0 < eps < 1:
            raise ConversionError(self.model.path / "config.json", f"layer_norm_epsilon must be a small positive number, not {eps!r}",
                                  "use the config.json that belongs to these weights")
        w.add_layer_norm_eps(float(eps))

    def vocab(self, n_vocab):
        return load_vocab(self.model.path, n_vocab, self.hparams, kinds=("gpt2",))
