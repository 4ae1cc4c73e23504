"""Tokenizers, parsed once into a neutral structure that every architecture shares.

load_vocab() reads a Hugging Face model folder the way llama.cpp's convert_hf_to_gguf.py (b11312) does, without
transformers or sentencepiece:

* tokenizer.model (SentencePiece, parsed here) -> tokenizer.ggml.model "llama": Llama 1/2, Mistral v0.1,
  Gemma, Phi-3;
* tokenizer.json BPE with byte fallback (a SentencePiece model saved by transformers) -> "llama";
* byte-level BPE tokenizer.json, or vocab.json + merges.txt -> "gpt2", with tokenizer.ggml.pre recognised from
  the pre-tokenizer's regexes (PRE_TOKENIZERS). The reference hashes transformers' tokenization of a test
  string instead; both give the same name for the vocabularies of llama.cpp's tests.

Special token ids, add_bos/add_eos and the chat template come from tokenizer.json, tokenizer_config.json (or
chat_template.jinja/.json) and config.json, with the precedence of gguf-py's SpecialVocab.
"""
from __future__ import annotations

import re
import struct
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import gguf

from .errors import ConversionError
from .source import read_json

T = gguf.TokenType
SPECIAL_TYPES = ("bos", "eos", "unk", "sep", "pad", "cls", "mask")
# The special ids and add_* flags the reference's GGUFWriter has a key for; it skips the others (cls, prefix...).
SPECIAL_ID_KEYS = {"bos": "tokenizer.ggml.bos_token_id", "eos": "tokenizer.ggml.eos_token_id",
                   "unk": "tokenizer.ggml.unknown_token_id", "sep": "tokenizer.ggml.seperator_token_id",
                   "pad": "tokenizer.ggml.padding_token_id", "mask": "tokenizer.ggml.mask_token_id",
                   "eot": "tokenizer.ggml.eot_token_id", "eom": "tokenizer.ggml.eom_token_id"}
ADD_KEYS = {"bos": "tokenizer.ggml.add_bos_token", "eos": "tokenizer.ggml.add_eos_token",
            "sep": "tokenizer.ggml.add_sep_token"}

# --- tokenizer.ggml.pre from the pre-tokenizer's regexes -----------------------------------------------------
# The split regexes a tokenizer.json pre-tokenizer applies, in order (ByteLevel with use_regex contributes
# GPT-2's regex, Digits contributes \p{N} or \p{N}+), mapped to llama.cpp's name for that pre-tokenizer
# (src/llama-vocab.cpp). Where several llama.cpp names share the regexes, the name is decided by the one flag
# llama.cpp treats differently (tokenizer_config.json's clean_up_tokenization_spaces, when it is set), else the
# first name is used.
GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN35_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+"
                r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
TEKKEN_REGEX = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?"
                r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
GPT4O_REGEX = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m"
               r"|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re"
               r"|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
SEED_CODER_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+"
                    r"|\s*[\r\n]+|\s+(?!\S)|\s+")
BAILINGMOE_REGEX = (r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]"
                    r"|\s+(?!\S)|\s+")

# regexes -> [(name, clean_up_tokenization_spaces or None for any)], first match wins
PRE_TOKENIZERS: dict[tuple[str, ...], list[tuple[str, bool | None]]] = {
    (GPT2_REGEX,): [("gpt-2", None)],  # also phi-2, mpt, olmo, jais: same regex in llama.cpp
    (r"\p{N}", GPT2_REGEX): [("smollm", False), ("starcoder", None)],  # also refact, codeshell
    (LLAMA3_REGEX,): [("llama-bpe", None)],  # also smaug-bpe, dbrx, falcon3: same regex
    (QWEN2_REGEX,): [("qwen2", None)],  # also stablelm2, grok-2, hunyuan: same regex
    (QWEN35_REGEX,): [("qwen35", None)],
    (TEKKEN_REGEX,): [("tekken", None)],
    (GPT4O_REGEX,): [("gpt-4o", None)],  # also llama4
    (SEED_CODER_REGEX,): [("seed-coder", None)],
    (BAILINGMOE_REGEX,): [("bailingmoe", None)],
}
# slow tokenizers (vocab.json + merges.txt) have their regex in the class
SLOW_TOKENIZER_REGEXES = {"GPT2Tokenizer": (GPT2_REGEX,), "Qwen2Tokenizer": (QWEN2_REGEX,), None: (GPT2_REGEX,)}


