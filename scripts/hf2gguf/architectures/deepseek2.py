"""DeepSeek-V3 and R1 (DeepseekV3ForCausalLM) and DeepSeek-V2 (DeepseekV2ForCausalLM, V2-Lite's layout), as
llama.cpp's deepseek2 architecture expects them.

Multi-head latent attention (MLA): queries through a low-rank projection (q_a_proj, q_a_layernorm, q_b_proj; a plain
q_proj where q_lora_rank is null), keys and values compressed to kv_lora_rank values plus one RoPE key shared by the
heads (kv_a_proj_with_mqa, kv_a_layernorm). llama.cpp runs MLA as multi-query attention over the compressed
values, so its key length is kv_lora_rank + qk_rope_head_dim, its value length kv_lora_rank and it has one KV head;
the per-head sizes go to the *_mla keys. It does not read kv_b_proj [heads * (nope + v), kv_lora] whole: it needs
each head's key part transposed (attn_k_b [heads, kv_lora, nope]) to absorb it into the query, and each head's
value part as stored (attn_v_b [heads, v, kv_lora]). Both are row ranges of kv_b_proj; attn_kv_b is not written.

The FFN is dense in the first first_k_dense_replace layers, then routed experts (stacked as in moe.py) beside
shared ones. Routing: scores by sigmoid (scoring_func), the learned correction bias (e_score_correction_bias,
written as exp_probs_b.bias) added for the choice only, n_group groups of which topk_group are kept, weights
normalised (norm_topk_prob) and scaled (routed_scaling_factor). YaRN's mscale_all_dim becomes yarn_log_mul
(0.1 * mscale_all_dim, as llama.cpp's converter writes it for deepseek2). The release's multi-token prediction
layer (model.layers.<num_hidden_layers>.*) is left out, as llama.cpp's converter does.

The release stores FP8 weights with 128x128 block scales (quantization_config.quant_method "fp8"): source.py reads
them as the values they stand for, as llama.cpp's converter dequantizes them."""
from __future__ import annotations

import re

import gguf

from ..errors import ConversionError
from .base import Part, TensorPlan, register
from .decoder import Decoder
from .moe import MoE, transposed

LAYER = re.compile(r"model\.layers\.(\d+)\.")
LITE_LAYERS = (26, 27)  # DeepSeek-V2-Lite's and GigaChat3's layer counts
GATING = {"sigmoid": gguf.ExpertGatingFuncType.SIGMOID, "softmax": gguf.ExpertGatingFuncType.SOFTMAX}


