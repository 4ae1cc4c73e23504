"""The neutral vocabulary every architecture shares, how it is written to a GGUF, and the rules for its rows.

Vocab holds what the tokenizer readers found, and Vocab.write() adds it to a GGUFWriter in the key order of
llama.cpp's convert_hf_to_gguf.py (b11312), with gguf-py's key names (gguf.Keys.Tokenizer). The helpers below
build one token per embedding row, as every reader does.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import gguf

from ..errors import ConversionError

T = gguf.TokenType
K = gguf.Keys.Tokenizer
# The special ids and add_* flags the reference's GGUFWriter has a key for; it skips the others (cls, prefix...).
SPECIAL_ID_KEYS = {"bos": K.BOS_ID, "eos": K.EOS_ID, "unk": K.UNK_ID, "sep": K.SEP_ID, "pad": K.PAD_ID,
                   "mask": K.MASK_ID, "eot": K.EOT_ID, "eom": K.EOM_ID}
ADD_KEYS = {"bos": K.ADD_BOS, "eos": K.ADD_EOS, "sep": K.ADD_SEP}
NORMALIZER_KEY = "tokenizer.ggml.normalizer.{name}"  # lowercase / strip_accents; gguf-py has no constant for it


@dataclass
class Vocab:
    """A tokenizer as a GGUF holds it: one token, type (and score) per embedding row, with its special tokens."""
    model: str  # tokenizer.ggml.model: "gpt2" for byte-level BPE, "llama" for SentencePiece
    pre: str  # tokenizer.ggml.pre
    tokens: list[str]
    types: list[int]
    merges: list[str] = field(default_factory=list)
    scores: list[float] | None = None
    special_ids: dict[str, int] = field(default_factory=dict)  # bos/eos/unk/... -> id, in the reference's order
    add_special: dict[str, bool] = field(default_factory=dict)  # bos/eos/sep -> add it when tokenizing
    chat_template: str | list | None = None
    normalizer: dict[str, bool] = field(default_factory=dict)  # lowercase / strip_accents
    add_space_prefix: bool | None = None
    space_prefix_first: bool = False  # LlamaModel writes it before the vocabulary, Gemma after
    late_special_ids: dict[str, int] = field(default_factory=dict)  # an architecture's own, written last
    late_add_bos: bool | None = None  # an architecture's override of add_bos where the files set none

    def write(self, w: gguf.GGUFWriter) -> None:
        if self.add_space_prefix is not None and self.space_prefix_first:
            w.add_add_space_prefix(self.add_space_prefix)
        w.add_tokenizer_model(self.model)
        w.add_tokenizer_pre(self.pre)
        w.add_token_list(self.tokens)
        if self.scores is not None:
            w.add_token_scores(self.scores)
        w.add_token_types(self.types)
        if self.merges:
            w.add_token_merges(self.merges)
        for name, id_ in self.special_ids.items():
            if name in SPECIAL_ID_KEYS:
                w.add_uint32(SPECIAL_ID_KEYS[name], id_)
        for name, value in self.add_special.items():
            if name in ADD_KEYS:
                w.add_bool(ADD_KEYS[name], value)
        if isinstance(self.chat_template, str):
            w.add_string(K.CHAT_TEMPLATE, self.chat_template)
        elif self.chat_template is not None:  # [{"name": ..., "template": ...}, ...]
            names = []
            for choice in self.chat_template:
                name = re.sub(r"[^A-Za-z0-9]", "_", choice.get("name", ""))
                if name and name != "default" and choice.get("template") is not None:
                    names.append(name)
                    w.add_string(K.CHAT_TEMPLATE_N.format(name=name), choice["template"])
            if names:
                w.add_array(K.CHAT_TEMPLATES, names)
            default = next((c.get("template") for c in self.chat_template if c.get("name") == "default"), None)
            if default is not None:
                w.add_string(K.CHAT_TEMPLATE, default)
        for name, value in self.normalizer.items():
            w.add_bool(NORMALIZER_KEY.format(name=name), value)
        for name, id_ in self.late_special_ids.items():
            w.add_uint32(SPECIAL_ID_KEYS[name], id_)
        if self.late_add_bos is not None:
            w.add_bool(ADD_KEYS["bos"], self.late_add_bos)
        if self.add_space_prefix is not None and not self.space_prefix_first:
            w.add_add_space_prefix(self.add_space_prefix)


def looks_special(text: str) -> bool:
    """Added tokens the reference makes CONTROL although the model does not mark them special."""
    return (text in ("<pad>", "<mask>", "<2mass>", "[@BOS@]") or (text.startswith("<|") and text.endswith("|>"))
            or (text.startswith("<\uff5c") and text.endswith("\uff5c>"))
            or (text.startswith("<unused") and text.endswith(">")))


def check_fits(path: Path, ids, n_vocab: int) -> None:
    """Every token id has an embedding row."""
    too_big = [i for i in ids if i >= n_vocab]
    if too_big:
        raise ConversionError(path, f"the tokenizer has ids up to {max(too_big)}, but the embedding has only "
                              f"{n_vocab} rows", "use the tokenizer that belongs to these weights")


def rows(by_id: dict[int, str], n_vocab: int, classify) -> tuple[list[str], list[int]]:
    """One token and type per embedding row: ids without a token become [PAD<id>] (UNUSED); classify(id, text)
    gives the (token, type) of the others."""
    tokens, types = [], []
    for i in range(n_vocab):
        text = by_id.get(i)
        token, kind = (f"[PAD{i}]", T.UNUSED) if text is None else classify(i, text)
        tokens.append(token)
        types.append(int(kind))
    return tokens, types


def refuse_duplicates(folder: Path, tokens: list[str]) -> None:
    """llama.cpp loads no vocabulary with the same token twice: say so here, naming both ids."""
    seen: dict[str, int] = {}
    for i, t in enumerate(tokens):
        if t in seen:
            raise ConversionError(folder, f"tokens {seen[t]} and {i} are both {t!r}; llama.cpp refuses a vocabulary "
                                  "with duplicate tokens", "remove or rename one of them in the tokenizer files "
                                  "(added_tokens.json, tokenizer_config.json's added_tokens_decoder, tokenizer.json)")
        seen[t] = i