def _pre_regexes(pre: dict | None, path: Path) -> tuple[str, ...]:
    if pre is None:
        raise ConversionError(path, "has a byte-level BPE model without a pre-tokenizer, which llama.cpp cannot "
                              "reproduce", "use the model's original tokenizer.json")
    kind = pre.get("type")
    if kind == "Sequence":
        return tuple(r for p in pre.get("pretokenizers") or [] for r in _pre_regexes(p, path))
    if kind == "ByteLevel":
        if pre.get("add_prefix_space"):
            return ("<ByteLevel add_prefix_space>",) + ((GPT2_REGEX,) if pre.get("use_regex", True) else ())
        return (GPT2_REGEX,) if pre.get("use_regex", True) else ()
    if kind == "Split":
        pattern = pre.get("pattern") or {}
        if "Regex" in pattern and pre.get("behavior") == "Isolated" and not pre.get("invert"):
            return (pattern["Regex"],)
        return (f"<Split {pattern} behavior={pre.get('behavior')} invert={pre.get('invert')}>",)
    if kind == "Digits":
        return (r"\p{N}",) if pre.get("individual_digits") else (r"\p{N}+",)
    return (f"<{kind}>",)


def recognise_pre(pre_tokenizer: dict | None, path: Path, clean_up_spaces=None) -> str:
    """llama.cpp's tokenizer.ggml.pre name for a tokenizer.json pre-tokenizer, or a ConversionError showing the
    regexes."""
    regexes = _pre_regexes(pre_tokenizer, path)
    for name, clean in PRE_TOKENIZERS.get(regexes, []):
        if clean is None or clean is clean_up_spaces:
            return name
    shown = ", ".join(f"r{r!r}" if not r.startswith("<") else r for r in regexes) or "(none)"
    raise ConversionError(path, f"its pre-tokenizer splits with {shown}, which is not in the table of "
                          "pre-tokenizers llama.cpp knows",
                          "if llama.cpp supports this tokenizer, add the regexes with llama.cpp's name for them "
                          "(tokenizer.ggml.pre; see LLAMA_VOCAB_PRE_TYPE_* in llama.cpp's src/llama-vocab.cpp) to "
                          "PRE_TOKENIZERS in scripts/hf2gguf/tokenizer.py")


# --- the neutral structure ---------------------------------------------------------------------------------
@dataclass
class Vocab:
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
            w.add_string("tokenizer.chat_template", self.chat_template)
        elif self.chat_template is not None:  # [{"name": ..., "template": ...}, ...]
            names = []
            for choice in self.chat_template:
                name = re.sub(r"[^A-Za-z0-9]", "_", choice.get("name", ""))
                if name and name != "default" and choice.get("template") is not None:
                    names.append(name)
                    w.add_string(f"tokenizer.chat_template.{name}", choice["template"])
            if names:
                w.add_array("tokenizer.chat_templates", names)
            default = next((c.get("template") for c in self.chat_template if c.get("name") == "default"), None)
            if default is not None:
                w.add_string("tokenizer.chat_template", default)
        for name, value in self.normalizer.items():
            w.add_bool(f"tokenizer.ggml.normalizer.{name}", value)
        for name, id_ in self.late_special_ids.items():
            w.add_uint32(SPECIAL_ID_KEYS[name], id_)
        if self.late_add_bos is not None:
            w.add_bool(ADD_KEYS["bos"], self.late_add_bos)
        if self.add_space_prefix is not None and not self.space_prefix_first:
            w.add_add_space_prefix(self.add_space_prefix)


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


