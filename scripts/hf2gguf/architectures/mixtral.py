"""Mixtral (MixtralForCausalLM): Llama with eight routed experts per layer (w1 gate, w3 up, w2 down), written as
llama.cpp's llama architecture with stacked expert tensors."""
import gguf

from .base import register
from .llama import Llama
from .moe import MoE


@register("MixtralForCausalLM")
class Mixtral(MoE, Llama):
    gguf_arch = gguf.MODEL_ARCH.LLAMA
    expert_projections = ("w1", "w2", "w3")
