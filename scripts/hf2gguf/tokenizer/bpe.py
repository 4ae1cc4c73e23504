"""BPE from tokenizer.json, or vocab.json with merges.txt.

* load_llama_hf(): tokenizer.json BPE with byte fallback (a SentencePiece model saved by transformers; gguf-py's
  LlamaHfVocab) -> tokenizer.ggml.model "llama", with scores -1000 and <0xNN> tokens as BYTE;
* load_gpt2(): byte-level BPE, GPT-2 style (the reference's get_vocab_base and its merges) -> "gpt2", with
  tokenizer.ggml.pre recognised from the pre-tokenizer (pretokenizers.py).
"""
from __future__ import annotations

import re
from pathlib import Path

from ..errors import ConversionError
from ..source import read_json
from .files import added_tokens, checked_vocab, content, json_if_present, malformed, parse_or_fail
from .pretokenizers import SLOW_TOKENIZER_REGEXES, pick, recognise_pre
from .special import SPECIAL_TYPES, special_vocab
from .vocab import T, Vocab, check_fits, looks_special, refuse_duplicates, rows


# --- tokenizer.json BPE with byte fallback (gguf-py's LlamaHfVocab) --------------------------------------------
BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def is_llama_hf(tok_json: dict) -> bool:
    """A SentencePiece model saved by transformers as tokenizer.json: BPE with byte fallback."""
    model = tok_json.get("model") or {}
    return (model.get("type") == "BPE" and bool(model.get("byte_fallback"))
            and (tok_json.get("decoder") or {}).get("type") == "Sequence")


def load_llama_hf(folder: Path, n_vocab: int, config: dict) -> Vocab:
    """The reference's _set_vocab_llama_hf: tokens and scores of tokenizer.json, special tokens CONTROL."""
    path = folder / "tokenizer.json"

    def parse(tok_json: dict):
        base = checked_vocab(tok_json["model"]["vocab"])
        added = added_tokens(tok_json.get("added_tokens") or [])
        return base, added

    tok_json = read_json(path)
    base, added = parse_or_fail(path, parse, tok_json)
    tc = json_if_present(folder / "tokenizer_config.json") or {}
    stm = json_if_present(folder / "special_tokens_map.json") or {}
    # transformers' all_special_tokens: the named special tokens and additional_special_tokens
    named = [content(tc.get(f"{k}_token", stm.get(f"{k}_token"))) for k in SPECIAL_TYPES]
    extra = tc.get("additional_special_tokens", stm.get("additional_special_tokens")) or []
    everything = {**base, **{text: id_ for id_, text, _ in added}}
    special_ids = {everything[t] for t in named + [content(e) for e in extra] if t in everything}
    n_base = len(base)
    by_id = {i: t for t, i in base.items()}
    for id_, text, _ in added:
        if id_ >= n_base:
            by_id[id_] = text
    check_fits(path, by_id, n_vocab)

    def classify(i: int, text: str):
        if i >= n_base:
            return text, T.CONTROL if i in special_ids else T.USER_DEFINED
        if BYTE_TOKEN.fullmatch(text):
            return text, T.BYTE
        return text, T.CONTROL if i in special_ids else T.NORMAL

    tokens, types = rows(by_id, n_vocab, classify)
    scores = [-1000.0 if i in by_id else -10000.0 for i in range(n_vocab)]
    sp = special_vocab(folder, config, n_vocab)
    refuse_duplicates(folder, tokens)
    return Vocab("llama", "default", tokens, types, [], scores, sp.ids, sp.add, sp.chat_template, sp.normalizer)


