"""Tokenizers, parsed once into a neutral structure (Vocab) that every architecture shares.

load_vocab() reads a Hugging Face model folder the way llama.cpp's convert_hf_to_gguf.py (b11312) does, without
transformers or sentencepiece, and dispatches to one module per tokenizer kind:

* sentencepiece.py: tokenizer.model (SentencePiece, parsed here) -> tokenizer.ggml.model "llama": Llama 1/2,
  Mistral v0.1, Gemma, Phi-3;
* bpe.py: tokenizer.json BPE with byte fallback (a SentencePiece model saved by transformers) -> "llama"; and
  byte-level BPE tokenizer.json, or vocab.json + merges.txt -> "gpt2", with tokenizer.ggml.pre recognised from
  the pre-tokenizer's regexes by the table in pretokenizers.py;
* special.py: special token ids, add_bos/add_eos and the chat template, from tokenizer.json, tokenizer_config.json
  (or chat_template.jinja/.json) and config.json, with the precedence of gguf-py's SpecialVocab;
* vocab.py: Vocab, and how it is written to a GGUF (with gguf-py's key names);
* files.py: reading the tokenizer files, with one error naming any malformed one.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import ConversionError
from ..source import read_json
from .bpe import is_llama_hf, load_gpt2, load_llama_hf
from .files import json_if_present, malformed, parse_or_fail
from .pretokenizers import PRE_TOKENIZERS, recognise_pre
from .sentencepiece import load_sentencepiece, read_sentencepiece
from .special import SPECIAL_TYPES, special_vocab
from .vocab import ADD_KEYS, SPECIAL_ID_KEYS, Vocab, looks_special

__all__ = ["ADD_KEYS", "KINDS", "PRE_TOKENIZERS", "SPECIAL_ID_KEYS", "SPECIAL_TYPES", "Vocab", "load_vocab",
           "looks_special", "malformed", "read_sentencepiece", "recognise_pre", "special_vocab"]

KINDS = ("sentencepiece", "phi3", "llama_hf", "gpt2")


def _first_kind(folder: Path, n_vocab: int, config: dict, kinds, tc: dict) -> Vocab | None:
    """The vocabulary of the first kind whose files the folder has, or None."""
    tok_json_path = folder / "tokenizer.json"
    for kind in kinds:
        if kind == "phi3" and tc.get("tokenizer_class") == "GPT2Tokenizer":  # Phi-4
            return load_gpt2(folder, n_vocab, config)
        if kind in ("sentencepiece", "phi3") and (folder / "tokenizer.model").is_file():
            return load_sentencepiece(folder, n_vocab, config, phi3=kind == "phi3")
        if kind == "llama_hf" and tok_json_path.is_file() and parse_or_fail(
                tok_json_path, is_llama_hf, read_json(tok_json_path)):
            return load_llama_hf(folder, n_vocab, config)
        if kind == "gpt2" and (tok_json_path.is_file() or (folder / "vocab.json").is_file()):
            return load_gpt2(folder, n_vocab, config)
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
    tc = json_if_present(folder / "tokenizer_config.json") or {}
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

