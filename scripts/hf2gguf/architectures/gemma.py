"""Gemma (GemmaForCausalLM). Gemma's RMS norm multiplies by (1 + weight): llama.cpp's multiplies by weight,
so every norm weight gets + 1 here. The output layer is the token embedding (a stray lm_head is ignored)."""
import gguf
import numpy as np

from .base import register
from .decoder import Decoder


def plus_one(a: np.ndarray) -> np.ndarray:
    return a + a.dtype.type(1)  # in the tensor's own precision, as the reference converter does


@register("GemmaForCausalLM")
class Gemma(Decoder):
    gguf_arch = gguf.MODEL_ARCH.GEMMA
    # CodeGemma's end-of-turn id, which llama.cpp's converter writes for every Gemma
    tokenizer_options = dict(kinds=("sentencepiece",), add_space_prefix=False, extra_special_ids={"eot": 107})

    def skip(self, hf_name):
        return hf_name == "lm_head.weight" or super().skip(hf_name)

    def values(self, gguf_name, hf_name):
        return plus_one if hf_name.endswith("norm.weight") else None

    def set_kv(self, w):
        w.add_context_length(self.hparam("max_position_embeddings"))
        w.add_embedding_length(self.n_embd)
        w.add_block_count(self.block_count)
        w.add_feed_forward_length(self.n_ff)
        w.add_head_count(self.n_head)
        w.add_head_count_kv(self.n_kv_head)
        w.add_layer_norm_rms_eps(self.hparam("rms_norm_eps"))
        w.add_key_length(self.hparam("head_dim"))
        w.add_value_length(self.hparam("head_dim"))