def _malformed_is_an_error(path: Path, parse, *args):
    with malformed(path):
        return parse(*args)


def _json_if_present(path: Path) -> dict | None:
    return read_json(path) if path.is_file() else None


def _content(value) -> str | None:
    """tokenizer_config.json writes special tokens as a string or as {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def looks_special(text: str) -> bool:
    """Added tokens the reference makes CONTROL although the model does not mark them special."""
    return (text in ("<pad>", "<mask>", "<2mass>", "[@BOS@]") or (text.startswith("<|") and text.endswith("|>"))
            or (text.startswith("<\uff5c") and text.endswith("\uff5c>"))
            or (text.startswith("<unused") and text.endswith(">")))


def _check_fits(path: Path, ids, n_vocab: int) -> None:
    too_big = [i for i in ids if i >= n_vocab]
    if too_big:
        raise ConversionError(path, f"the tokenizer has ids up to {max(too_big)}, but the embedding has only "
                              f"{n_vocab} rows", "use the tokenizer that belongs to these weights")


def _rows(by_id: dict[int, str], n_vocab: int, classify) -> tuple[list[str], list[int]]:
    """One token and type per embedding row: ids without a token become [PAD<id>] (UNUSED); classify(id, text)
    gives the (token, type) of the others."""
    tokens, types = [], []
    for i in range(n_vocab):
        text = by_id.get(i)
        token, kind = (f"[PAD{i}]", T.UNUSED) if text is None else classify(i, text)
        tokens.append(token)
        types.append(int(kind))
    return tokens, types


def _refuse_duplicates(folder: Path, tokens: list[str]) -> None:
    seen: dict[str, int] = {}
    for i, t in enumerate(tokens):
        if t in seen:
            raise ConversionError(folder, f"tokens {seen[t]} and {i} are both {t!r}; llama.cpp refuses a vocabulary "
                                  "with duplicate tokens", "remove or rename one of them in the tokenizer files "
                                  "(added_tokens.json, tokenizer_config.json's added_tokens_decoder, tokenizer.json)")
        seen[t] = i


# --- special tokens, add_bos/add_eos, chat template (gguf-py's SpecialVocab) -----------------------------------
@dataclass
class _Specials:
    ids: dict[str, int] = field(default_factory=dict)
    add: dict[str, bool] = field(default_factory=dict)
    chat_template: str | list | None = None
    normalizer: dict[str, bool] = field(default_factory=dict)
    types: tuple[str, ...] = SPECIAL_TYPES
    n_vocab: int | None = None

    def set(self, name: str, id_) -> None:
        if type(id_) is not int or name in self.ids:
            return
        if id_ < 0:
            raise ValueError(f"invalid id {id_} for the {name} token")
        if self.n_vocab is None or id_ < self.n_vocab:
            self.ids[name] = id_


def _parse_normalizer(norm: dict, out: dict) -> None:
    kind = norm.get("type")
    if kind == "Lowercase":
        out["lowercase"] = True
    elif kind == "StripAccents":
        out["strip_accents"] = True
    elif kind == "BertNormalizer":
        for key, name in (("lowercase", "lowercase"), ("strip_accents", "strip_accents")):
            if key in norm:
                out[name] = norm[key]
    elif kind == "Sequence":
        for n in norm.get("normalizers", []):
            _parse_normalizer(n, out)


def _template_flags(proc: dict, tc: dict | None, sp: _Specials, found: dict) -> None:
    """TemplateProcessing: a leading special token means add_bos, a trailing one add_eos (or eot/eom)."""
    single, pair = proc.get("single", []), proc.get("pair", [])
    first = last = None
    if len(single) > 1:
        first = single[0].get("SpecialToken", {}).get("id")
        if first:
            if not tc:
                found["bos"] = first
            elif first not in (found["bos"], found["cls"]):
                if not found["bos"]:
                    tc["bos_token"] = found["bos"] = first
                if not found["cls"]:
                    tc["cls_token"] = found["cls"] = first
            sp.add["bos"] = first in (found["bos"], found["cls"])
        last = single[-1].get("SpecialToken", {}).get("id")
        if last:
            if not tc:
                found["eos"] = last
            elif last != found["eos"]:
                for extra in ("eot", "eom"):
                    if extra not in sp.types:
                        sp.types = tuple(sp.types) + (extra,)
                        tc[f"{extra}_token"] = found["eos"]
                        break
                tc["eos_token"] = found["eos"] = last
            sp.add["eos"] = last == found["eos"]
    if not pair:
        return
    start = 1 if first and pair[0].get("SpecialToken", {}).get("id") == first else 0
    stop = -1 if last and pair[-1].get("SpecialToken", {}).get("id") == last else None
    pair = pair[slice(start, stop)]
    if not pair or pair[0].get("Sequence", {}).get("id") != "A" or pair[-1].get("Sequence", {}).get("id") != "B":
        return
    middle = pair[1:-1]
    if middle:
        add_sep = False
        entry = middle[0].get("SpecialToken", {}).get("id")
        if entry in (found["sep"], found["eos"]) and not last:
            add_sep = True
        if len(middle) == 2 and middle[1].get("SpecialToken", {}).get("id") in (found["sep"], found["eos"]):
            add_sep = True
        sp.add["sep"] = add_sep
        if add_sep and not found["sep"] and tc:
            tc["sep_token"] = found["eos"]


def _special_from_tokenizer_json(tok_json: dict, tc: dict | None, sp: _Specials, load_merges: bool) -> list:
    """Normalizer flags and the post-processor's add_* flags; returns the added tokens."""
    if isinstance(tok_json.get("normalizer"), dict):
        _parse_normalizer(tok_json["normalizer"], sp.normalizer)
    added_tokens = tok_json.get("added_tokens") or []
    if not isinstance(added_tokens, list) or not all(isinstance(t, dict) for t in added_tokens):
        raise ValueError("added_tokens must be a list of objects")
    found = {k: (tc or {}).get(f"{k}_token") for k in ("bos", "cls", "eos", "sep")}
    if not found["bos"] and found["cls"] and tc:
        tc["bos_token"] = found["bos"] = found["cls"]
    if not found["eos"] and found["sep"] and tc:
        tc["eos_token"] = found["eos"] = found["sep"]
    post = tok_json.get("post_processor")
    for proc in (post.get("processors", [post]) if isinstance(post, dict) else []):
        kind = proc.get("type")
        if kind == "ByteLevel":
            sp.add.setdefault("bos", False)
            sp.add.setdefault("eos", False)
        elif kind == "RobertaProcessing":
            sp.add.update(bos=True, eos=True, sep=True)
            if not found["cls"] and tc:
                tc["cls_token"] = found["cls"] = proc.get("cls", [found["bos"]])[0]
            if not found["sep"] and tc:
                tc["sep_token"] = found["sep"] = proc.get("sep", [found["eos"]])[0]
        elif kind == "TemplateProcessing":
            _template_flags(proc, tc, sp, found)
    return added_tokens


