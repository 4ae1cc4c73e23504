"""Cohere Command-R and Aya 23 (CohereForCausalLM): one LayerNorm without bias feeds attention and FFN in
parallel, interleaved RoPE (as stored), the embedding doubles as the output (scaled by logit_scale), and Command R+
normalises Q and K per head. llama.cpp's converter takes the context length from model_max_length first."""
import gguf

from .base import register
from .layernorm import LayerNormDecoder


@register("CohereForCausalLM")
class Cohere(LayerNormDecoder):
    gguf_arch = gguf.MODEL_ARCH.COMMAND_R

    def read_config(self, config):
        # config.json says max_position_embeddings 8192 for a model trained on 128k, model_max_length (Aya 23: none)
        if config.get("model_max_length") is not None:
            return config | {"max_position_embeddings": config["model_max_length"]}
        return config

    def __init__(self, model):
        super().__init__(model)
        self.logit_scale = self.hparam("logit_scale")

    def set_kv(self, w):
        super().set_kv(w)
        w.add_logit_scale(self.logit_scale)
        w.add_rope_scaling_type(gguf.RopeScalingType.NONE)

    def expected_shapes(self, n_vocab):
        shapes = super().expected_shapes(n_vocab)
        del shapes["blk.{bid}.ffn_norm.weight"]
        if self.hparams.get("use_qk_norm"):
            shapes |= {"blk.{bid}.attn_q_norm.weight": (self.n_head, self.head_dim),
                       "blk.{bid}.attn_k_norm.weight": (self.n_kv_head, self.head_dim)}
        return shapes
