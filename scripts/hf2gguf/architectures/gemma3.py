"""Gemma 3 (Gemma3ForCausalLM, and the language model of Gemma3ForConditionalGeneration). Gemma 2's layers (norm
+ 1, norms after attention and after the FFN) with per-head q/k norms and no attention soft-capping. Five
sliding-window layers with their own RoPE base, then one global layer: llama.cpp fixes that pattern, so the
file says only the window and the two bases. Rope scaling (linear, factor 8 from 4B up) is the global layers'.

A conditional-generation checkpoint keeps its language model under `language_model.` and its settings in
`text_config`, merged over the top level as llama.cpp's converter does. Its vision tower and projector are left
out (no mmproj file)."""
import gguf

from .base import register
from .decoder import Decoder
from .gemma import plus_one
from .multimodal import TextOfMultimodal

# transformers' Gemma3TextConfig defaults: the 4B to 27B releases' text_config states only what differs
TEXT_DEFAULTS = dict(vocab_size=262208, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                     num_attention_heads=8, num_key_value_heads=4, head_dim=256, max_position_embeddings=131072,
                     rms_norm_eps=1e-6, rope_theta=1_000_000.0, rope_local_base_freq=10_000.0, sliding_window=4096)
VISION = ("vision_tower.", "multi_modal_projector.")


@register("Gemma3ForCausalLM", "Gemma3ForConditionalGeneration")
class Gemma3(TextOfMultimodal, Decoder):
    gguf_arch = gguf.MODEL_ARCH.GEMMA3
    tokenizer_options = dict(kinds=("sentencepiece",), add_space_prefix=False)
    text_defaults = TEXT_DEFAULTS
    vision_prefixes = VISION + tuple("model." + p for p in VISION)  # as released, or as transformers 5 names them
    vision_name = "vision tower and projector"

    def __init__(self, model):
        super().__init__(model)
        if self.hparams.get("attn_logit_softcapping") is not None:
            self.config_error("Gemma 3 has no attention soft-capping, but attn_logit_softcapping is set")

    def values(self, gguf_name, hf_name):
        return plus_one if hf_name.endswith("norm.weight") else None

    def set_kv(self, w):
        super().set_kv(w)
        sliding = (self.hparams.get("rope_parameters") or {}).get("sliding_attention") or {}
        w.add_rope_freq_base_swa(sliding.get("rope_theta", self.hparam("rope_local_base_freq")))
        if self.hparams.get("final_logit_softcapping"):
            w.add_final_logit_softcapping(self.hparams["final_logit_softcapping"])
        if self.hparams.get("sliding_window_pattern") != 1:
            w.add_sliding_window(self.int_hparam("sliding_window"))

    def expected_shapes(self, n_vocab):
        e, d = self.n_embd, self.head_dim
        return super().expected_shapes(n_vocab) | {
            "blk.{bid}.attn_q_norm.weight": (d,), "blk.{bid}.attn_k_norm.weight": (d,),
            "blk.{bid}.post_attention_norm.weight": (e,), "blk.{bid}.post_ffw_norm.weight": (e,)}
