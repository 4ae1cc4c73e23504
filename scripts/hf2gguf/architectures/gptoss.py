"""gpt-oss (GptOssForCausalLM): attention with q/k/v/o biases and one learned sink logit per head (attn_sinks),
sliding-window layers alternating with full ones, YaRN RoPE, and routed experts with biases, a biased router and
a clamped SwiGLU. llama.cpp fixes the layer pattern (even layers sliding, odd layers full) and the SwiGLU's alpha
and limit, so the file says only the window.

Two layouts convert:
- OpenAI's release: each layer's experts in MXFP4, `experts.gate_up_proj_blocks` [n_expert, 2 * n_ff, n_embd / 32,
  16] and `..._scales` [n_expert, 2 * n_ff, n_embd / 32] (gate and up rows interleaved: even rows gate, odd rows
  up), `down_proj_blocks` / `_scales` over n_ff. llama.cpp keeps them MXFP4 whatever the output type, so their
  bytes are moved into ggml's block_mxfp4 (one scale byte, then 16 bytes holding element j in the low nibble and
  element j + 16 in the high one), never dequantized; its converter writes them before every other tensor, and
  the file type says MXFP4_MOE when the other tensors are F32, F16 or BF16.
- transformers' own save layout (dequantized copies such as unsloth/gpt-oss-20b-BF16): `experts.gate_up_proj`
  [n_expert, n_embd, 2 * n_ff] with gate and up columns interleaved, and `experts.down_proj` [n_expert, n_ff,
  n_embd], both [in, out]: each expert is transposed to llama.cpp's [out, in].
In both, `gate_up_proj_bias` [n_expert, 2 * n_ff] is split the same way (even columns gate, odd ones up)."""
from __future__ import annotations

import re

import gguf
import numpy as np

from ..errors import ConversionError
from .base import Part, Raw, TensorPlan, register
from .moe import MoE, transposed

MXFP4 = re.compile(r"(?P<layer>.+)\.experts\.(?P<proj>gate_up_proj|down_proj)_(?P<kind>blocks|scales)")
EXPERTS = re.compile(r"(?P<layer>.+)\.experts\.(?P<proj>gate_up_proj|down_proj)(?P<bias>_bias)?")
HALVES = (("gate_proj", 0), ("up_proj", 1))  # interleaved rows (or columns): gate first
# llama.cpp's fixed pattern: layer i slides when i is even
SLIDING, FULL = "sliding_attention", "full_attention"
# llama.cpp's fixed SwiGLU: gate * sigmoid(alpha * gate) * (up + 1), gate and up clamped to the limit
SWIGLU = {"swiglu_alpha": 1.702, "swiglu_limit": 7.0}


