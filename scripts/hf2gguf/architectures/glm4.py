"""GLM-4 (Glm4ForCausalLM, the 0414 releases): q/k/v biases, fused gate/up projection (ffn_up, as stored), RMS
norms after attention and after the FFN as well as before, and RoPE on the first partial_rotary_factor (0.5) of
each head, in interleaved pairs as stored. The reference reads the tokenizer as byte-level BPE and takes eos, bos
and unk from the added token <|endoftext|> and eot from <|user|>, where the files name none."""
import gguf

from ..errors import ConversionError
from ..source import read_json
from .base import register
from .decoder import Decoder

# special token type -> the added token the reference takes it from
SPECIAL_TOKENS = {"eos": "<|endoftext|>", "eot": "<|user|>", "unk": "<|endoftext|>", "bos": "<|endoftext|>"}


@register("Glm4ForCausalLM")
class Glm4(Decoder):
    gguf_arch = gguf.MODEL_ARCH.GLM4
    tokenizer_options = dict(kinds=("gpt2",))

    def __init__(self, model):
        super().__init__(model)
        if "mrope_section" in self.rope:
            self.config_error("M-RoPE (mrope_section) is GLM-4V's, not Glm4ForCausalLM's")
        self.rope_dims = int(self.head_dim * self.rope.get("partial_rotary_factor", 0.5))

    def set_kv(self, w):
        super().set_kv(w)
        w.add_rope_dimension_count(self.rope_dims)

    def vocab(self, n_vocab):
        vocab = super().vocab(n_vocab)
        path = self.model.path / "tokenizer.json"
        tokens = read_json(path).get("added_tokens", []) if path.is_file() else []
        added = {t.get("content"): t.get("id") for t in tokens if isinstance(t, dict)}
        for kind, token in SPECIAL_TOKENS.items():
            if not isinstance(added.get(token), int):
                raise ConversionError(path, f"has no added token {token}, which GLM-4 uses as its {kind} token",
                                      "use the model's original tokenizer files")
            vocab.special_ids.setdefault(kind, added[token])
        return vocab

    def expected_shapes(self, n_vocab):
        e, f, q, kv = self.n_embd, self.n_ff, self.n_head * self.head_dim, self.n_kv_head * self.head_dim
        shapes = super().expected_shapes(n_vocab)
        del shapes["blk.{bid}.ffn_gate.weight"]
        return shapes | {"blk.{bid}.ffn_up.weight": (2 * f, e), "blk.{bid}.attn_q.bias": (q,),
                         "blk.{bid}.attn_k.bias": (kv,), "blk.{bid}.attn_v.bias": (kv,),
                         "blk.{bid}.post_attention_norm.weight": (e,), "blk.{bid}.post_ffw_norm.weight": (e,)}
