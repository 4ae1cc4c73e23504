"""Tokenizers, parsed once into a neutral structure that every architecture shares."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import gguf

from .errors import ConversionError
from .source import read_json

SPECIAL_NAMES = ("bos", "eos", "unk", "pad")


@dataclass
class Vocab:
    model: str  # tokenizer.ggml.model: "gpt2" for byte-level BPE
    pre: str  # tokenizer.ggml.pre
    tokens: list[str]
    types: list[int]
    merges: list[str]
    special_ids: dict[str, int] = field(default_factory=dict)  # bos/eos/unk/pad -> id

    def write(self, w: gguf.GGUFWriter) -> None:
        w.add_tokenizer_model(self.model)
        w.add_tokenizer_pre(self.pre)
        w.add_token_list(self.tokens)
        w.add_token_types(self.types)
        if self.merges:
            w.add_token_merges(self.merges)
        for name in SPECIAL_NAMES:
            if name in self.special_ids:
                getattr(w, f"add_{name}_token_id")(self.special_ids[name])


def _token_text(value) -> str | None:
    """tokenizer_config.json writes special tokens as a string or as {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _malformed_is_an_error(path: Path, parse, data):
    try:
        return parse(data)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ConversionError(path, f"is malformed ({type(e).__name__}: {e})",
                              "re-download the model's tokenizer files") from None


def _checked_vocab(vocab) -> dict[str, int]:
    if not isinstance(vocab, dict) or not all(isinstance(s, str) and type(i) is int and i >= 0
                                              for s, i in vocab.items()):
        raise ValueError("the vocabulary must map token strings to ids >= 0")
    return vocab


def _added_tokens(entries) -> dict[int, tuple[str, bool]]:
    """tokenizer.json's added_tokens list, or tokenizer_config.json's added_tokens_decoder mapping."""
    items = entries.items() if isinstance(entries, dict) else ((t["id"], t) for t in entries)
    added = {}
    for id_, t in items:
        id_ = int(id_)
        if id_ < 0 or not isinstance(t["content"], str):
            raise ValueError(f"bad added token {t!r}")
        added[id_] = (t["content"], bool(t.get("special")))
    return added


def _from_tokenizer_json(data: dict):
    model = data["model"]
    if model.get("type") != "BPE":
        raise ValueError(f"the model is {model.get('type')!r}; this architecture needs BPE")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    if not all(isinstance(m, str) and m.count(" ") == 1 for m in merges):
        raise ValueError("merges must be pairs of tokens")
    return _checked_vocab(model["vocab"]), merges, _added_tokens(data.get("added_tokens") or [])


def load_bpe(folder: Path, n_vocab: int, pre: str, config: dict) -> Vocab:
    """Byte-level BPE from tokenizer.json, or from vocab.json + merges.txt.

    Every id below n_vocab (the embedding's rows) gets a token: ids without one become [PAD<id>] (UNUSED).
    """
    tok_json = folder / "tokenizer.json"
    if tok_json.exists():
        vocab, merges, added = _malformed_is_an_error(tok_json, _from_tokenizer_json, read_json(tok_json))
    elif (folder / "vocab.json").exists() and (folder / "merges.txt").exists():
        vocab = _malformed_is_an_error(folder / "vocab.json", _checked_vocab, read_json(folder / "vocab.json"))
        try:
            lines = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as e:
            raise ConversionError(folder / "merges.txt", f"is not UTF-8 text ({e})", "re-download it") from None
        merges, added = [l for l in lines if l and not l.startswith("#version")], {}
    else:
        raise ConversionError(folder, "has no tokenizer (tokenizer.json, or vocab.json with merges.txt)",
                              "download the model's tokenizer files into the folder")

    tok_config_path = folder / "tokenizer_config.json"
    tok_config = read_json(tok_config_path) if tok_config_path.exists() else {}
    decoder = _malformed_is_an_error(tok_config_path, _added_tokens, tok_config.get("added_tokens_decoder") or {})
    for id_, entry in decoder.items():
        added.setdefault(id_, entry)

    by_id: dict[int, str] = {i: s for s, i in vocab.items()}
    by_id.update({i: text for i, (text, _) in added.items()})
    too_big = [i for i in by_id if i >= n_vocab]
    if too_big:
        raise ConversionError(folder, f"the tokenizer has ids up to {max(too_big)}, but the embedding has only "
                              f"{n_vocab} rows", "use the tokenizer that belongs to these weights")
    tokens, types = [], []
    for i in range(n_vocab):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if added[i][1] else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)

    ids = {s: i for i, s in enumerate(tokens)}
    special: dict[str, int] = {}
    for name in SPECIAL_NAMES:
        text = _token_text(tok_config.get(f"{name}_token"))
        value = config.get(f"{name}_token_id")
        if isinstance(value, list) and value:  # several EOS ids: llama.cpp takes one
            value = value[0]
        if text is not None and text in ids:
            special[name] = ids[text]
        elif value is not None:
            if type(value) is not int or not 0 <= value < n_vocab:
                raise ConversionError(folder / "config.json", f"{name}_token_id {value!r} is not a token id "
                                      f"(0..{n_vocab - 1})", "use the config.json that belongs to these weights")
            special[name] = value
    return Vocab("gpt2", pre, tokens, [int(t) for t in types], merges, special)