def special_vocab(folder: Path, config: dict, n_vocab: int | None, load_merges: bool = False,
                  types: tuple[str, ...] = SPECIAL_TYPES) -> tuple[_Specials, list[str]]:
    """Special ids, add flags, chat template, normalizer flags (and merges) as SpecialVocab finds them."""
    sp, merges = _Specials(types=types, n_vocab=n_vocab), []
    tok_json_path, tc_path = folder / "tokenizer.json", folder / "tokenizer_config.json"
    tok_json = _json_if_present(tok_json_path)
    tc = _json_if_present(tc_path)
    added_tokens = []
    if tok_json is not None:
        with malformed(tok_json_path):
            added_tokens = _special_from_tokenizer_json(tok_json, tc, sp, load_merges)
            merges = _json_merges(tok_json.get("model", {}).get("merges")) if load_merges else []
    if load_merges and not merges and (folder / "merges.txt").is_file():
        merges = _merges_txt(folder / "merges.txt")
    if tc:
        template = tc["chat_template"] if "chat_template" in tc else _chat_template_file(folder)
        with malformed(tc_path):
            if isinstance(template, list) and not all(isinstance(c, dict) for c in template):
                raise ValueError("a list of chat templates must hold {name, template} objects")
            if template is None or isinstance(template, (str, list)):
                sp.chat_template = template
            for name in sp.types:
                flag = tc.get(f"add_{name}_token")
                if isinstance(flag, bool):
                    sp.add.setdefault(name, flag)
                text = _content(tc.get(f"{name}_token"))
                if text is not None:
                    sp.set(name, next((t.get("id") for t in added_tokens if t.get("content") == text), None))
    with malformed(folder / "config.json"):
        for name in sp.types:
            id_ = config.get(f"{name}_token_id")
            if id_ is None and isinstance(config.get("text_config"), dict):
                id_ = config["text_config"].get(f"{name}_token_id")
            sp.set(name, id_)
    # Last, for ids no other file gives: generation_config.json, first of a list (llama.cpp's converter does not
    # read it, and would write no such id at all).
    generation = _json_if_present(folder / "generation_config.json") or {}
    with malformed(folder / "generation_config.json"):
        for name in sp.types:
            id_ = generation.get(f"{name}_token_id")
            sp.set(name, id_[0] if isinstance(id_, list) and id_ else id_)
    return sp, merges


