"""What Mixture-of-Experts decoders share: the router KV pairs, and each layer's experts stacked into one 3-D
GGUF tensor per projection (ffn_gate_exps, ffn_up_exps, ffn_down_exps), as llama.cpp stores them.

Released checkpoints hold one tensor per expert (`...experts.7.w1.weight`). A layer's stacked tensors are planned
when its last expert tensor has been seen, as llama.cpp's converter emits them, each made of its experts in
numeric order (expert 10 after expert 9). Checkpoints saved by transformers 5 may instead hold the experts
fused (`...experts.gate_up_proj` [n_expert, 2 * n_ff, n_embd]); that tensor feeds both ffn_gate_exps and
ffn_up_exps, as row ranges of it. Llama 4 releases its experts fused and [in, out] (`gate_up_proj`
[n_expert, n_embd, 2 * n_ff], `down_proj` [n_expert, n_ff, n_embd]): each expert's matrix is transposed, and gate
and up are column ranges of it. Nothing is read here: the converter streams each part to its offset."""
from __future__ import annotations

import re
from typing import ClassVar

import numpy as np

from ..errors import ConversionError
from .base import Part, TensorPlan
from .decoder import Decoder

# <layer prefix>.experts.<expert>.<projection>.weight
PER_EXPERT = re.compile(r"(?P<layer>.+)\.experts\.(?P<expert>\d+)\.(?P<proj>[^.]+)\.weight")
FUSED_GATE_UP = re.compile(r"(?P<layer>.+)\.experts\.gate_up_proj(?:\.weight)?")
FUSED_DOWN = re.compile(r"(?P<layer>.+)\.experts\.down_proj")


def transposed(m: np.ndarray) -> np.ndarray:
    return m.T


