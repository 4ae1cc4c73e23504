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


@dataclass
class TensorPlan:
    name: str  # GGUF tensor name
    shape: tuple[int, ...]  # numpy shape as written (GGUF stores it reversed)
    source: str  # Hugging Face tensor name
    transform: Callable[[np.ndarray], np.ndarray] | None = None


class Architecture:
    """One Hugging Face architecture. Subclasses set gguf_arch and implement set_kv and vocab; most also
    override skip() and modify() for the tensors that need real work."""

    gguf_arch: ClassVar[gguf.MODEL_ARCH]
    strip_prefixes: ClassVar[tuple[str, ...]] = ()

    def __init__(self, model: ModelFolder):
        self.model = model
        self.hparams = model.config
        self.block_count = self.hparam("n_layer", "num_hidden_layers")
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

    # --- per-architecture hooks -------------------------------------------------------------------
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

    # --- shared machinery -------------------------------------------------------------------------
    def map_name(self, hf_name: str) -> str:
        name = hf_name
        for p in self.strip_prefixes:
            if name.startswith(p):
                name = name[len(p):]
        mapped = self.name_map.get_name(name, try_suffixes=(".weight", ".bias"))
        if mapped is None:
            raise ConversionError(self.model.path, f"has tensor {hf_name!r}, which {self.arch_name} does not use",
                                  "check that config.json's architectures matches the weights")
        return mapped

    def plan(self) -> list[TensorPlan]:
        plans = []
        for hf_name, info in self.model.tensors.items():
            if self.skip(hf_name):
                continue
            name = self.map_name(hf_name)
            shape, transform = self.modify(name, hf_name, info.shape)
            plans.append(TensorPlan(name, tuple(shape), hf_name, transform))
        return sorted(plans, key=lambda p: _order(p.name))


def _order(name: str):
    """token_embd/position_embd first, then the blocks in order, then output_norm and output."""
    m = re.match(r"blk\.(\d+)\.", name)
    if m:
        return (1, int(m.group(1)), name)
    return (2 if name.startswith("output") else 0, 0, name)


def architecture_for(model: ModelFolder) -> Architecture:
    config_path = model.path / "config.json"
    names = model.config.get("architectures")
    if not isinstance(names, list) or not names:
        raise ConversionError(config_path, "has no 'architectures' list",
                              f"add e.g. \"architectures\": [\"{next(iter(REGISTRY))}\"] matching the weights")
    for n in names:
        if n in REGISTRY:
            return REGISTRY[n](model)
    raise ConversionError(config_path, f"architecture {', '.join(map(str, names))} is not supported",
                          f"supported architectures: {', '.join(sorted(REGISTRY))}")
