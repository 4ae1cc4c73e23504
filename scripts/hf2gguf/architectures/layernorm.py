"""What the LayerNorm decoders share (StableLM, Starcoder2, Phi-2, GPT-NeoX, Cohere): llama.cpp's layer-norm
epsilon key instead of the RMS one, RoPE on all or part of each head (llama.cpp runs these with NeoX-style or,
for Cohere, interleaved RoPE, both as Hugging Face stores Q and K: nothing is permuted), the byte-level BPE
tokenizer that llama.cpp's converter reads for them, and norm and bias shapes."""
from __future__ import annotations

from typing import ClassVar

import gguf

from .decoder import Decoder


class LayerNormDecoder(Decoder):
    tokenizer_options = dict(kinds=("gpt2",))
    eps_keys: ClassVar[tuple[str, ...]] = ("layer_norm_eps", "layer_norm_epsilon", "norm_epsilon")

    def __init__(self, model):
        super().__init__(model)
        self.eps = self.hparam(*self.eps_keys)
        if isinstance(self.eps, bool) or not isinstance(self.eps, (int, float)) or not 0 < self.eps < 1:
            self.config_error(f"{self.eps_keys[0]} must be a small positive number, not {self.eps!r}")

    def set_norm_eps_kv(self, w: gguf.GGUFWriter) -> None:
        w.add_layer_norm_eps(self.eps)

    def rotary_fraction(self, *keys: str) -> float:
        """The fraction of each head that RoPE rotates: rope_parameters' partial_rotary_factor, else keys."""
        value = self.rope.get("partial_rotary_factor")
        value = self.hparam(*keys) if value is None and keys else value
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
            self.config_error(f"the rotary fraction (partial_rotary_factor) must be in (0, 1], not {value!r}")
        return value

    def with_biases(self, shapes: dict, *names: str) -> dict:
        """shapes plus a bias of each named tensor's first dimension: "attn_q" -> blk.{bid}.attn_q.bias."""
        out = dict(shapes)
        for name in names:
            key = name if name.endswith(".weight") else f"blk.{{bid}}.{name}.weight"
            out[key.removesuffix(".weight") + ".bias"] = shapes[key][:1]
        return out