class MoE(Decoder):
    """A decoder whose FFN is a set of routed experts."""

    # the per-expert projections, in the order llama.cpp's converter writes a layer's stacked tensors
    expert_projections: ClassVar[tuple[str, ...]] = ("down_proj", "gate_proj", "up_proj")
    # fused experts stored [in, out] (Llama 4), not [out, in] as transformers 5 holds Mixtral's and Qwen's
    fused_in_out: ClassVar[bool] = False

    def __init__(self, model):
        super().__init__(model)
        self.n_expert = self.int_hparam("num_local_experts", "num_experts")
        self.n_expert_used = self.int_hparam("num_experts_per_tok")
        if self.n_expert_used > self.n_expert:
            self.config_error(f"num_experts_per_tok {self.n_expert_used} is more than the {self.n_expert} experts")
        self.pending: dict[str, dict[tuple[str, int], str]] = {}  # layer prefix -> (projection, expert) -> name

    def set_kv(self, w):
        super().set_kv(w)
        w.add_expert_count(self.n_expert)
        w.add_expert_used_count(self.n_expert_used)

    def tensor_plans(self, hf_name):
        if m := PER_EXPERT.fullmatch(hf_name):
            return self.expert(hf_name, m["layer"], int(m["expert"]), m["proj"])
        if m := FUSED_GATE_UP.fullmatch(hf_name):
            return self.fused_gate_up(hf_name, m["layer"])
        if m := FUSED_DOWN.fullmatch(hf_name):
            name, shape = self.map_name(f"{m['layer']}.experts.down_proj.weight"), self.model.tensors[hf_name].shape
            if not self.fused_in_out:
                return [TensorPlan(name, shape, (Part(hf_name),))]
            if len(shape) != 3:
                raise ConversionError(self.model.path, f"tensor {hf_name!r} has shape {list(shape)}; a fused down "
                                      "projection is [experts, n_ff, n_embd]", "re-download the weights")
            n, ff, e = shape
            return [TensorPlan(name, (n, e, ff), tuple(Part(hf_name, x * ff, (x + 1) * ff, transform=transposed)
                                                       for x in range(n)))]
        return super().tensor_plans(hf_name)

    def expert(self, hf_name: str, layer: str, expert: int, proj: str) -> list[TensorPlan]:
        if proj not in self.expert_projections or expert >= self.n_expert:
            problem = (f"expert {expert}, but config.json says {self.n_expert} experts (0 to {self.n_expert - 1})"
                       if proj in self.expert_projections else
                       f"an expert projection {proj!r}, which is none of {', '.join(self.expert_projections)}")
            raise ConversionError(self.model.path, f"has tensor {hf_name!r}: {problem}",
                                  "use the config.json that belongs to these weights")
        group = self.pending.setdefault(layer, {})
        group[proj, expert] = hf_name
        if len(group) < self.n_expert * len(self.expert_projections):
            return []
        del self.pending[layer]
        return [self.stacked(layer, proj, [group[proj, e] for e in range(self.n_expert)])
                for proj in self.expert_projections]

    def stacked(self, layer: str, proj: str, names: list[str]) -> TensorPlan:
        shapes = {self.model.tensors[n].shape for n in names}
        if len(shapes) > 1:
            odd = next(n for n in names if self.model.tensors[n].shape != self.model.tensors[names[0]].shape)
            raise ConversionError(self.model.path, f"tensor {odd!r} has shape {list(self.model.tensors[odd].shape)}, "
                                  f"other experts {list(self.model.tensors[names[0]].shape)}", "re-download the weights")
        return TensorPlan(self.map_name(f"{layer}.experts.{proj}.weight"), (len(names), *shapes.pop()),
                          tuple(Part(n) for n in names))

    def fused_gate_up(self, hf_name: str, layer: str) -> list[TensorPlan]:
        """[n_expert, 2 * n_ff, n_embd]: each expert's first n_ff rows are its gate, the next n_ff its up."""
        if self.fused_in_out:
            return self.fused_gate_up_in_out(hf_name, layer)
        shape = self.model.tensors[hf_name].shape
        if len(shape) != 3 or shape[1] % 2:
            raise ConversionError(self.model.path, f"tensor {hf_name!r} has shape {list(shape)}; a fused gate/up "
                                  "projection is [experts, 2 * n_ff, n_embd]", "re-download the weights")
        n, ff = shape[0], shape[1] // 2
        return [TensorPlan(self.map_name(f"{layer}.experts.{proj}.weight"), (n, ff, shape[2]),
                           tuple(Part(hf_name, (2 * e + half) * ff, (2 * e + half + 1) * ff) for e in range(n)))
                for half, proj in enumerate(("gate_proj", "up_proj"))]

    def fused_gate_up_in_out(self, hf_name: str, layer: str) -> list[TensorPlan]:
        """[n_expert, n_embd, 2 * n_ff]: each expert's first n_ff columns are its gate, the next n_ff its up,
        transposed to llama.cpp's [n_ff, n_embd]."""
        shape = self.model.tensors[hf_name].shape
        if len(shape) != 3 or shape[2] % 2:
            raise ConversionError(self.model.path, f"tensor {hf_name!r} has shape {list(shape)}; a fused gate/up "
                                  "projection is [experts, n_embd, 2 * n_ff]", "re-download the weights")
        n, e, ff = shape[0], shape[1], shape[2] // 2
        return [TensorPlan(self.map_name(f"{layer}.experts.{proj}.weight"), (n, ff, e),
                           tuple(Part(hf_name, x * e, (x + 1) * e, transform=transposed,
                                      columns=(half * ff, (half + 1) * ff)) for x in range(n)))
                for half, proj in enumerate(("gate_proj", "up_proj"))]

    def check_complete(self):
        for layer, group in self.pending.items():
            missing = [f"{layer}.experts.{e}.{proj}.weight" for proj in self.expert_projections
                       for e in range(self.n_expert) if (proj, e) not in group]
            more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
            raise ConversionError(self.model.path, f"lacks expert tensor {missing[0]!r}{more}: config.json says "
                                  f"{self.n_expert} experts", "download every weight file, or use the config.json "
                                  "that belongs to these weights")

    def expected_shapes(self, n_vocab):
        shapes = super().expected_shapes(n_vocab)
        for k in ("ffn_gate", "ffn_up", "ffn_down"):
            del shapes[f"blk.{{bid}}.{k}.weight"]
        e, f, n = self.n_embd, self.n_ff_expert, self.n_expert
        return shapes | {"blk.{bid}.ffn_gate_inp.weight": (n, e), "blk.{bid}.ffn_gate_exps.weight": (n, f, e),
                         "blk.{bid}.ffn_up_exps.weight": (n, f, e), "blk.{bid}.ffn_down_exps.weight": (n, e, f)}

    @property
    def n_ff_expert(self) -> int:
        return self.int_hparam("moe_intermediate_size", "intermediate_size")
