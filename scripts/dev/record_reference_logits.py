#!/usr/bin/env python3
"""Record transformers' reference outputs for a model folder, for the fidelity tests.

A development tool, not part of the converter: it needs torch and transformers
(`pip install torch==2.13.0 transformers`). Run it again whenever the model folder changes:

    python scripts/dev/record_reference_logits.py models/tiny-gpt2 tests/fixtures/tiny-gpt2

Writes <prefix>.npz (input ids and float32 logits of every position) and <prefix>-tokens.json (token ids of
test strings, with and without special tokens), both stamped with the sha256 of the weights they came from.
"""
import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

PROMPT = "The quick brown fox jumps over the lazy dog. It was the best of times, it was the worst of times"
STRINGS = [
    "Hello world",
    " Hello world",
    "Hello, World!",
    "The quick brown fox jumps over the lazy dog.",
    "   leading spaces and\ttabs\nnew lines",
    "numbers 1234567890 and 3.14159",
    "it's, we're, they'll, I'd, you've",
    "ünïcödé façade — naïve café 日本語 🦙",
    "<|endoftext|>between<|endoftext|>",
    "",
]


def weights_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.glob("*.safetensors")):
        h.update(p.read_bytes())
    return h.hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path)
    ap.add_argument("prefix", type=Path)
    a = ap.parse_args()
    tok = AutoTokenizer.from_pretrained(a.model)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32).eval()
    ids = tok(PROMPT)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].numpy().astype(np.float32)
    digest = weights_digest(a.model)
    a.prefix.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(f"{a.prefix}.npz", input_ids=np.array(ids, dtype=np.int32), logits=logits,
                        weights_sha256=np.array(digest))
    cases = [{"text": s, "ids": tok(s, add_special_tokens=False)["input_ids"]} for s in STRINGS]
    meta = {"weights_sha256": digest, "tokenizer": type(tok).__name__, "cases": cases,
            "recorded_with": {"transformers": __import__("transformers").__version__, "torch": torch.__version__}}
    Path(f"{a.prefix}-tokens.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"recorded {len(ids)} positions x {logits.shape[1]} logits and {len(cases)} tokenizer cases")


if __name__ == "__main__":
    main()
