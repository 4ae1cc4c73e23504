"""Llama 4 (Llama4ForCausalLM, and the language model of Llama4ForConditionalGeneration), as llama.cpp's llama4
architecture expects it.

Llama's attention without the Q/K permutation (Llama 4 rotates interleaved pairs, as llama.cpp does), GQA, llama3
rope scaling (rope_freqs.weight). Routed experts (top-1, sigmoid: llama.cpp fixes that routing) plus a shared
expert of the experts' width; MoE in every interleave_moe_layer_step-th layer, dense FFNs of
intermediate_size_mlp in the others. The experts are released fused and [in, out] (moe.py transposes them).

llama.cpp has no keys for most of Llama 4's attention: it leaves RoPE out of every 4th layer, applies the L2 norm
of Q and K in the RoPE layers (except for 128 experts: Maverick), scales the queries of the no-RoPE layers by
1 + 0.1 * log(1 + floor((pos + 1) / 8192)) and chunks attention into 8192 positions. A config.json that says
otherwise is refused: llama.cpp would run it with the wrong attention. The one exception it reads is a file whose
layer_types are all full attention (sliding_window 0): no chunks, no temperature tuning, RoPE in every layer but
the last.

A conditional-generation checkpoint keeps its language model under `language_model.` and its settings in
`text_config`, merged over the top level as llama.cpp's converter does; its vision model and projector are left
out (no mmproj file)."""
import gguf

from .base import register
from .llama import llama3_rope_factors
from .moe import MoE
from .multimodal import TextOfMultimodal

# what llama.cpp (b11312) fixes for llama4 files with chunked attention, as transformers' config names them
NO_ROPE_EVERY = 4
FIXED = dict(attention_chunk_size=8192, floor_scale=8192, attn_scale=0.1)
NO_QK_NORM_EXPERTS = 128  # llama.cpp's 17B_128E type (Maverick): no Q/K L2 norm
VISION = ("vision_model.", "multi_modal_projector.")
# transformers' Llama4TextConfig defaults, which llama.cpp's converter reads config.json through: the fields it uses
TEXT_DEFAULTS = dict(vocab_size=202048, hidden_size=5120, intermediate_size=8192, intermediate_size_mlp=16384,
                     num_hidden_layers=48, num_attention_heads=40, num_key_value_heads=8, head_dim=128,
                     max_position_embeddings=131072, rms_norm_eps=1e-5, num_experts_per_tok=1, num_local_experts=16,
                     interleave_moe_layer_step=1, rope_theta=500000.0, no_rope_layer_interval=4)


@register("Llama4ForCausalLM", "Llama4ForConditionalGeneration")
class Llama4(TextOfMultimodal, MoE):
    gguf_arch = gguf.MODEL_ARCH.LLAMA4
    tokenizer_options = dict(kinds=("gpt2",))
    fused_in_out = True
    text_defaults = TEXT_DEFAULTS
    vision_prefixes = VISION
    vision_name = "vision model and projector"

    def __init__(self, model):
        super().__init__(model)
        self.n_ff = self.int_hparam("intermediate_size_mlp")  # the dense layers'; intermediate_size: the experts'
        self.moe_step = self.int_hparam("interleave_moe_layer_step", default=1)
        self.check_moe_layers()
        self.check_attention()

    def check_moe_layers(self) -> None:
        moe_layers = list(range(self.moe_step - 1, self.block_count, self.moe_step))
        if self.hparams.get("moe_layers") is not None and list(self.hparams["moe_layers"]) != moe_layers:
            self.config_error(f"moe_layers {self.hparams['moe_layers']} is not {moe_layers}, every "
                              f"interleave_moe_layer_step ({self.moe_step}) layers: llama.cpp has no other pattern")

    def check_attention(self) -> None:
        """Refuses a config.json whose attention llama.cpp would not run as transformers does."""
        n = self.block_count
        # 1: the layer uses RoPE. As transformers fills them in: no_rope_layers from its interval, layer_types
        # (chunked attention in the RoPE layers) from no_rope_layers and the chunk size
        interval = self.int_hparam("no_rope_layer_interval")
        rope_layers = [int(x) for x in self.hparams.get("no_rope_layers") or []] or \
            [int((i + 1) % interval != 0) for i in range(n)]
        chunk = self.hparams.get("attention_chunk_size", FIXED["attention_chunk_size"])
        layer_types = self.hparams.get("layer_types") or \
            ["chunked_attention" if r and chunk is not None else "full_attention" for r in rope_layers]
        self.full_attention = all(t == "full_attention" for t in layer_types)
        step = n if self.full_attention else NO_ROPE_EVERY
        if n < step:
            self.config_error(f"{n} layers: llama.cpp leaves RoPE out of every {NO_ROPE_EVERY}th layer and needs at "
                              f"least {NO_ROPE_EVERY}")
        fixed = [int((i + 1) % step != 0) for i in range(n)]
        if rope_layers != fixed:
            what = f"no_rope_layers {rope_layers}" if self.hparams.get("no_rope_layers") else \
                f"no_rope_layer_interval {interval} (no_rope_layers {rope_layers})"
            self.config_error(f"{what} is not llama.cpp's fixed pattern {fixed} (RoPE left out of every {step}th "
                              "layer)")
        if not self.full_attention:
            for key, value in FIXED.items():
                if self.hparams.get(key, value) != value:
                    self.config_error(f"{key} is {self.hparams[key]!r}, but llama.cpp fixes it to {value}")
            if not self.hparams.get("attn_temperature_tuning", True):
                self.config_error("attn_temperature_tuning is off, but llama.cpp always tunes the temperature of "
                                  "the no-RoPE layers")
        qk_norm = self.n_expert != NO_QK_NORM_EXPERTS
        if bool(self.hparams.get("use_qk_norm", True)) != qk_norm:
            self.config_error(f"use_qk_norm is {self.hparams.get('use_qk_norm', True)}, but llama.cpp uses the Q/K "
                              f"norm exactly when there are not {NO_QK_NORM_EXPERTS} experts ({self.n_expert} here)")

    @property
    def n_ff_expert(self):
        return self.int_hparam("intermediate_size")

    def is_moe_layer(self, bid: int) -> bool:
        return (bid + 1) % self.moe_step == 0

    # --- KV and tensors ------------------------------------------------------------------------------------------
    def set_kv(self, w):
        super().set_kv(w)
        w.add_vocab_size(self.hparam("vocab_size"))
        w.add_rope_dimension_count(self.head_dim)
        w.add_interleave_moe_layer_step(self.moe_step)
        w.add_expert_feed_forward_length(self.n_ff_expert)
        if self.full_attention:
            w.add_sliding_window(0)

    def extra_tensors(self):
        if str(self.rope.get("rope_type", "")).lower() == "llama3":
            return {"rope_freqs.weight": llama3_rope_factors(self.rope, self.head_dim)}
        return {}

    def expected_shapes(self, n_vocab):
        moe = super().expected_shapes(n_vocab)
        dense = super(MoE, self).expected_shapes(n_vocab)
        e, s = self.n_embd, self.n_ff_expert
        out = {k: v for k, v in moe.items() if "{bid}" not in k}
        for bid in range(self.block_count):
            layer = moe if self.is_moe_layer(bid) else dense
            out |= {k.format(bid=bid): v for k, v in layer.items() if "{bid}" in k}
            if self.is_moe_layer(bid):
                out |= {f"blk.{bid}.ffn_gate_shexp.weight": (s, e), f"blk.{bid}.ffn_up_shexp.weight": (s, e),
                        f"blk.{bid}.ffn_down_shexp.weight": (e, s)}
        return out
