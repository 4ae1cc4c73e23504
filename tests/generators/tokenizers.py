"""Hugging Face tokenizer files rebuilt from llama.cpp's vocab-only GGUFs (models/ggml-vocab-<name>.gguf).

Dev/test only. llama.cpp made those GGUFs with its own converter from the real models' tokenizers; this module
turns them back into the files those models ship (tokenizer.json, tokenizer.model, tokenizer_config.json,
special_tokens_map.json, added_tokens.json), with the real models' pre-tokenizers, normalizers, decoders and
special tokens, so that both our converter and llama.cpp's convert_hf_to_gguf.py can read them.

    write_tokenizer("llama-bpe", folder)  -> 128256 (the embedding rows a model using it needs)
    config_json("llama-bpe")              -> the tokenizer-related fields of the real model's config.json
"""
from __future__ import annotations

import json
import struct
import sys
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import llama_toolchain  # noqa: E402

VOCABS: tuple[str, ...] = ("gpt-2", "llama-bpe", "qwen2", "llama-spm", "phi-3")

# gguf.TokenType values
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


def vocab_gguf(name: str) -> Path:
    if name not in SPECS:
        raise KeyError(f"unknown vocabulary {name!r}; known: {', '.join(VOCABS)}")
    source = SPECS[name].get("source", name)  # a real model's tokenizer made from another's vocabulary
    return llama_toolchain.extract_source(llama_toolchain.cache_root()) / "models" / f"ggml-vocab-{source}.gguf"


def test_strings(name: str) -> list[tuple[str, list[int]]]:
    """The .inp strings and the .out token ids llama.cpp's tests expect for them (without BOS)."""
    path = vocab_gguf(name)
    raw = path.with_name(path.name + ".inp").read_bytes().decode("utf-8")
    texts = raw.split("\n__ggml_vocab_test__\n")
    if texts[-1] == "":  # the file ends with a separator, as llama.cpp's tests/test-tokenizer-0 expects
        texts.pop()
    lines = path.with_name(path.name + ".out").read_bytes().decode("utf-8").split("\n")
    expected = [[int(t) for t in line.split()] for line in lines[: len(texts)]]
    return list(zip(texts, expected))


# --- a fast GGUF KV reader (gguf.GGUFReader takes ~10 s on a 280k-merge file) -------------------------------
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


@lru_cache(maxsize=16)
def read_kv(path: Path) -> dict:
    """Every KV pair of a GGUF file: {key: value}; arrays become lists, strings str."""
    data = Path(path).read_bytes()
    if data[:4] != b"GGUF":
        raise ValueError(f"{path} is not a GGUF file")
    pos = 8 + 8  # magic, version, tensor count
    (n_kv,) = struct.unpack_from("<Q", data, pos)
    pos += 8

    def string(p):
        (n,) = struct.unpack_from("<Q", data, p)
        return data[p + 8:p + 8 + n].decode("utf-8"), p + 8 + n

    def value(t, p):
        if t == 8:
            return string(p)
        if t == 9:
            et, count = struct.unpack_from("<IQ", data, p)
            p += 12
            if et in _SCALARS and et != 7:
                fmt = _SCALARS[et]
                size = struct.calcsize(fmt)
                items = list(struct.unpack_from(f"<{count}{fmt[1]}", data, p))
                return items, p + size * count
            items = []
            for _ in range(count):
                v, p = value(et, p)
                items.append(v)
            return items, p
        fmt = _SCALARS[t]
        return struct.unpack_from(fmt, data, p)[0], p + struct.calcsize(fmt)

    kv = {}
    for _ in range(n_kv):
        key, pos = string(pos)
        (t,) = struct.unpack_from("<I", data, pos)
        kv[key], pos = value(t, pos + 4)
    return kv


# --- what the real models ship -------------------------------------------------------------------------------
def _split(regex: str) -> dict:
    return {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False}


def _byte_level(add_prefix_space=False, trim_offsets=True, use_regex=True) -> dict:
    return {"type": "ByteLevel", "add_prefix_space": add_prefix_space, "trim_offsets": trim_offsets,
            "use_regex": use_regex}


LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def _bos_template(bos: str, bos_id: int) -> dict:
    return {"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]}}}


SPM_NORMALIZER = {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "\u2581"},
                                                      {"type": "Replace", "pattern": {"String": " "},
                                                       "content": "\u2581"}]}
SPM_DECODER = {"type": "Sequence", "decoders": [
    {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "}, {"type": "ByteFallback"},
    {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}

SPECS = {
    # openai-community/gpt2
    "gpt-2": dict(
        kind="bpe", specials_in_vocab=True, normalized=True,
        normalizer=None, pre_tokenizer=_byte_level(), post_processor=_byte_level(True, False),
        decoder=_byte_level(True, True), model_extra={"continuing_subword_prefix": "", "end_of_word_suffix": ""},
        tokenizer_config={"tokenizer_class": "GPT2Tokenizer", "bos_token": "<|endoftext|>",
                          "eos_token": "<|endoftext|>", "add_prefix_space": False,
                          "model_max_length": 1024},
        config={"bos_token_id": 50256, "eos_token_id": 50256}),
    # meta-llama/Meta-Llama-3-8B
    "llama-bpe": dict(
        kind="bpe", specials_in_vocab=False, normalized=False,
        normalizer=None,
        pre_tokenizer={"type": "Sequence", "pretokenizers": [_split(LLAMA3_REGEX),
                                                             _byte_level(use_regex=False)]},
        post_processor={"type": "Sequence", "processors": [_byte_level(True, False),
                                                           _bos_template("<|begin_of_text|>", 128000)]},
        decoder=_byte_level(True, True),
        model_extra={"continuing_subword_prefix": None, "end_of_word_suffix": None, "ignore_merges": True},
        tokenizer_config={"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|begin_of_text|>",
                          "eos_token": "<|end_of_text|>", "clean_up_tokenization_spaces": True,
                          "model_input_names": ["input_ids", "attention_mask"],
                          "model_max_length": 1000000000000000019884624838656},
        config={"bos_token_id": 128000, "eos_token_id": 128001}),
    # Qwen/Qwen1.5-7B
    "qwen2": dict(
        kind="bpe", specials_in_vocab=False, normalized=False,
        normalizer={"type": "NFC"},
        pre_tokenizer={"type": "Sequence", "pretokenizers": [_split(QWEN2_REGEX),
                                                             _byte_level(False, False, False)]},
        post_processor=_byte_level(False, False, False), decoder=_byte_level(False, False, False),
        model_extra={"continuing_subword_prefix": "", "end_of_word_suffix": ""},
        tokenizer_config={"tokenizer_class": "Qwen2Tokenizer", "bos_token": None, "eos_token": "<|endoftext|>",
                          "pad_token": "<|endoftext|>", "unk_token": None, "add_prefix_space": False,
                          "additional_special_tokens": ["<|im_start|>", "<|im_end|>"], "errors": "replace",
                          "clean_up_tokenization_spaces": False, "split_special_tokens": False,
                          "model_max_length": 32768},
        config={"bos_token_id": 151643, "eos_token_id": 151643}),
    # meta-llama/Llama-2-7b-hf (its tokenizer_config.json before added_tokens_decoder was written)
    "llama-spm": dict(
        kind="spm", sp_size=32000, sp_types={0: UNKNOWN, 1: CONTROL, 2: CONTROL}, write_decoder=False,
        tokenizer_config={"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>",
                          "unk_token": "<unk>", "pad_token": None, "add_bos_token": True, "add_eos_token": False,
                          "clean_up_tokenization_spaces": False, "legacy": False, "sp_model_kwargs": {},
                          "model_max_length": 1000000000000000019884624838656},
        config={"bos_token_id": 1, "eos_token_id": 2}),
    # microsoft/Phi-3-mini-4k-instruct
    "phi-3": dict(
        kind="spm", sp_size=32000, sp_types={0: UNKNOWN, 1: CONTROL, 2: CONTROL}, write_decoder=True,
        tokenizer_config={"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "<|endoftext|>",
                          "unk_token": "<unk>", "pad_token": "<|endoftext|>", "add_bos_token": True,
                          "add_eos_token": False, "clean_up_tokenization_spaces": False, "legacy": False,
                          "padding_side": "left", "sp_model_kwargs": {}, "use_default_system_prompt": False,
                          "model_max_length": 4096},
        config={"bos_token_id": 1, "eos_token_id": 32000, "pad_token_id": 32000}),
}
# bigcode/starcoder2-3b (also StarCoder, SmolLM): single digits, then GPT-2's byte-level regex
SPECS["starcoder"] = dict(
    kind="bpe", specials_in_vocab=True, normalized=False,
    normalizer=None,
    pre_tokenizer={"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True},
                                                         _byte_level()]},
    post_processor=_byte_level(False, False), decoder=_byte_level(False, True),
    model_extra={"continuing_subword_prefix": None, "end_of_word_suffix": None},
    tokenizer_config={"tokenizer_class": "GPT2Tokenizer", "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
                      "unk_token": "<|endoftext|>", "add_prefix_space": False, "clean_up_tokenization_spaces": True,
                      "model_max_length": 1000000000000000019884624838656, "vocab_size": 49152},
    config={"bos_token_id": 0, "eos_token_id": 0})
# EleutherAI/gpt-neox-20b, as Pythia, StableLM 3B 4E1T and MPT ship it (llama.cpp's test vocabulary is MPT's)
SPECS["mpt"] = dict(
    kind="bpe", specials_in_vocab=True, normalized=True,
    normalizer={"type": "NFC"},
    pre_tokenizer={"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True},
    post_processor={"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True},
    decoder={"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True},
    model_extra={"continuing_subword_prefix": None, "end_of_word_suffix": None},
    tokenizer_config={"tokenizer_class": "GPTNeoXTokenizer", "bos_token": "<|endoftext|>",
                      "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "add_prefix_space": False},
    config={"bos_token_id": 0, "eos_token_id": 0})
# CohereForAI/c4ai-command-r-v01 (also Aya 23): single digits, then GPT-2's byte-level regex; three named chat
# templates
SPECS["command-r"] = dict(
    kind="bpe", specials_in_vocab=True, normalized=False,
    normalizer={"type": "NFC"},
    pre_tokenizer={"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True},
                                                         _byte_level()]},
    post_processor=_bos_template("<BOS_TOKEN>", 5), decoder=_byte_level(True, True),
    model_extra={"continuing_subword_prefix": None, "end_of_word_suffix": None},
    tokenizer_config={"tokenizer_class": "CohereTokenizer", "bos_token": "<BOS_TOKEN>",
                      "eos_token": "<|END_OF_TURN_TOKEN|>", "pad_token": "<PAD>", "unk_token": None,
                      "add_bos_token": True, "add_eos_token": False, "clean_up_tokenization_spaces": False,
                      "legacy": True, "sp_model_kwargs": {}, "spaces_between_special_tokens": False,
                      "use_default_system_prompt": False},
    config={"bos_token_id": 5, "eos_token_id": 255001, "pad_token_id": 0})
# Tokenizers of real models built from another model's vocabulary ("source"): the same normal tokens and merges,
# with special tokens renamed ("renamed") or added after the source's ("added"; after its first "keep" tokens, where
# set), and embedding rows beyond the tokens ("n_vocab", as the release pads them). Not in VOCABS: llama.cpp's test
# strings are the source's.
GLM4_SPECIALS = ["<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>", "<|system|>", "<|user|>",
                 "<|assistant|>", "<|observation|>", "<|begin_of_image|>", "<|end_of_image|>", "<|begin_of_video|>",
                 "<|end_of_video|>"]
GLM4_TEMPLATE = ("[gMASK]<sop>{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
SPECS |= {
    # ibm-granite/granite-3.3-2b-instruct: StarCoder's vocabulary, token 0 renamed, role and citation tokens added
    "granite": dict(
        source="starcoder", kind="bpe", specials_in_vocab=True, normalized=False,
        renamed={0: "<|end_of_text|>"},
        added=["<|start_of_role|>", "<|end_of_role|>", "<|tool_call|>", "<|start_of_cite|>", "<|end_of_cite|>",
               "<|start_of_plugin|>", "<|end_of_plugin|>"],
        normalizer=None, pre_tokenizer={"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True}, _byte_level()]},
        post_processor=_byte_level(False, False), decoder=_byte_level(False, True),
        model_extra={"continuing_subword_prefix": None, "end_of_word_suffix": None},
        tokenizer_config={"tokenizer_class": "GPT2Tokenizer", "bos_token": "<|end_of_text|>",
                          "eos_token": "<|end_of_text|>", "unk_token": "<|end_of_text|>",
                          "pad_token": "<|end_of_text|>", "add_bos_token": False, "add_prefix_space": False,
                          "clean_up_tokenization_spaces": True, "model_max_length": 9223372036854775807,
                          "padding_side": "left"},
        config={"bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0}),
    # THUDM/GLM-4-9B-0414: a byte-level BPE of about 151k tokens, its special tokens right after them, no BOS, and
    # embedding rows beyond. llama.cpp's converter names the pre-tokenizer by hashing how the vocabulary splits a
    # text, and without GLM-4's own vocabulary no fixture can give its hash (glm4). Qwen 2's vocabulary (same size,
    # a split regex that differs from GLM-4's in digits only) gives a known one, qwen2, which the model_type glm4
    # does not change
    "glm4": dict(
        SPECS["qwen2"], source="qwen2", keep=151643, added=GLM4_SPECIALS, n_vocab=151680,
        chat_template=GLM4_TEMPLATE,
        tokenizer_config={"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>",
                          "pad_token": "<|endoftext|>", "clean_up_tokenization_spaces": False,
                          "do_lower_case": False, "remove_space": False,
                          "model_input_names": ["input_ids", "attention_mask"], "model_max_length": 128000,
                          "padding_side": "left"},
        config={"eos_token_id": [151643, 151650, 151652], "pad_token_id": 151643}),
}


# microsoft/phi-2: CodeGen's tokenizer, GPT-2's vocabulary and, as added (not special) tokens, runs of 31 to 2 spaces
# and of 9 to 2 tabs; 51200 embedding rows. llama.cpp's converter recognises it by its hash (phi-2)
SPECS["phi-2"] = dict(
    SPECS["gpt-2"], source="gpt-2", added=[" " * n for n in range(31, 1, -1)] + ["\t" * n for n in range(9, 1, -1)],
    added_type=USER_DEFINED, n_vocab=51200,
    tokenizer_config={"tokenizer_class": "CodeGenTokenizer", "bos_token": "<|endoftext|>",
                      "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "add_prefix_space": False,
                      "clean_up_tokenization_spaces": True, "model_max_length": 2048})


def config_json(name: str) -> dict:
    """The tokenizer-related fields of the real model's config.json (special ids, vocab_size): merge them into a
    fixture's config.json, since llama.cpp's converter reads special ids from there too."""
    return {**SPECS[name]["config"], "vocab_size": _n_vocab(name, _derived_kv(name))}


def _n_vocab(name: str, kv: dict) -> int:
    return SPECS[name].get("n_vocab", len(kv["tokenizer.ggml.tokens"]))


def _derived_kv(name: str) -> dict:
    """The source vocabulary's KVs with the spec's renamed and added special tokens (and its chat template)."""
    spec, kv = SPECS[name], read_kv(vocab_gguf(name))
    if not {"renamed", "added", "chat_template"} & spec.keys():
        return kv
    keep = spec.get("keep", len(kv["tokenizer.ggml.tokens"]))  # the source's tokens up to its special ones
    tokens = list(kv["tokenizer.ggml.tokens"][:keep])
    for i, text in spec.get("renamed", {}).items():
        tokens[i] = text
    added = spec.get("added", [])
    kv = kv | {"tokenizer.ggml.tokens": tokens + added,
               "tokenizer.ggml.token_type": list(kv["tokenizer.ggml.token_type"][:keep])
               + [spec.get("added_type", CONTROL)] * len(added)}
    if "chat_template" in spec:
        kv["tokenizer.chat_template"] = spec["chat_template"]
    return kv


def _write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _added_token(id_: int, content: str, special: bool, normalized: bool) -> dict:
    return {"id": id_, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": normalized, "special": special}


def _special_tokens_map(tok_config: dict) -> dict:
    out = {k: v for k, v in tok_config.items()
           if (k.endswith("_token") and not k.startswith("add_") and v is not None)
           or k == "additional_special_tokens"}
    return out


def _write_config_files(dest: Path, spec: dict, kv: dict, added: dict[int, dict]) -> None:
    tok_config = dict(spec["tokenizer_config"])
    if added and spec.get("added_tokens_decoder", True):
        tok_config["added_tokens_decoder"] = {str(i): {k: v for k, v in t.items() if k != "id"}
                                              for i, t in sorted(added.items())}
    if "tokenizer.chat_template" in kv:
        tok_config["chat_template"] = kv["tokenizer.chat_template"]
    named = {k.removeprefix("tokenizer.chat_template."): v for k, v in kv.items()
             if k.startswith("tokenizer.chat_template.")}
    if named:  # a list of named templates, as Command-R's
        tok_config["chat_template"] = [{"name": "default", "template": tok_config["chat_template"]}] + \
            [{"name": k, "template": v} for k, v in named.items()]
    _write_json(dest / "tokenizer_config.json", tok_config)
    _write_json(dest / "special_tokens_map.json", _special_tokens_map(spec["tokenizer_config"]))


def _write_bpe(dest: Path, spec: dict, kv: dict) -> None:
    tokens, types = kv["tokenizer.ggml.tokens"], kv["tokenizer.ggml.token_type"]
    vocab, added = {}, {}
    for i, (t, ty) in enumerate(zip(tokens, types)):
        if t == f"[PAD{i}]":  # a converter's filler for an embedding row without a token (older ones typed it
            continue  # USER_DEFINED): not part of the real tokenizer
        if ty in (CONTROL, USER_DEFINED):
            added[i] = _added_token(i, t, ty == CONTROL, spec["normalized"])
            if spec["specials_in_vocab"]:
                vocab[t] = i
        elif ty == NORMAL:
            vocab[t] = i
        elif ty != UNUSED:
            raise ValueError(f"token {i} {t!r} has type {ty}, which a byte-level BPE vocabulary does not have")
    model = {"type": "BPE", "dropout": None, "unk_token": None, **spec["model_extra"], "fuse_unk": False,
             "byte_fallback": False, "vocab": vocab, "merges": kv["tokenizer.ggml.merges"]}
    data = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": list(added.values()),
            "normalizer": spec["normalizer"], "pre_tokenizer": spec["pre_tokenizer"],
            "post_processor": spec["post_processor"], "decoder": spec["decoder"], "model": model}
    _write_json(dest / "tokenizer.json", data)
    _write_config_files(dest, {**spec, "added_tokens_decoder": spec["tokenizer_config"]["tokenizer_class"]
                               != "GPT2Tokenizer"}, kv, added)


# --- SentencePiece: tokenizer.model is a protobuf (ModelProto); written by hand -------------------------------
def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field(number: int, wire: int, payload: bytes) -> bytes:
    return _varint(number << 3 | wire) + payload


def _int(number: int, value: int) -> bytes:
    return _field(number, 0, _varint(value))


def _bytes(number: int, value: bytes) -> bytes:
    return _field(number, 2, _varint(len(value)) + value)


def sentencepiece_model(pieces: list[tuple[str, float, int]], unk_id=0, bos_id=1, eos_id=2) -> bytes:
    """A BPE ModelProto with byte fallback, as Llama 2's tokenizer.model (pieces: text, score, type)."""
    out = bytearray()
    for text, score, ty in pieces:
        body = _bytes(1, text.encode("utf-8")) + _field(2, 5, struct.pack("<f", score))
        if ty != NORMAL:  # NORMAL is the default
            body += _int(3, ty)
        out += _bytes(1, body)
    trainer = (_int(3, 2) + _int(4, len(pieces)) + _int(25, 1) + _int(35, 1) + _int(40, unk_id) + _int(41, bos_id)
               + _int(42, eos_id) + _int(43, -1) + _bytes(44, " \u2047 ".encode()))
    normalizer = _bytes(1, b"identity") + _bytes(2, b"") + _int(3, 1) + _int(4, 0) + _int(5, 1)
    out += _bytes(2, trainer) + _bytes(3, normalizer)
    return bytes(out)


def spm_merges(vocab: dict[str, int], scores: dict[str, float]) -> list[str]:
    """Merges of a SentencePiece BPE model, the way transformers' converter derives them: every split of a
    piece into two pieces, ordered by the merged piece's score (higher first), then by the parts' ids."""
    merges = []
    for piece, score in scores.items():
        local = [(piece[:i], piece[i:]) for i in range(1, len(piece)) if piece[:i] in vocab and piece[i:] in vocab]
        local.sort(key=lambda lr: (vocab[lr[0]], vocab[lr[1]]))
        merges.extend((score, vocab[piece], f"{l} {r}") for l, r in local)
    merges.sort(key=lambda m: (-m[0], m[1]))
    return [m for _, _, m in merges]


def _write_spm(dest: Path, spec: dict, kv: dict) -> None:
    tokens, types = kv["tokenizer.ggml.tokens"], kv["tokenizer.ggml.token_type"]
    scores = kv["tokenizer.ggml.scores"]
    n_sp = spec["sp_size"]
    pieces = []
    for i in range(n_sp):
        if i in spec["sp_types"]:  # converters overwrite these from tokenizer_config.json: restore the original
            pieces.append((tokens[i], 0.0, spec["sp_types"][i]))
        elif types[i] in (NORMAL, BYTE):
            pieces.append((tokens[i], scores[i], types[i]))
        else:
            raise ValueError(f"token {i} {tokens[i]!r} has type {types[i]}, not expected in tokenizer.model")
    (dest / "tokenizer.model").write_bytes(sentencepiece_model(pieces))

    added, extra = {}, {}
    for i in sorted(spec["sp_types"]):
        added[i] = _added_token(i, tokens[i], types[i] != USER_DEFINED, False)
    for i in range(n_sp, len(tokens)):
        if types[i] in (CONTROL, USER_DEFINED):
            added[i] = _added_token(i, tokens[i], types[i] == CONTROL, False)
            extra[tokens[i]] = i
        elif not (tokens[i] == f"[PAD{i}]" and types[i] in (UNUSED, UNKNOWN)):  # older converters wrote UNKNOWN
            raise ValueError(f"token {i} {tokens[i]!r} beyond tokenizer.model has type {types[i]}")
    if extra:
        _write_json(dest / "added_tokens.json", extra)

    vocab = {p[0]: i for i, p in enumerate(pieces)}
    normal = {p[0]: p[1] for p in pieces if p[2] == NORMAL}
    bos = spec["tokenizer_config"]["bos_token"]
    model = {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
             "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
             "vocab": vocab, "merges": spm_merges(vocab, normal)}
    data = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": list(added.values()),
            "normalizer": SPM_NORMALIZER, "pre_tokenizer": None,
            "post_processor": _bos_template(bos, vocab[bos]), "decoder": SPM_DECODER, "model": model}
    _write_json(dest / "tokenizer.json", data)
    _write_config_files(dest, {**spec, "added_tokens_decoder": spec["write_decoder"]}, kv, added)


def write_tokenizer(name: str, dest: Path) -> int:
    """Writes the Hugging Face tokenizer files rebuilt from ggml-vocab-<name>.gguf into dest (tokenizer.json for
    BPE vocabularies; tokenizer.model, tokenizer.json and, where the real model has one, added_tokens.json for
    SentencePiece ones; always tokenizer_config.json with the special tokens, add_bos_token/add_eos_token where
    the real model sets them and its chat_template, and special_tokens_map.json). Returns the number of tokens
    (the embedding rows a model using it needs)."""
    spec = SPECS[name]
    kv = _derived_kv(name)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    (_write_bpe if spec["kind"] == "bpe" else _write_spm)(dest, spec, kv)
    return _n_vocab(name, kv)
