"""Mistral (MistralForCausalLM): llama.cpp runs it as the llama architecture, Q/K permutation included."""
from .base import register
from .llama import Llama


@register("MistralForCausalLM")
class Mistral(Llama):
    pass
