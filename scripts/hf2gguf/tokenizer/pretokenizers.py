"""The pre-tokenizer table, as plain data: a tokenizer.json pre-tokenizer's split regexes -> llama.cpp's name for it.

recognise_pre() turns a tokenizer.json pre_tokenizer into tokenizer.ggml.pre by its regexes. llama.cpp's converter
hashes transformers' tokenization of a test string instead; both give the same name for the vocabularies of
llama.cpp's tests. A pre-tokenizer that is not in the table is an error that shows its regexes: add them here,
with llama.cpp's name (LLAMA_VOCAB_PRE_TYPE_* in llama.cpp's src/llama-vocab.cpp).
"""
from __future__ import annotations

from pathlib import Path

from ..errors import ConversionError


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


# --- recognising a tokenizer.json pre-tokenizer ---------------------------------------------------------------
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
                          "PRE_TOKENIZERS in scripts/hf2gguf/tokenizer/pretokenizers.py")
