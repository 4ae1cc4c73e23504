"""SmolLM3 (SmolLM3ForCausalLM): Llama's layers (Q/K permutation included), without RoPE in every 4th layer.
llama.cpp fixes that pattern and has no key for it, so the file is Llama's under the smollm3 architecture, and a
config.json whose no_rope_layers says otherwise is refused: llama.cpp would run it with the wrong layers."""
import gguf

from .base import register
from .llama import Llama

NO_ROPE_EVERY = 4  # llama.cpp's n_no_rope_layer_step for smollm3


@register("SmolLM3ForCausalLM")
class SmolLM3(Llama):
    gguf_arch = gguf.MODEL_ARCH.SMOLLM3

    def __init__(self, model):
        super().__init__(model)
        fixed = [int((i + 1) % NO_ROPE_EVERY != 0) for i in range(self.block_count)]  # 1: the layer uses RoPE
        stated = self.hparams.get("no_rope_layers")
        if stated is not None and [int(x) for x in stated] != fixed:
            self.config_error(f"no_rope_layers {stated} is not llama.cpp's fixed pattern {fixed} (RoPE left out of "
                              f"every {NO_ROPE_EVERY}th layer)")
