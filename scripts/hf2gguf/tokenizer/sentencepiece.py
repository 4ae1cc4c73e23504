"""SentencePiece: tokenizer.model (a protobuf ModelProto, parsed here by hand) -> tokenizer.ggml.model "llama".

read_sentencepiece() gives the pieces of a tokenizer.model; load_sentencepiece() is the reference's
_create_vocab_sentencepiece (Llama 1/2, Mistral v0.1, Gemma) or, with phi3=True, Phi3MiniModel.set_vocab,
with the added tokens of added_tokens.json and tokenizer_config.json.
"""
from __future__ import annotations

import struct
from pathlib import Path

from ..errors import ConversionError
from ..source import read_json
from .files import added_tokens, json_if_present, parse_or_fail
from .special import special_vocab
from .vocab import T, Vocab, check_fits, looks_special, refuse_duplicates

# SentencePiece's piece types (ModelProto.SentencePiece.Type)
SP_NORMAL, SP_UNKNOWN, SP_CONTROL, SP_USER_DEFINED, SP_UNUSED, SP_BYTE = 1, 2, 3, 4, 5, 6


# --- tokenizer.model: a protobuf ModelProto, parsed by hand ----------------------------------------------------
def _varint(data: bytes, pos: int) -> tuple[int, int]:
    """A protobuf varint at data[pos:]: (value, position after it)."""
    value = shift = 0
    while True:
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(data: bytes):
    """(field number, wire type, value) of one protobuf message; value is an int or bytes."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 1:
            value, pos = data[pos:pos + 8], pos + 8
        elif wire == 2:
            n, pos = _varint(data, pos)
            value, pos = data[pos:pos + n], pos + n
        elif wire == 5:
            value, pos = data[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if pos > len(data):
            raise ValueError("truncated protobuf message")
        yield number, wire, value


def read_sentencepiece(path: Path) -> list[tuple[str, float, int]]:
    """The pieces of a SentencePiece tokenizer.model: (text, score, SentencePiece type)."""
    def parse(data: bytes):
        pieces = []
        for number, wire, value in _fields(data):
            if number != 1 or wire != 2:
                continue
            text, score, kind = None, 0.0, SP_NORMAL
            for n, w, v in _fields(value):
                if n == 1 and w == 2:
                    text = v.decode("utf-8")
                elif n == 2 and w == 5:
                    (score,) = struct.unpack("<f", v)
                elif n == 3 and w == 0:
                    kind = v
            if text is None or not SP_NORMAL <= kind <= SP_BYTE:
                raise ValueError(f"piece {len(pieces)} has no text or an unknown type")
            pieces.append((text, score, kind))
        if not pieces:
            raise ValueError("no pieces")
        return pieces

    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConversionError(path, f"cannot be read ({e.strerror or e})", "re-download it") from None
    try:
        return parse(data)
    except (ValueError, IndexError, UnicodeDecodeError, struct.error) as e:
        raise ConversionError(path, f"is not a SentencePiece model ({e})", "re-download the model's tokenizer.model") \
            from None


# --- the vocabulary -------------------------------------------------------------------------------------------
def load_sentencepiece(folder: Path, n_vocab: int, config: dict, phi3: bool) -> Vocab:
    """_create_vocab_sentencepiece (phi3=False) or Phi3MiniModel.set_vocab (phi3=True) of the reference."""
    path = folder / "tokenizer.model"
    pieces = read_sentencepiece(path)
    check_fits(path, [len(pieces) - 1], n_vocab)
    tokens = [f"[PAD{i}]" for i in range(n_vocab)]
    scores = [-10000.0] * n_vocab
    types = [int(T.UNUSED)] * n_vocab
    kinds = {SP_UNKNOWN: T.UNKNOWN, SP_CONTROL: T.CONTROL, SP_UNUSED: T.UNUSED, SP_BYTE: T.BYTE}
    for i, (text, score, kind) in enumerate(pieces):
        tokens[i], scores[i], types[i] = text, score, int(kinds.get(kind, T.NORMAL))

    def added(id_: int, text: str, special: bool | None) -> None:
        """special=None: added_tokens.json, always USER_DEFINED."""
        if not 0 <= id_ < n_vocab:  # the reference drops added tokens beyond the embedding
            return
        if special is None:
            kind = T.USER_DEFINED
        elif special or (not phi3 and looks_special(text)):
            kind = T.CONTROL
        else:
            kind = T.USER_DEFINED
            if not phi3:
                text = text.replace("\u2581", " ")  # user-defined tokens are matched pre-normalized
        tokens[id_], scores[id_], types[id_] = text, -1000.0, int(kind)

    def read_added(path: Path):
        data = read_json(path)
        if not all(isinstance(k, str) and type(v) is int for k, v in data.items()):
            raise ValueError("added_tokens.json must map token strings to ids")
        return data

    added_path = folder / "added_tokens.json"
    if added_path.is_file():
        for text, id_ in parse_or_fail(added_path, read_added, added_path).items():
            added(id_, text, None)
    tc_path = folder / "tokenizer_config.json"
    tc = json_if_present(tc_path) or {}
    entries = parse_or_fail(tc_path, added_tokens, tc.get("added_tokens_decoder") or {})
    if phi3 and (folder / "tokenizer.json").is_file():
        tok_json = read_json(folder / "tokenizer.json")
        entries += parse_or_fail(folder / "tokenizer.json", added_tokens, tok_json.get("added_tokens") or [])
    for id_, text, special in entries:
        added(id_, text, special)
    sp = special_vocab(folder, config, n_vocab)
    refuse_duplicates(folder, tokens)
    return Vocab("llama", "default", tokens, types, [], scores, sp.ids, sp.add, sp.chat_template, sp.normalizer)