def block_mxfp4(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """The release's rows (blocks uint8 [rows, n / 32, 16], element 2i in the low nibble of byte i; scales uint8
    [rows, n / 32]) as ggml's block_mxfp4 rows, uint8 [rows, n / 32 * 17]. The 4-bit codes and the exponent bytes
    are the same on both sides: only their places change."""
    codes = np.empty((*blocks.shape[:2], 32), np.uint8)
    codes[..., 0::2] = blocks & 0x0F
    codes[..., 1::2] = blocks >> 4
    qs = codes[..., :16] | (codes[..., 16:] << 4)
    return np.concatenate([scales[..., None], qs], axis=-1).reshape(len(blocks), -1)


@register("GptOssForCausalLM")
class GptOss(MoE):
    gguf_arch = gguf.MODEL_ARCH.GPT_OSS
    tokenizer_options = dict(kinds=("gpt2",))

    def __init__(self, model):
        super().__init__(model)
        self.sliding_window = self.int_hparam("sliding_window")
        expected = [SLIDING if i % 2 == 0 else FULL for i in range(self.block_count)]
        layer_types = self.hparams.get("layer_types")
        if layer_types is not None and list(layer_types) != expected:
            self.config_error(f"layer_types {layer_types} is not llama.cpp's fixed gpt-oss pattern (even layers "
                              f"{SLIDING}, odd layers {FULL})")
        for key, fixed in SWIGLU.items():
            if self.hparams.get(key, fixed) != fixed:
                self.config_error(f"{key} is {self.hparams[key]}, but llama.cpp fixes gpt-oss's to {fixed}")
        quant = self.hparams.get("quantization_config") or {}
        self.mxfp4 = isinstance(quant, dict) and quant.get("quant_method") == "mxfp4"
        self.raw_plans: list[TensorPlan] = []

    def set_kv(self, w):
        super().set_kv(w)
        w.add_sliding_window(self.sliding_window)
        w.add_expert_feed_forward_length(self.n_ff_expert)

    def file_type(self, default):
        full = (gguf.LlamaFileType.ALL_F32, gguf.LlamaFileType.MOSTLY_F16, gguf.LlamaFileType.MOSTLY_BF16)
        return gguf.LlamaFileType.MOSTLY_MXFP4_MOE if self.mxfp4 and default in full else default

    # --- MXFP4 experts: planned first, as llama.cpp's converter writes them --------------------------------------
    def plan(self):
        self.raw_plans = self.mxfp4_plans()
        return self.raw_plans + super().plan()

    def check_shapes(self, plans):
        super().check_shapes(self.raw_plans + plans)

    def skip(self, hf_name):
        return bool(MXFP4.fullmatch(hf_name)) or super().skip(hf_name)

    def mxfp4_plans(self) -> list[TensorPlan]:
        """Each projection's plans where its scales come (after its blocks, in the checkpoint's order)."""
        found: dict[tuple[str, str], dict[str, str]] = {}
        plans = []
        for name in self.model.tensors:
            if m := MXFP4.fullmatch(name):
                group = found.setdefault((m["layer"], m["proj"]), {})
                group[m["kind"]] = name
                if m["kind"] == "scales" and "blocks" in group:
                    plans.extend(self.mxfp4_projection(m["layer"], m["proj"], group["blocks"], name))
        for (layer, proj), group in found.items():
            if len(group) < 2:
                have, lacks = ("blocks", "scales") if "blocks" in group else ("scales", "blocks")
                raise ConversionError(self.model.path, f"has {group[have]!r} but no {layer}.experts.{proj}_{lacks}: "
                                      "an MXFP4 weight needs both its blocks and its scales",
                                      "download every weight file of the checkpoint")
        return plans

    def mxfp4_projection(self, layer: str, proj: str, blocks: str, scales: str) -> list[TensorPlan]:
        n, e, f = self.n_expert, self.n_embd, self.n_ff_expert
        rows, width = (2 * f, e) if proj == "gate_up_proj" else (e, f)
        want_blocks, want_scales = (n, rows, width // 32, 16), (n, rows, width // 32)
        for name, want in ((blocks, want_blocks), (scales, want_scales)):
            t = self.model.tensors[name]
            if t.dtype != "U8" or t.shape != want or width % 32:
                raise ConversionError(t.shard, f"tensor {name!r} is {t.dtype} {list(t.shape)}; config.json implies "
                                      f"MXFP4 uint8 {list(want)}", "use the config.json that belongs to these weights")
        if proj == "down_proj":
            return [self.mxfp4_plan(f"{layer}.experts.down_proj.weight", (n, e, f), blocks, scales, 1, 0)]
        return [self.mxfp4_plan(f"{layer}.experts.{half}.weight", (n, f, e), blocks, scales, 2, offset)
                for half, offset in HALVES]

    def mxfp4_plan(self, hf_name, shape, blocks, scales, stride, offset) -> TensorPlan:
        """GGUF row i is the checkpoint's row stride * i + offset (gate: even rows, up: odd rows)."""
        g = shape[-1] // 32

        def read(start: int, stop: int) -> np.ndarray:
            first, last = stride * start + offset, stride * (stop - 1) + offset + 1
            q = self.model.read_bytes(blocks, first * g, last * g).reshape(-1, g, 16)[::stride]
            s = self.model.read_bytes(scales, first, last)[::stride]
            return block_mxfp4(q, s)

        return TensorPlan(self.map_name(hf_name), shape, raw=Raw(gguf.GGMLQuantizationType.MXFP4,
                                                                   (blocks, scales), read))

    # --- the other tensors ---------------------------------------------------------------------------------------
    def map_name(self, hf_name):
        if hf_name.endswith(".sinks"):  # llama.cpp's converter names it as a weight
            hf_name += ".weight"
        return super().map_name(hf_name)

    def tensor_plans(self, hf_name):
        m = EXPERTS.fullmatch(hf_name)
        if m is None:
            return super().tensor_plans(hf_name)
        layer, shape = m["layer"], self.model.tensors[hf_name].shape
        n, e, f = self.n_expert, self.n_embd, self.n_ff_expert
        if m["bias"]:
            if m["proj"] == "down_proj":
                return [TensorPlan(self.map_name(f"{layer}.experts.down_proj.bias"), shape, (Part(hf_name),))]
            self.check_expert_shape(hf_name, (n, 2 * f), "[n_expert, 2 * n_ff]")
            return [TensorPlan(self.map_name(f"{layer}.experts.{half}.bias"), (n, f),
                               (Part(hf_name, columns=(offset, None, 2)),)) for half, offset in HALVES]
        if m["proj"] == "down_proj":
            self.check_expert_shape(hf_name, (n, f, e), "[n_expert, n_ff, n_embd]")
            return [TensorPlan(self.map_name(f"{layer}.experts.down_proj.weight"), (n, e, f),
                               tuple(Part(hf_name, x * f, (x + 1) * f, transform=transposed) for x in range(n)))]
        self.check_expert_shape(hf_name, (n, e, 2 * f), "[n_expert, n_embd, 2 * n_ff]")
        return [TensorPlan(self.map_name(f"{layer}.experts.{half}.weight"), (n, f, e),
                           tuple(Part(hf_name, x * e, (x + 1) * e, transform=transposed, columns=(offset, None, 2))
                                 for x in range(n)))
                for half, offset in HALVES]

    def check_expert_shape(self, hf_name: str, want: tuple[int, ...], layout: str) -> None:
        got = self.model.tensors[hf_name].shape
        if got != want:
            raise ConversionError(self.model.path, f"tensor {hf_name!r} has shape {list(got)}, but config.json "
                                  f"implies {list(want)} ({layout})", "use the config.json of these weights")

    def expected_shapes(self, n_vocab):
        shapes = super().expected_shapes(n_vocab)
        del shapes["blk.{bid}.ffn_norm.weight"]
        q, kv, e, f, n = self.n_head * self.head_dim, self.n_kv_head * self.head_dim, self.n_embd, self.n_ff_expert, \
            self.n_expert
        return shapes | {
            "blk.{bid}.post_attention_norm.weight": (e,), "blk.{bid}.attn_sinks.weight": (self.n_head,),
            "blk.{bid}.attn_q.bias": (q,), "blk.{bid}.attn_k.bias": (kv,), "blk.{bid}.attn_v.bias": (kv,),
            "blk.{bid}.attn_output.bias": (e,), "blk.{bid}.ffn_gate_inp.bias": (n,),
            "blk.{bid}.ffn_gate_exps.bias": (n, f), "blk.{bid}.ffn_up_exps.bias": (n, f),
            "blk.{bid}.ffn_down_exps.bias": (n, e)}