def _chat_template_file(folder: Path):
    jinja, as_json = folder / "chat_template.jinja", folder / "chat_template.json"
    if jinja.is_file():
        with malformed(jinja):  # not UTF-8 (a UnicodeDecodeError is a ValueError)
            template = jinja.read_text(encoding="utf-8")
        extra = sorted((folder / "additional_chat_templates").glob("*.jinja"))
        if extra:
            template = [{"name": "default", "template": template}] + [
                {"name": p.stem, "template": p.read_text(encoding="utf-8")} for p in extra]
        return template
    if as_json.is_file():
        return read_json(as_json).get("chat_template")
    return None


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


# --- SentencePiece tokenizer.model: a protobuf ModelProto, parsed by hand --------------------------------------
def _varint(data: bytes, pos: int) -> tuple[int, int]:
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


SP_NORMAL, SP_UNKNOWN, SP_CONTROL, SP_USER_DEFINED, SP_UNUSED, SP_BYTE = 1, 2, 3, 4, 5, 6


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


def _load_sentencepiece(folder: Path, n_vocab: int, config: dict, phi3: bool) -> Vocab:
    """_create_vocab_sentencepiece (phi3=False) or Phi3MiniModel.set_vocab (phi3=True) of the reference."""
    path = folder / "tokenizer.model"
    pieces = read_sentencepiece(path)
    _check_fits(path, [len(pieces) - 1], n_vocab)
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
        for text, id_ in _malformed_is_an_error(added_path, read_added, added_path).items():
            added(id_, text, None)
    tc_path = folder / "tokenizer_config.json"
    tc = _json_if_present(tc_path) or {}
    entries = _malformed_is_an_error(tc_path, _added_tokens, tc.get("added_tokens_decoder") or {})
    if phi3 and (folder / "tokenizer.json").is_file():
        tok_json = read_json(folder / "tokenizer.json")
        entries += _malformed_is_an_error(folder / "tokenizer.json", _added_tokens, tok_json.get("added_tokens") or [])
    for id_, text, special in entries:
        added(id_, text, special)
    sp, _ = special_vocab(folder, config, n_vocab)
    _refuse_duplicates(folder, tokens)
    return Vocab("llama", "default", tokens, types, [], scores, sp.ids, sp.add, sp.chat_template, sp.normalizer)