@register("DeepseekV2ForCausalLM", "DeepseekV3ForCausalLM")
class Deepseek2(MoE):
    gguf_arch = gguf.MODEL_ARCH.DEEPSEEK2
    tokenizer_options = dict(kinds=("gpt2",))

    def __init__(self, model):
        Decoder.__init__(self, model)
        self.n_expert = self.int_hparam("n_routed_experts")
        self.n_expert_used = self.int_hparam("num_experts_per_tok")
        if self.n_expert_used > self.n_expert:
            self.config_error(f"num_experts_per_tok {self.n_expert_used} is more than the {self.n_expert} experts")
        self.pending = {}
        self.kv_lora = self.int_hparam("kv_lora_rank")
        self.q_lora = self.hparams.get("q_lora_rank") and self.int_hparam("q_lora_rank")
        self.nope, self.rope_dim = self.int_hparam("qk_nope_head_dim"), self.int_hparam("qk_rope_head_dim")
        self.v_dim = self.int_hparam("v_head_dim")
        self.n_dense = self.hparams.get("first_k_dense_replace") or 0
        self.n_shared = self.hparams.get("n_shared_experts") or 0
        if self.hparams.get("moe_layer_freq", 1) != 1:
            self.config_error(f"moe_layer_freq {self.hparams['moe_layer_freq']}: llama.cpp's deepseek2 has experts "
                              "in every layer after the first first_k_dense_replace")
        # llama.cpp tells a model with a plain q_proj (V2-Lite) by its layer count, not by q_lora_rank
        lite = self.block_count in LITE_LAYERS or (self.block_count == 48 and self.hparams.get("vocab_size") == 128256)
        if lite == bool(self.q_lora):
            self.config_error(f"q_lora_rank {self.q_lora} with {self.block_count} layers: llama.cpp reads a plain "
                              "q_proj (q_lora_rank null) exactly when a model has 26 or 27 layers (48 with a "
                              "128256-token vocabulary), and would not load this one")
        groups, used = self.hparams.get("n_group") or 1, self.hparams.get("topk_group") or 0
        if groups > 1 and (self.n_expert % groups or groups >= self.n_expert or not 0 < used < groups):
            self.config_error(f"n_group {groups} and topk_group {used} with {self.n_expert} experts: llama.cpp "
                              "refuses to load the model unless n_group divides the experts and 0 < topk_group < "
                              "n_group")
        scoring = self.hparams.get("scoring_func")
        if scoring is not None and scoring not in GATING:
            self.config_error(f"scoring_func {scoring!r} is none of {', '.join(GATING)}")

    # --- KV ----------------------------------------------------------------------------------------
    def set_kv(self, w):
        """The keys llama.cpp's converter writes for deepseek2, in its order."""
        h = self.hparams
        w.add_block_count(self.block_count)
        w.add_context_length(self.hparam("max_position_embeddings"))
        w.add_embedding_length(self.n_embd)
        w.add_feed_forward_length(self.n_ff)
        w.add_head_count(self.n_head)
        w.add_head_count_kv(1)  # MLA runs as multi-query attention over the compressed KV
        self.set_rope_scaling_kv(w)
        if self.rope.get("rope_theta") is not None:
            w.add_rope_freq_base(self.rope["rope_theta"])
        w.add_layer_norm_rms_eps(h.get("rms_norm_eps") or 1e-6)
        w.add_expert_count(self.n_expert)
        w.add_expert_used_count(self.n_expert_used)
        if h.get("n_group") is not None:
            w.add_expert_group_count(h["n_group"])
        if h.get("topk_group") is not None:
            w.add_expert_group_used_count(h["topk_group"])
        if h.get("scoring_func") is not None:
            w.add_expert_gating_func(GATING[h["scoring_func"]])
        w.add_leading_dense_block_count(self.n_dense)
        w.add_vocab_size(self.hparam("vocab_size"))
        if self.q_lora:
            w.add_q_lora_rank(self.q_lora)
        w.add_kv_lora_rank(self.kv_lora)
        w.add_key_length(self.kv_lora + self.rope_dim)
        w.add_value_length(self.kv_lora)
        w.add_key_length_mla(self.nope + self.rope_dim)
        w.add_value_length_mla(self.v_dim)
        w.add_expert_feed_forward_length(self.n_ff_expert)
        w.add_expert_shared_count(self.n_shared)
        if h.get("routed_scaling_factor") is not None:
            w.add_expert_weights_scale(h["routed_scaling_factor"])
        if h.get("norm_topk_prob"):
            w.add_expert_weights_norm(True)
        w.add_rope_dimension_count(self.rope_dim)
        if self.rope.get("mscale_all_dim") is not None:
            w.add_rope_scaling_yarn_log_mul(0.1 * self.rope["mscale_all_dim"])

    # --- tensors -----------------------------------------------------------------------------------
    def skip(self, hf_name):
        if (m := LAYER.match(hf_name)) and int(m[1]) >= self.block_count:
            return True  # the multi-token prediction layer after the last decoder layer
        if hf_name == "lm_head.weight" and self.hparams.get("tie_word_embeddings"):
            return True
        return super().skip(hf_name)

    def map_name(self, hf_name):
        if hf_name.endswith(".e_score_correction_bias"):  # gguf's map knows it as e_score_correction.bias
            hf_name = hf_name.removesuffix("_bias") + ".bias"
        return super().map_name(hf_name)

    def tensor_plans(self, hf_name):
        if hf_name.endswith("self_attn.kv_b_proj.weight"):
            return self.kv_b(hf_name)
        return super().tensor_plans(hf_name)

    def kv_b(self, hf_name: str) -> list[TensorPlan]:
        """kv_b_proj [heads * (nope + v), kv_lora]: each head's first nope rows (keys), transposed, make attn_k_b;
        its next v rows (values) make attn_v_b."""
        shape, per_head = self.model.tensors[hf_name].shape, self.nope + self.v_dim
        if shape != (self.n_head * per_head, self.kv_lora):
            raise ConversionError(self.model.path, f"tensor {hf_name!r} has shape {list(shape)}, but config.json "
                                  f"implies [{self.n_head * per_head}, {self.kv_lora}] (num_attention_heads x "
                                  "(qk_nope_head_dim + v_head_dim), kv_lora_rank)",
                                  "use the config.json of these weights")
        k_b = tuple(Part(hf_name, h * per_head, h * per_head + self.nope, transform=transposed)
                    for h in range(self.n_head))
        v_b = tuple(Part(hf_name, h * per_head + self.nope, (h + 1) * per_head) for h in range(self.n_head))
        k_name = self.map_name(hf_name.replace("kv_b_proj", "k_b_proj"))
        v_name = self.map_name(hf_name.replace("kv_b_proj", "v_b_proj"))
        return [TensorPlan(k_name, (self.n_head, self.kv_lora, self.nope), k_b),
                TensorPlan(v_name, (self.n_head, self.v_dim, self.kv_lora), v_b)]

    def expected_shapes(self, n_vocab):
        e, ff, f, n = self.n_embd, self.n_ff, self.n_ff_expert, self.n_expert
        q = self.n_head * (self.nope + self.rope_dim)
        shapes = {"token_embd.weight": (n_vocab, e), "output_norm.weight": (e,)}
        if not self.hparams.get("tie_word_embeddings"):
            shapes["output.weight"] = (n_vocab, e)
        for b in range(self.block_count):
            p = f"blk.{b}."
            shapes |= {p + "attn_norm.weight": (e,), p + "ffn_norm.weight": (e,),
                       p + "attn_kv_a_mqa.weight": (self.kv_lora + self.rope_dim, e),
                       p + "attn_kv_a_norm.weight": (self.kv_lora,),
                       p + "attn_k_b.weight": (self.n_head, self.kv_lora, self.nope),
                       p + "attn_v_b.weight": (self.n_head, self.v_dim, self.kv_lora),
                       p + "attn_output.weight": (e, self.n_head * self.v_dim)}
            if self.q_lora:
                shapes |= {p + "attn_q_a.weight": (self.q_lora, e), p + "attn_q_a_norm.weight": (self.q_lora,),
                           p + "attn_q_b.weight": (q, self.q_lora)}
            else:
                shapes[p + "attn_q.weight"] = (q, e)
            if b < self.n_dense:
                shapes |= {p + "ffn_gate.weight": (ff, e), p + "ffn_up.weight": (ff, e), p + "ffn_down.weight": (e, ff)}
                continue
            shapes |= {p + "ffn_gate_inp.weight": (n, e), p + "ffn_gate_exps.weight": (n, f, e),
                       p + "ffn_up_exps.weight": (n, f, e), p + "ffn_down_exps.weight": (n, e, f)}
            if self.n_shared:
                s = f * self.n_shared
                shapes |= {p + "ffn_gate_shexp.weight": (s, e), p + "ffn_up_shexp.weight": (s, e),
                           p + "ffn_down_shexp.weight": (e, s)}
        return shapes
