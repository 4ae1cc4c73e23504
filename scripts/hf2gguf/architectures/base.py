"""The interface every architecture module implements, and the registry that picks one from config.json."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, ClassVar

import gguf
import numpy as np

from ..errors import ConversionError
from ..source import ModelFolder
from ..tokenizer import Vocab

REGISTRY: dict[str, type["Architecture"]] = {}


def register(*hf_architectures: str):
    def deco(cls):
        for name in hf_architectures:
            REGISTRY[name] = cls
        return cls
    return deco


@dataclass(frozen=True)
class Part:
    """Rows start:stop of a checkpoint tensor, counted as rows of its last axis: a [n_expert, n_ff, n_embd]
    tensor has n_expert * n_ff rows of n_embd values (stop None: to the end). A GGUF tensor is its parts'
    values, one after the other: experts stacked along a new leading axis, or tensors concatenated. A part of a
    fused tensor (a row range) lets one checkpoint tensor feed several GGUF tensors."""
    tensor: str  # Hugging Face tensor name
    start: int = 0
    stop: int | None = None
    # A layout change only (transpose, permutation of rows), returning a view where it can. It gets the whole
    # tensor in its own shape, or the part's rows as a matrix. The converter may apply it after the type
    # conversion, so it must not change values.
    transform: Callable[[np.ndarray], np.ndarray] | None = None
    # Columns start:stop of each row, or start:stop:step (None: all of them), taken before the transform: one
    # half of a fused [in, out] tensor, such as Llama 4's experts.gate_up_proj [n_expert, n_embd, 2 * n_ff] (or
    # gpt-oss's, whose gate and up columns alternate)
    columns: tuple[int, ...] | None = None

    @property
    def whole(self) -> bool:
        return self.start == 0 and self.stop is None and self.columns is None


@dataclass(frozen=True)
class Raw:
    """A tensor whose checkpoint bytes already are a GGML block type (gpt-oss's MXFP4 experts): written as they
    are, whatever the output type, with no float round trip. read(start, stop) gives rows start:stop of the GGUF
    tensor (rows of its last axis) as their bytes, uint8 [stop - start, row bytes]: a move of bytes only."""
    qtype: gguf.GGMLQuantizationType
    tensors: tuple[str, ...]  # the checkpoint tensors it is made from
    read: Callable[[int, int], np.ndarray]


@dataclass
class TensorPlan:
    name: str  # GGUF tensor name
    shape: tuple[int, ...]  # numpy shape as written (GGUF stores it reversed)
    parts: tuple[Part, ...] = ()  # empty for a tensor made from config.json (data)
    # A change of values (Gemma's norm + 1), applied before any type conversion to the values as llama.cpp's
    # converter holds them: F16 and F32 as stored, BF16 widened to F32.
    values: Callable[[np.ndarray], np.ndarray] | None = None
    data: np.ndarray | None = None  # float32 values of a tensor that the checkpoint does not hold
    raw: Raw | None = None  # bytes already in a GGML block type (no parts)

    @property
    def source(self) -> str | None:
        """The checkpoint tensor it is made from (the first, for a tensor of several parts)."""
        if self.raw:
            return self.raw.tensors[0]
        return self.parts[0].tensor if self.parts else None


class Architecture:
    """One Hugging Face architecture. Subclasses set gguf_arch and implement set_kv and vocab; most also
    override skip() and modify() for the tensors that need real work."""

    gguf_arch: ClassVar[gguf.MODEL_ARCH]
    writes_file_type: ClassVar[bool] = True  # general.file_type (llama.cpp's converter leaves it out for GPT-NeoX)
    strip_prefixes: ClassVar[tuple[str, ...]] = ()

    def __init__(self, model: ModelFolder):
        self.model = model
        self.hparams = self.read_config(model.config)
        self.notes: list[str] = []  # what the converter should tell the user (logged with the conversion)
        self.block_count = self.int_hparam("n_layer", "num_hidden_layers")
        self.name_map = gguf.get_tensor_name_map(self.gguf_arch, self.block_count)

    @property
    def arch_name(self) -> str:
        return gguf.MODEL_ARCH_NAMES[self.gguf_arch]

    def hparam(self, *keys: str, default=None):
        for k in keys:
            if self.hparams.get(k) is not None:
                return self.hparams[k]
        if default is not None:
            return default
        raise ConversionError(self.model.path / "config.json", f"has none of {', '.join(keys)}",
                              "use the config.json that belongs to these weights")

    def int_hparam(self, *keys: str, default=None) -> int:
        value = self.hparam(*keys, default=default)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2**31:
            raise ConversionError(self.model.path / "config.json", f"{keys[0]} must be a positive 32-bit integer, not "
                                  f"{value!r}", "use the config.json that belongs to these weights")
        return value

    # --- per-architecture hooks -------------------------------------------------------------------
    def read_config(self, config: dict) -> dict:
        """The hyperparameters, from config.json as it is (a multimodal checkpoint's text model may merge its
        text_config over it)."""
        return config

    def set_kv(self, w: gguf.GGUFWriter) -> None:
        raise NotImplementedError

    def vocab(self, n_vocab: int) -> Vocab:
        raise NotImplementedError

    def skip(self, hf_name: str) -> bool:
        """True for tensors that have no place in the GGUF (buffers, rotary caches)."""
        return False

    def modify(self, gguf_name: str, hf_name: str, shape: tuple[int, ...]):
        """Returns (written shape, transform or None) for one tensor."""
        return shape, None

    def values(self, gguf_name: str, hf_name: str) -> Callable[[np.ndarray], np.ndarray] | None:
        """A change of the tensor's values (see TensorPlan.values), or None."""
        return None

    def file_type(self, default: gguf.LlamaFileType) -> gguf.LlamaFileType:
        """general.file_type, given the one of the output type (gpt-oss's MXFP4 release says MXFP4_MOE)."""
        return default

    def extra_tensors(self) -> dict[str, np.ndarray]:
        """GGUF name -> float32 values of tensors computed from config.json (llama3's rope_freqs)."""
        return {}

    def expected_shapes(self, n_vocab: int) -> dict[str, tuple[int, ...]]:
        """GGUF name -> written shape implied by config.json, for every tensor the model must have
        ("blk.{bid}." names stand for every block)."""
        return {}

    # --- shared machinery -------------------------------------------------------------------------
    def map_name(self, hf_name: str) -> str:
        name = hf_name
        for p in self.strip_prefixes:
            if name.startswith(p):
                name = name[len(p):]
        mapped = self.name_map.get_name(name, try_suffixes=(".weight", ".bias"))
        if mapped is None and re.search(r"\.(\d+)\.", name):
            raise ConversionError(self.model.path, f"has tensor {hf_name!r} beyond the {self.block_count} "
                                  "blocks that config.json declares", "use the config.json of these weights")
        if mapped is None:
            raise ConversionError(self.model.path, f"has tensor {hf_name!r}, which {self.arch_name} does not use",
                                  "check that config.json's architectures matches the weights")
        return mapped

    def tensor_plans(self, hf_name: str) -> list[TensorPlan]:
        """The GGUF tensors one checkpoint tensor gives, as they become complete: none while a tensor waits for
        the rest of a group (experts), several when it completes one or a fused tensor is split."""
        name = self.map_name(hf_name)
        shape, transform = self.modify(name, hf_name, self.model.tensors[hf_name].shape)
        return [TensorPlan(name, tuple(shape), (Part(hf_name, transform=transform),), self.values(name, hf_name))]

    def check_complete(self) -> None:
        """Called after the last checkpoint tensor: refuses groups that never completed."""

    def plan(self) -> list[TensorPlan]:
        """The tensors in llama.cpp's converter's order: those made from config.json first, then the
        checkpoint's, shard by shard in header order (a group, such as a layer's experts, where it completes)."""
        plans = [TensorPlan(name, data.shape, data=np.ascontiguousarray(data, np.float32))
                 for name, data in self.extra_tensors().items()]
        for hf_name in self.model.tensors:
            if self.skip(hf_name):
                continue
            self.model.check_dtype(hf_name)
            plans.extend(self.tensor_plans(hf_name))
        self.check_complete()
        self.check_shapes(plans)
        return plans

    def check_shapes(self, plans: list[TensorPlan]) -> None:
        """Every tensor config.json implies is there, with the shape it implies."""
        by_name = {p.name: p for p in plans}
        embd = by_name.get("token_embd.weight")
        if embd is None:
            raise ConversionError(self.model.path, "has no token embedding tensor", "check that the weights are complete")
        config = self.model.path / "config.json"
        vocab = self.hparams.get("vocab_size")
        if isinstance(vocab, int) and vocab != embd.shape[0]:
            raise ConversionError(config, f"says vocab_size {vocab}, but the token embedding "
                                  f"({embd.source}) has {embd.shape[0]} rows", "use the config.json of these weights")
        expected = {}
        for name, shape in self.expected_shapes(embd.shape[0]).items():
            for bid in range(self.block_count) if "{bid}" in name else [None]:
                expected[name.format(bid=bid)] = shape
        for name, shape in expected.items():
            if name not in by_name:
                raise ConversionError(self.model.path, f"lacks tensor {name} (from config.json: "
                                      f"{self.block_count} blocks)", "check that every weight file is complete")
            p = by_name[name]
            if p.shape != shape:
                single = len(p.parts) == 1 and p.parts[0].whole
                what = p.source if single else f"{name}, made from {', '.join(q.tensor for q in p.parts[:2])}, ...,"
                got = self.model.tensors[p.source].shape if single else p.shape
                raise ConversionError(self.model.path, f"tensor {what} has shape {list(got)}, but config.json "
                                      f"implies {list(shape)} for {name}", "use the config.json of these weights")


def architecture_for(model: ModelFolder) -> Architecture:
    config_path = model.path / "config.json"
    names = model.config.get("architectures")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ConversionError(config_path, "has no 'architectures' list",
                              f"add e.g. \"architectures\": [\"{next(iter(REGISTRY))}\"] matching the weights")
    for n in names:
        if n in REGISTRY:
            return REGISTRY[n](model)
    raise ConversionError(config_path, f"architecture {', '.join(names)} is not supported",
                          f"supported architectures: {', '.join(sorted(REGISTRY))}")
