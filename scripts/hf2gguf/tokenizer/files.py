"""Reading Hugging Face tokenizer files: whatever a file holds, a malformed one is one ConversionError naming it.

The small readers here are shared by the SentencePiece, BPE and special-token modules: optional JSON files, a
tokenizer's vocabulary, its added tokens, and the {"content": ...} form of a special token.
"""
from __future__ import annotations

import struct
from contextlib import contextmanager
from pathlib import Path

from ..errors import ConversionError
from ..source import read_json


@contextmanager
def malformed(path: Path):
    """Whatever a tokenizer file holds, reading it fails with one ConversionError naming it."""
    try:
        yield
    except ConversionError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, struct.error) as e:
        raise ConversionError(path, f"is malformed ({type(e).__name__}: {e})",
                              "re-download the model's tokenizer files") from None


def parse_or_fail(path: Path, parse, *args):
    """parse(*args), with any error of a malformed file reported as one ConversionError naming path."""
    with malformed(path):
        return parse(*args)


def json_if_present(path: Path) -> dict | None:
    return read_json(path) if path.is_file() else None


def content(value) -> str | None:
    """tokenizer_config.json writes special tokens as a string or as {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def checked_vocab(vocab) -> dict[str, int]:
    """A tokenizer's vocabulary (tokenizer.json's model.vocab, vocab.json): token string -> id."""
    if not isinstance(vocab, dict) or not all(isinstance(s, str) and type(i) is int and i >= 0
                                              for s, i in vocab.items()):
        raise ValueError("the vocabulary must map token strings to ids >= 0")
    return vocab


def added_tokens(entries) -> list[tuple[int, str, bool]]:
    """tokenizer.json's added_tokens list, or tokenizer_config.json's added_tokens_decoder mapping."""
    items = entries.items() if isinstance(entries, dict) else ((t["id"], t) for t in entries)
    out = []
    for id_, t in items:
        id_ = int(id_)
        if id_ < 0 or not isinstance(t["content"], str):
            raise ValueError(f"bad added token {t!r}")
        out.append((id_, t["content"], bool(t.get("special"))))
    return out
