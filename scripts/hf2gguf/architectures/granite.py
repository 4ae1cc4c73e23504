"""Granite 3 (GraniteForCausalLM): Llama's layers with four multipliers from config.json, which llama.cpp reads
as KVs: embedding_multiplier scales the token embeddings, residual_multiplier each block's attention and FFN
output before it joins the residual, attention_multiplier replaces 1/sqrt(head_dim) as the attention scale, and
the logits are divided by logits_scaling. As in the reference, a multiplier that is 0 or absent is not written
(llama.cpp then uses its defaults), and head_dim is ignored (RoPE over hidden_size / heads)."""
import gguf

from .base import register
from .llama import Llama

# config.json field -> the GGUF key llama.cpp's granite architecture reads it from
MULTIPLIERS = {"attention_multiplier": gguf.Keys.Attention.SCALE, "embedding_multiplier": gguf.Keys.LLM.EMBEDDING_SCALE,
               "residual_multiplier": gguf.Keys.LLM.RESIDUAL_SCALE, "logits_scaling": gguf.Keys.LLM.LOGIT_SCALE}


@register("GraniteForCausalLM")
class Granite(Llama):
    gguf_arch = gguf.MODEL_ARCH.GRANITE

    def __init__(self, model):
        super().__init__(model)
        if "head_dim" in self.hparams:
            self.hparams = {k: v for k, v in self.hparams.items() if k != "head_dim"}
            self.head_dim = self.n_embd // self.n_head

    def set_kv(self, w):
        super().set_kv(w)
        for field, key in MULTIPLIERS.items():
            if value := self.hparams.get(field):
                w.add_float32(key.format(arch=self.arch_name), value)