def _added_tokens(entries) -> list[tuple[int, str, bool]]:
    """tokenizer.json's added_tokens list, or tokenizer_config.json's added_tokens_decoder mapping."""
    items = entries.items() if isinstance(entries, dict) else ((t["id"], t) for t in entries)
    out = []
    for id_, t in items:
        id_ = int(id_)
        if id_ < 0 or not isinstance(t["content"], str):
            raise ValueError(f"bad added token {t!r}")
        out.append((id_, t["content"], bool(t.get("special"))))
    return out


# --- tokenizer.json BPE with byte fallback (gguf-py's LlamaHfVocab) --------------------------------------------
BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def _is_llama_hf(tok_json: dict) -> bool:
    model = tok_json.get("model") or {}
    return (model.get("type") == "BPE" and bool(model.get("byte_fallback"))
            and (tok_json.get("decoder") or {}).get("type") == "Sequence")


def _load_llama_hf(folder: Path, n_vocab: int, config: dict) -> Vocab:
    path = folder / "tokenizer.json"

    def parse(tok_json: dict):
        base = _checked_vocab(tok_json["model"]["vocab"])
        added = _added_tokens(tok_json.get("added_tokens") or [])
        return base, added

    tok_json = read_json(path)
    base, added = _malformed_is_an_error(path, parse, tok_json)
    tc = _json_if_present(folder / "tokenizer_config.json") or {}
    stm = _json_if_present(folder / "special_tokens_map.json") or {}
    # transformers' all_special_tokens: the named special tokens and additional_special_tokens
    named = [_content(tc.get(f"{k}_token", stm.get(f"{k}_token"))) for k in SPECIAL_TYPES]
    extra = tc.get("additional_special_tokens", stm.get("additional_special_tokens")) or []
    everything = {**base, **{text: id_ for id_, text, _ in added}}
    special_ids = {everything[t] for t in named + [_content(e) for e in extra] if t in everything}
    n_base = len(base)
    by_id = {i: t for t, i in base.items()}
    for id_, text, _ in added:
        if id_ >= n_base:
            by_id[id_] = text
    _check_fits(path, by_id, n_vocab)

    def classify(i: int, text: str):
        if i >= n_base:
            return text, T.CONTROL if i in special_ids else T.USER_DEFINED
        if BYTE_TOKEN.fullmatch(text):
            return text, T.BYTE
        return text, T.CONTROL if i in special_ids else T.NORMAL

    tokens, types = _rows(by_id, n_vocab, classify)
    scores = [-1000.0 if i in by_id else -10000.0 for i in range(n_vocab)]
    sp, _ = special_vocab(folder, config, n_vocab)
    _refuse_duplicates(folder, tokens)
    return Vocab("llama", "default", tokens, types, [], scores, sp.ids, sp.add, sp.chat_template, sp.normalizer)


# --- byte-level BPE (the reference's get_vocab_base + SpecialVocab(load_merges=True)) -------------------------
def _checked_vocab(vocab) -> dict[str, int]:
    if not isinstance(vocab, dict) or not all(isinstance(s, str) and type(i) is int and i >= 0
                                              for s, i in vocab.items()):
        raise ValueError("the vocabulary must map token strings to ids >= 0")
    return vocab