# --- byte-level BPE (the reference's get_vocab_base + SpecialVocab(load_merges=True)) -------------------------
def load_gpt2(folder: Path, n_vocab: int, config: dict) -> Vocab:
    """The reference's _set_vocab_gpt2: byte-level BPE tokenizer.json, or vocab.json + merges.txt."""
    tok_json_path, tc_path = folder / "tokenizer.json", folder / "tokenizer_config.json"
    tc = json_if_present(tc_path) or {}
    tok_json = None
    if tok_json_path.is_file():
        tok_json = read_json(tok_json_path)

        def parse(data):
            model = data["model"]
            if model.get("type", "BPE") != "BPE" or "merges" not in model:
                raise ConversionError(tok_json_path, f"holds a {model.get('type')} model; a byte-level BPE model "
                                      "(or tokenizer.model) is needed", "use the model's original tokenizer files")
            return checked_vocab(model["vocab"]), added_tokens(data.get("added_tokens") or [])

        vocab, added = parse_or_fail(tok_json_path, parse, tok_json)
        with malformed(tok_json_path):
            pre = recognise_pre(tok_json.get("pre_tokenizer"), tok_json_path, config, tc)
    elif (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        vocab = parse_or_fail(folder / "vocab.json", checked_vocab, read_json(folder / "vocab.json"))
        added = []
        if (folder / "added_tokens.json").is_file():
            extra = read_json(folder / "added_tokens.json")
            added = [(i, t, False) for t, i in extra.items() if type(i) is int]
        cls = tc.get("tokenizer_class")
        if cls not in SLOW_TOKENIZER_REGEXES:
            raise ConversionError(folder / "vocab.json", f"comes without tokenizer.json, and its pre-tokenizer "
                                  f"({cls}) cannot be told from vocab.json and merges.txt",
                                  "add the model's tokenizer.json")
        pre = pick(SLOW_TOKENIZER_REGEXES[cls], config, tc)
    else:
        raise ConversionError(folder, "has no tokenizer (tokenizer.json, or vocab.json with merges.txt)",
                              "download the model's tokenizer files into the folder")

    decoder = parse_or_fail(tc_path, added_tokens, tc.get("added_tokens_decoder") or {})
    known = {i for i, _, _ in added}
    added += [e for e in decoder if e[0] not in known]  # transformers adds them too
    # transformers' tokenizer.vocab: the model's vocabulary, updated with the added tokens
    everything = {**vocab, **{text: id_ for id_, text, _ in added}}
    by_id = {i: t for t, i in everything.items()}
    check_fits(folder, by_id, n_vocab)
    special = {text: sp for _, text, sp in added}

    def classify(i: int, text: str):
        if text not in special:
            return text, T.NORMAL
        if special[text] or looks_special(text):
            return text, T.CONTROL
        return text.replace("\u2581", " "), T.USER_DEFINED

    tokens, types = rows(by_id, n_vocab, classify)
    merges = _merges(folder, tok_json)
    sp = special_vocab(folder, config, None)
    for name, id_ in sp.ids.items():
        if id_ >= n_vocab:
            raise ConversionError(folder / "config.json", f"{name}_token_id {id_} is not a token id "
                                  f"(0..{n_vocab - 1})", "use the config.json that belongs to these weights")
    refuse_duplicates(folder, tokens)
    return Vocab("gpt2", pre, tokens, types, merges, None, sp.ids, sp.add, sp.chat_template, sp.normalizer)


def _merges(folder: Path, tok_json: dict | None) -> list[str]:
    """The merges of tokenizer.json's model, else of merges.txt (as SpecialVocab(load_merges=True) reads them)."""
    merges = []
    if tok_json is not None:
        with malformed(folder / "tokenizer.json"):
            merges = _json_merges(tok_json["model"]["merges"])
    if not merges and (folder / "merges.txt").is_file():
        merges = _merges_txt(folder / "merges.txt")
    return merges


def _json_merges(merges) -> list[str]:
    if not merges:
        return []
    if all(isinstance(m, str) for m in merges):
        return list(merges)
    if all(isinstance(m, list) and len(m) == 2 and all(isinstance(s, str) for s in m) for m in merges):
        # transformers >= 4.45 writes pairs, which may contain spaces: llama.cpp wants them as U+0120
        return [" ".join(s.replace(" ", "\u0120") for s in m) for m in merges]
    raise ValueError("merges must be strings 'a b' or pairs [a, b]")


def _merges_txt(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise ConversionError(path, f"is not UTF-8 text ({e})", "re-download it") from None
    if lines and lines[0].strip().startswith("#"):
        lines = lines[1:]
    merges = []
    for line in lines:
        parts = line.strip().split(None, 3)
        if len(parts) == 2:
            merges.append(f"{parts[0]} {parts[1]}")
        elif parts:
            raise ConversionError(path, f"line {line!r} is not a merge of two tokens", "re-download it")
    return merges
