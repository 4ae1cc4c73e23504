#!/usr/bin/env python3
"""Tiny random checkpoints of architectures that our converter does not support and llama.cpp's converts, for
tests/test_fallback.py (the workflow's fallback to convert_hf_to_gguf.py).

A test tool (torch, transformers), built like generators/models.py builds its variants and with its helpers:
transformers' own model of the architecture, every parameter redrawn at a visible scale (seeded), saved with
transformers, and transformers' float32 logits for a fixed sequence of token ids recorded beside it
(reference_logits.npz). config.json has the fields of the real release, at a tiny size. The vocabularies are
full-size (generators/tokenizers.py rebuilds them from llama.cpp's own vocab files): llama.cpp's converter
recognises a BPE pre-tokenizer by a hash of how the whole vocabulary splits a text, which a cut-down
vocabulary never matches.

    python tests/fallback_models.py --out DIR [NAME ...]

Outside tests/generators/ on purpose: tests/reference.py keys its fixture cache on that folder's files.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace

TESTS = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != TESTS / "generators"]
sys.path.insert(0, str(TESTS))
sys.path.insert(0, str(TESTS.parent / "scripts"))

import numpy as np  # noqa: E402


@dataclass(frozen=True)
class Fixture:
    arch: str  # config.json architectures[0]: one our converter does not support
    model_type: str
    vocab: str  # generators.tokenizers vocabulary; its size gives the embedding rows
    dtype: str  # the stored dtype, as in the real release
    gelu: bool  # llama.cpp's CPU GELU uses an fp16 table: the looser logit tolerance of test_logits.py
    config: dict = field(default_factory=dict)
    drop: tuple[str, ...] = ()  # fields transformers writes that the real release's config.json lacks
    seed: int = 0


_ROPE = {"rope_type": "default"}
FIXTURES: dict[str, Fixture] = {
    # tiiuae/falcon-7b: one shared KV head (multi_query), parallel attention and MLP, no biases, GELU, tied
    # embeddings. num_kv_heads: 1 is written out: without it transformers' FalconConfig fills in
    # num_attention_heads, which its model ignores for multi_query but llama.cpp's converter (b11312) reads.
    "falcon": Fixture("FalconForCausalLM", "falcon", "gpt-2", "bfloat16", gelu=True, seed=21,
                      config=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_kv_heads=1,
                                  multi_query=True,
                                  new_decoder_architecture=False, parallel_attn=True, bias=False, alibi=False,
                                  layer_norm_epsilon=1e-5, tie_word_embeddings=True,
                                  rope_parameters=_ROPE | {"rope_theta": 10000.0})),
    # baidu/ERNIE-4.5-0.3B-PT: SentencePiece, GQA, head_dim 128 != hidden / heads, no biases, tied, bf16
    "ernie4_5": Fixture("Ernie4_5ForCausalLM", "ernie4_5", "llama-spm", "bfloat16", gelu=False, seed=22,
                        config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, head_dim=32, use_bias=False,
                                    rms_norm_eps=1e-5, max_position_embeddings=256, tie_word_embeddings=True,
                                    rope_parameters=_ROPE | {"rope_theta": 500000.0})),
    # allenai/OLMo-1B-hf: layer norms without weights, no biases, SiLU, tied, f32, byte-level BPE
    "olmo": Fixture("OlmoForCausalLM", "olmo", "gpt-2", "float32", gelu=False, seed=23,
                    config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                num_key_value_heads=4, clip_qkv=None, max_position_embeddings=256,
                                tie_word_embeddings=True, rope_parameters=_ROPE | {"rope_theta": 10000.0})),
}


def make(name: str, dest: Path) -> Path:
    """Builds FIXTURES[name] into dest, through a temporary folder renamed when complete."""
    import torch
    import transformers
    from generators.models import input_ids, logits_of, redraw
    from generators.tokenizers import config_json, write_tokenizer

    f = FIXTURES[name]
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        torch.manual_seed(f.seed)
        n_vocab = write_tokenizer(f.vocab, tmp)
        settings = f.config | config_json(f.vocab) | {"vocab_size": n_vocab}
        config = transformers.AutoConfig.for_model(f.model_type, **settings)
        config.architectures = [f.arch]
        model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=torch.float32)
        redraw(model, SimpleNamespace(seed=f.seed, model_type=f.model_type))
        model.eval()
        for p in model.parameters():
            p.data = p.data.to(getattr(torch, f.dtype))
        model.save_pretrained(tmp)
        for p in model.parameters():
            p.data = p.data.float()
        path = tmp / "config.json"
        saved = json.loads(path.read_text())
        path.write_text(json.dumps({k: v for k, v in saved.items() if k not in f.drop}, indent=2) + "\n")
        ids = input_ids(SimpleNamespace(seed=f.seed), n_vocab)
        expected = logits_of(model, ids)
        reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32,
                                                                     attn_implementation="eager").eval()
        logits = logits_of(reloaded, ids)
        drift = float(np.abs(logits - expected).max())
        if drift > 1e-5:
            raise RuntimeError(f"{name}: the saved folder gives other logits than the model ({drift:.2e})")
        np.savez(tmp / "reference_logits.npz", input_ids=np.array(ids, np.int32), logits=logits,
                 versions=json.dumps({"torch": torch.__version__, "transformers": transformers.__version__}))
        tmp.chmod(0o755)
        if dest.exists():
            shutil.rmtree(dest)
        os.rename(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def cache_dir() -> Path:
    """$HF2GGUF_CACHE/fixtures-fallback/<hash of the generators and the torch/transformers versions>."""
    import llama_toolchain

    h = hashlib.sha256()
    for path in [Path(__file__), *sorted((TESTS / "generators").glob("*.py"))]:
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    for dist in ("torch", "transformers", "tokenizers", "sentencepiece"):
        try:
            h.update(f"{dist}={metadata.version(dist)}\n".encode())
        except metadata.PackageNotFoundError:
            pass
    return llama_toolchain.cache_root() / "fixtures-fallback" / h.hexdigest()[:16]


def ensure(names) -> dict[str, Path]:
    """The fixture folders, built once (in a subprocess: torch stays out of the caller)."""
    import fcntl

    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        missing = [n for n in names if not (root / n / "reference_logits.npz").exists()]
        if missing:
            proc = subprocess.run([sys.executable, __file__, "--out", str(root), *missing], capture_output=True,
                                  text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false",
                                                  "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"})
            if proc.returncode:
                raise RuntimeError(f"building {missing} failed:\n{proc.stdout[-3000:]}{proc.stderr[-6000:]}")
    return {n: root / n for n in names}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("names", nargs="*", help=f"default: {', '.join(FIXTURES)}")
    a = ap.parse_args()
    for name in a.names or FIXTURES:
        path = make(name, a.out / name)
        print(f"{name}: {path} ({sum(p.stat().st_size for p in path.iterdir()) / 2**20:.1f} MiB)", flush=True)


if __name__ == "__main__":
    main()