def _load_gpt2(folder: Path, n_vocab: int, config: dict) -> Vocab:
    tok_json_path, tc_path = folder / "tokenizer.json", folder / "tokenizer_config.json"
    tc = _json_if_present(tc_path) or {}
    if tok_json_path.is_file():
        tok_json = read_json(tok_json_path)

        def parse(data):
            model = data["model"]
            if model.get("type", "BPE") != "BPE" or "merges" not in model:
                raise ConversionError(tok_json_path, f"holds a {model.get('type')} model; a byte-level BPE model "
                                      "(or tokenizer.model) is needed", "use the model's original tokenizer files")
            return _checked_vocab(model["vocab"]), _added_tokens(data.get("added_tokens") or [])

        vocab, added = _malformed_is_an_error(tok_json_path, parse, tok_json)
        with malformed(tok_json_path):
            pre = recognise_pre(tok_json.get("pre_tokenizer"), tok_json_path, tc.get("clean_up_tokenization_spaces"))
    elif (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        vocab = _malformed_is_an_error(folder / "vocab.json", _checked_vocab, read_json(folder / "vocab.json"))
        added = []
        if (folder / "added_tokens.json").is_file():
            extra = read_json(folder / "added_tokens.json")
            added = [(i, t, False) for t, i in extra.items() if type(i) is int]
        cls = tc.get("tokenizer_class")
        if cls not in SLOW_TOKENIZER_REGEXES:
            raise ConversionError(folder / "vocab.json", f"comes without tokenizer.json, and its pre-tokenizer "
                                  f"({cls}) cannot be told from vocab.json and merges.txt",
                                  "add the model's tokenizer.json")
        pre = next(n for n, _ in PRE_TOKENIZERS[SLOW_TOKENIZER_REGEXES[cls]])
    else:
        raise ConversionError(folder, "has no tokenizer (tokenizer.json, or vocab.json with merges.txt)",
                              "download the model's tokenizer files into the folder")

    decoder = _malformed_is_an_error(tc_path, _added_tokens, tc.get("added_tokens_decoder") or {})
    known = {i for i, _, _ in added}
    added += [e for e in decoder if e[0] not in known]  # transformers adds them too
    # transformers' tokenizer.vocab: the model's vocabulary, updated with the added tokens
    everything = {**vocab, **{text: id_ for id_, text, _ in added}}
    by_id = {i: t for t, i in everything.items()}
    _check_fits(folder, by_id, n_vocab)
    special = {text: sp for _, text, sp in added}

    def classify(i: int, text: str):
        if text not in special:
            return text, T.NORMAL
        if special[text] or looks_special(text):
            return text, T.CONTROL
        return text.replace("\u2581", " "), T.USER_DEFINED

    tokens, types = _rows(by_id, n_vocab, classify)
    sp, merges = special_vocab(folder, config, None, load_merges=True)
    for name, id_ in sp.ids.items():
        if id_ >= n_vocab:
            raise ConversionError(folder / "config.json", f"{name}_token_id {id_} is not a token id "
                                  f"(0..{n_vocab - 1})", "use the config.json that belongs to these weights")
    _refuse_duplicates(folder, tokens)
    return Vocab("gpt2", pre, tokens, types, merges, None, sp.ids, sp.add, sp.chat_template, sp.normalizer)


# --- the entry point ---------------------------------------------------------------------------------------
KINDS = ("sentencepiece", "phi3", "llama_hf", "gpt2")


def _first_kind(folder: Path, n_vocab: int, config: dict, kinds, tc: dict) -> Vocab | None:
    tok_json_path = folder / "tokenizer.json"
    for kind in kinds:
        if kind == "phi3" and tc.get("tokenizer_class") == "GPT2Tokenizer":  # Phi-4
            return _load_gpt2(folder, n_vocab, config)
        if kind in ("sentencepiece", "phi3") and (folder / "tokenizer.model").is_file():
            return _load_sentencepiece(folder, n_vocab, config, phi3=kind == "phi3")
        if kind == "llama_hf" and tok_json_path.is_file() and _malformed_is_an_error(
                tok_json_path, _is_llama_hf, read_json(tok_json_path)):
            return _load_llama_hf(folder, n_vocab, config)
        if kind == "gpt2" and (tok_json_path.is_file() or (folder / "vocab.json").is_file()):
            return _load_gpt2(folder, n_vocab, config)
    return None


def load_vocab(folder: Path, n_vocab: int, config: dict, *,
               kinds: tuple[str, ...] = ("sentencepiece", "llama_hf", "gpt2"),
               space_prefix_from_config: bool = False, add_space_prefix: bool | None = None,
               extra_special_ids: dict[str, int] | None = None, add_bos: bool | None = None) -> Vocab:
    """The tokenizer of the model folder, with one token per embedding row (n_vocab); ids that no token uses
    become [PAD<id>] (UNUSED).

    kinds: the tokenizer kinds to try, in order, as the reference architecture's set_vocab does:
      "sentencepiece"  tokenizer.model (_set_vocab_sentencepiece)
      "phi3"           tokenizer.model with Phi-3's added-token rules; a GPT2Tokenizer folder goes to "gpt2"
      "llama_hf"       tokenizer.json BPE with byte fallback (_set_vocab_llama_hf): scores -1000, <0xNN> BYTE
      "gpt2"           byte-level BPE tokenizer.json or vocab.json + merges.txt (_set_vocab_gpt2)
    The reference architectures read their tokenizers as:
      Llama, Mistral (LlamaModel)  the default kinds, space_prefix_from_config=True; vocab_size 32016 (CodeLlama):
                                   extra_special_ids={"eot": 32010}; vocab_size 49152 (Granite): add_bos=False
      Qwen2, Qwen3                 kinds=("sentencepiece", "gpt2")
      Gemma                        kinds=("sentencepiece",), add_space_prefix=False, extra_special_ids={"eot": 107}
      Gemma2                       kinds=("sentencepiece",), add_space_prefix=False
      Phi3                         kinds=("phi3",)
      GPT-2                        kinds=("gpt2",)
    space_prefix_from_config: write tokenizer_config.json's add_prefix_space as add_space_prefix, first
      (LlamaModel does, for Llama and Mistral).
    add_space_prefix: write add_space_prefix with this value after the vocabulary (Gemma, Gemma2: False).
    extra_special_ids: special ids to add when the files name none for that type, written after the chat
      template as the reference's second SpecialVocab does: {"eot": 107} for Gemma, {"eot": 32010} for
      CodeLlama (LlamaModel, when vocab_size is 32016). Types without a GGUF key are ignored, as b11312's
      writer ignores the reference's prefix/suffix/middle/fsep ids; so are ids beyond the embedding.
    add_bos: override add_bos_token (LlamaModel: False when vocab_size is 49152, Granite's small models).
    """
    folder = Path(folder)
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ValueError(f"unknown tokenizer kinds {unknown}; known: {KINDS}")
    tc = _json_if_present(folder / "tokenizer_config.json") or {}
    with malformed(folder):  # a last resort: the loaders name the file where they can
        vocab = _first_kind(folder, n_vocab, config, kinds, tc)
    if vocab is None:
        wanted = {"sentencepiece": "tokenizer.model", "phi3": "tokenizer.model",
                  "llama_hf": "tokenizer.json (BPE with byte fallback)",
                  "gpt2": "tokenizer.json, or vocab.json with merges.txt"}
        raise ConversionError(folder, f"has no tokenizer ({'; '.join(dict.fromkeys(wanted[k] for k in kinds))})",
                              "download the model's tokenizer files into the folder")
    if space_prefix_from_config and isinstance(tc.get("add_prefix_space"), bool):
        vocab.add_space_prefix, vocab.space_prefix_first = tc["add_prefix_space"], True
    for name, id_ in (extra_special_ids or {}).items():
        if name in SPECIAL_ID_KEYS and name not in vocab.special_ids and 0 <= id_ < n_vocab:
            vocab.late_special_ids[name] = id_
    if add_bos is not None:  # where the files set add_bos, the reference overwrites it in place
        if "bos" in vocab.add_special:
            vocab.add_special["bos"] = add_bos
        else:
            vocab.late_add_bos = add_bos
    if add_space_prefix is not None:
        vocab.add_space_prefix, vocab.space_prefix_first = add_space_prefix, False
    return vocab

