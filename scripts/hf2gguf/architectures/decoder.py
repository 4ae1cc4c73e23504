"""What the Llama-family decoders share: config.json reading (transformers v4 and v5 spellings), the common
KV pairs, the expected tensor shapes and RoPE scaling. Each architecture module adds only its own work."""
from __future__ import annotations

from typing import ClassVar

import gguf

from ..errors import ConversionError
from .base import Architecture

# The model_types whose transformers config class fills in head_dim (hidden_size // num_attention_heads) when
# config.json has none. llama.cpp's converter reads config.json through that class, so it writes key_length and
# value_length for them anyway (a SmolLM2 config.json has no head_dim). transformers 4.57.6, which llama.cpp pins,
# fills it for Llama only; 5.x for Mistral too.
HEAD_DIM_FILLED = ("llama",)


class Decoder(Architecture):
    """A `model.layers.N.*` decoder with RMS norms, gated FFN and (optionally grouped) attention."""

    # load_vocab's keyword options: which tokenizer files this architecture reads, as llama.cpp's converter does
    tokenizer_options: ClassVar[dict] = {}

    def __init__(self, model):
        super().__init__(model)
        self.n_embd = self.int_hparam("hidden_size")
        self.n_head = self.int_hparam("num_attention_heads")
        self.n_kv_head = self.int_hparam("num_key_value_heads", default=self.n_head)
        self.n_ff = self.int_hparam("intermediate_size")
        if self.hparams.get("head_dim") is None and self.n_embd % self.n_head:
            self.config_error(f"hidden_size {self.n_embd} is not a multiple of num_attention_heads {self.n_head} "
                              "and there is no head_dim")
        self.head_dim = self.int_hparam("head_dim", default=self.n_embd // self.n_head)
        if self.n_head % self.n_kv_head:
            self.config_error(f"num_attention_heads {self.n_head} is not a multiple of num_key_value_heads "
                              f"{self.n_kv_head}")
        self.rope = self.rope_parameters()

    def config_error(self, problem: str):
        raise ConversionError(self.model.path / "config.json", problem, "use the config.json that belongs to "
                              "these weights")

    def rope_parameters(self) -> dict:
        """transformers v5's rope_parameters, or v4's rope_scaling plus the top-level rope_theta, as one dict
        with rope_type, rope_theta and the scaling fields."""
        rope = dict(self.hparams.get("rope_parameters") or self.hparams.get("rope_scaling") or {})
        if not isinstance(rope, dict):
            self.config_error(f"rope_parameters/rope_scaling must be an object, not {rope!r}")
        rope = dict(rope.get("full_attention", rope))
        if "rope_type" not in rope and "type" in rope:
            rope["rope_type"] = rope["type"]
        for key in ("rope_theta", "partial_rotary_factor", "original_max_position_embeddings"):
            if key not in rope and self.hparams.get(key) is not None:
                rope[key] = self.hparams[key]
        return rope

    # --- KV ----------------------------------------------------------------------------------------
    def set_kv(self, w: gguf.GGUFWriter) -> None:
        """The KV pairs every decoder of this family writes, in llama.cpp's converter's terms."""
        w.add_block_count(self.block_count)
        n_ctx = self.hparam("max_position_embeddings", "n_ctx", "n_positions", "max_length",
                            "max_sequence_length", "model_max_length", default=False)
        if n_ctx is not False:
            w.add_context_length(n_ctx)
        w.add_embedding_length(self.n_embd)
        w.add_feed_forward_length(self.n_ff)
        w.add_head_count(self.n_head)
        if self.hparams.get("num_key_value_heads") is not None:
            w.add_head_count_kv(self.n_kv_head)
        self.set_rope_scaling_kv(w)
        if self.rope.get("rope_theta") is not None:
            w.add_rope_freq_base(self.rope["rope_theta"])
        self.set_norm_eps_kv(w)
        if self.hparams.get("head_dim") is not None or self.hparams.get("model_type") in HEAD_DIM_FILLED:
            w.add_key_length(self.head_dim)
            w.add_value_length(self.head_dim)

    def set_norm_eps_kv(self, w: gguf.GGUFWriter) -> None:
        w.add_layer_norm_rms_eps(self.hparam("rms_norm_eps"))

    def set_rope_scaling_kv(self, w: gguf.GGUFWriter) -> None:
        kind, factor = self.rope.get("rope_type"), self.rope.get("factor")
        if kind == "linear" and factor is not None:
            w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            w.add_rope_scaling_factor(factor)
        elif kind == "yarn" and factor is not None:
            w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
            w.add_rope_scaling_factor(factor)
            if "original_max_position_embeddings" not in self.rope:
                self.config_error("yarn rope scaling needs original_max_position_embeddings")
            w.add_rope_scaling_orig_ctx_len(self.rope["original_max_position_embeddings"])
            optional = {"extrapolation_factor": w.add_rope_scaling_yarn_ext_factor,
                        "attention_factor": w.add_rope_scaling_yarn_attn_factor,
                        "beta_fast": w.add_rope_scaling_yarn_beta_fast,
                        "beta_slow": w.add_rope_scaling_yarn_beta_slow}
            if "attention_factor" not in self.rope and "attn_factor" in self.rope:
                self.rope["attention_factor"] = self.rope["attn_factor"]
            for key, add in optional.items():
                if self.rope.get(key) is not None:
                    add(self.rope[key])
        elif kind in ("su", "longrope"):
            w.add_rope_scaling_type(gguf.RopeScalingType.LONGROPE)

    # --- tensors -----------------------------------------------------------------------------------
    def expected_shapes(self, n_vocab: int) -> dict[str, tuple[int, ...]]:
        e, f, q, kv = self.n_embd, self.n_ff, self.n_head * self.head_dim, self.n_kv_head * self.head_dim
        return {"token_embd.weight": (n_vocab, e), "output_norm.weight": (e,),
                "blk.{bid}.attn_norm.weight": (e,), "blk.{bid}.attn_q.weight": (q, e),
                "blk.{bid}.attn_k.weight": (kv, e), "blk.{bid}.attn_v.weight": (kv, e),
                "blk.{bid}.attn_output.weight": (e, q), "blk.{bid}.ffn_norm.weight": (e,),
                "blk.{bid}.ffn_gate.weight": (f, e), "blk.{bid}.ffn_up.weight": (f, e),
                "blk.{bid}.ffn_down.weight": (e, f)}

    def skip(self, hf_name: str) -> bool:
        return hf_name.endswith(".rotary_emb.inv_freq")

    def vocab_options(self) -> dict:
        return self.tokenizer_options

    def vocab(self, n_vocab: int):
        from ..tokenizer import load_vocab

        return load_vocab(self.model.path, n_vocab, self.hparams, **self.vocab_options())
