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


def load_bpe(folder: Path, n_vocab: int, pre: str, config: dict) -> Vocab:
    """Byte-level BPE from tokenizer.json, or from vocab.json + merges.txt.

    Every id below n_vocab (the embedding's rows) gets a token: ids without one become [PAD<id>] (UNUSED).
    """
    added: dict[int, tuple[str, bool]] = {}  # id -> (text, special)
    tok_json = folder / "tokenizer.json"
    if tok_json.exists():
        data = read_json(tok_json)
        model = data.get("model") or {}
        if model.get("type") != "BPE":
            raise ConversionError(tok_json, f"has a {model.get('type')!r} model; this architecture needs BPE",
                                  "use the model's original tokenizer.json")
        vocab = model.get("vocab") or {}
        merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
        for t in data.get("added_tokens") or []:
            added[int(t["id"])] = (t["content"], bool(t.get("special")))
    elif (folder / "vocab.json").exists() and (folder / "merges.txt").exists():
        vocab = read_json(folder / "vocab.json")
        lines = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
        merges = [l for l in lines if l and not l.startswith("#version")]
    else:
        raise ConversionError(folder, "has no tokenizer (tokenizer.json, or vocab.json with merges.txt)",
                              "download the model's tokenizer files into the folder")

    tok_config_path = folder / "tokenizer_config.json"
    tok_config = read_json(tok_config_path) if tok_config_path.exists() else {}
    for id_, t in (tok_config.get("added_tokens_decoder") or {}).items():
        added.setdefault(int(id_), (t["content"], bool(t.get("special"))))

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
        if text is not None and text in ids:
            special[name] = ids[text]
        elif isinstance(config.get(f"{name}_token_id"), int):
            special[name] = config[f"{name}_token_id"]
        elif isinstance(config.get(f"{name}_token_id"), list) and config[f"{name}_token_id"]:
            special[name] = config[f"{name}_token_id"][0]
    return Vocab("gpt2", pre, tokens, [int(t) for t in types], merges, special)
