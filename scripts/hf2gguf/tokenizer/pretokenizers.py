"""The pre-tokenizer table, as plain data: a tokenizer.json pre-tokenizer's splits -> llama.cpp's name for it.

recognise_pre() turns a tokenizer.json pre_tokenizer into tokenizer.ggml.pre by the regexes it splits with (and, where
llama.cpp has several names for the same regexes, by the model family that config.json and tokenizer_config.json
name). llama.cpp's converter hashes transformers' tokenization of a test string instead, so it tells apart
vocabularies that split the same way; the families below are what its hash table (conversion/base.py,
get_vocab_base_pre, at b11312) names. A pre-tokenizer that is not in the table is an error that shows its regexes:
add them here, with llama.cpp's name (the tokenizer_pre branches of llama.cpp's src/llama-vocab.cpp).
"""
from __future__ import annotations

from pathlib import Path

from ..errors import ConversionError

# --- the regexes, as tokenizer.json spells them (llama.cpp's src/llama-vocab.cpp quotes most of them) ----------
# ByteLevel with use_regex splits with GPT-2's regex; Digits with \p{N} (individual_digits) or \p{N}+;
# Punctuation (behavior Contiguous) with PUNCT_REGEX, as llama.cpp writes it for Falcon.
GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
PUNCT_REGEX = r"[\p{P}\$\+<=>\^~\|`]+"
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
JAIS2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s{512}(?!\S)|\s{256}(?!\S)|\s{128}(?!\S)|\s{64}(?!\S)|\s{32}(?!\S)|\s{16}(?!\S)"
               r"|\s{8}(?!\S)|\s{4}(?!\S)|\s{1,2}(?!\S)|\s{1}")
QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN35_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+"
                r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
MINICPM5_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}+| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
EXAONE_MOE_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?(?:\p{L}\p{M}*(?: \p{L}\p{M}*)*)+|\p{N}"
                    r"| ?[^\s\p{L}\p{N}]+[\r\n/]?|\s*[\r\n]|\s+(?!\S)|\s+")
TEKKEN_REGEX = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?"
                r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
GPT4O_REGEX = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m"
               r"|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re"
               r"|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
TINY_AYA_DIGITS = r"\d{1,3}(?=(?:\d{3})*\b)"
SEED_CODER_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+"
                    r"|\s*[\r\n]+|\s+(?!\S)|\s+")
BAILINGMOE_REGEX = (r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]"
                    r"|\s+(?!\S)|\s+")
# DeepSeek's Splits (these hold real CR and LF characters, as tokenizer.json's "\r\n" does)
DEEPSEEK_LLM_LETTERS = ('\\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-Ჺ'
                        'Ჽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-ώᾀ-ᾴᾶ-ᾼιῂ-ῄῆ-ῌῐ-ΐῖ-Ίῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝ'
                        'ℤΩℨK-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀'
                        '-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+')
DEEPSEEK_LLM_PUNCT = '\\s?[!-/:-~！-／：-～‘-‟\u3000-。]+'
DEEPSEEK_CJK = '[一-龥ࠀ-一가-\ud7ff]+'
DEEPSEEK3_CJK = '[一-龥\u3040-ゟ゠-ヿ]+'
DEEPSEEK3_REGEX = ('[!"#$%&\'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}'
                   ']+| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+')

# --- the table ------------------------------------------------------------------------------------------------
# The splits a pre-tokenizer makes, in order -> the llama.cpp names for them, each with what picks it: config.json's
# model_type or tokenizer_config.json's tokenizer_class (one of the values listed). The first entry that holds
# wins; the last, without a condition, is the default. A name's family is the repository llama.cpp's converter
# names for it (# ref: in get_vocab_base_pre); where several names split the same way, each is picked by the
# model_type (or tokenizer_class) of its family's releases, and the one llama.cpp's test vocabulary or the most
# common family uses is the default.
Rule = tuple[str, dict[str, tuple[str, ...]]]
PRE_TOKENIZERS: dict[tuple[str, ...], list[Rule]] = {
    (GPT2_REGEX,): [  # ByteLevel with its regex
        ("phi-2", {"model_type": ("phi",)}),  # microsoft/phi-2 (CodeGen's vocabulary)
        # allenai/OLMo-1.7-7B-hf and mosaicml/mpt-7b hash the same, and the later entry, olmo, wins: so GPT-NeoX-20B's
        # vocabulary (MPT, Pythia, StableLM-3B-4E1T) is named olmo too
        ("olmo", {"model_type": ("olmo", "mpt", "gpt_neox", "stablelm")}),
        ("jais", {"model_type": ("jais",)}),  # core42/jais-13b
        ("roberta-bpe", {"model_type": ("roberta",)}),  # sentence-transformers/stsb-roberta-base
        ("modern-bert", {"model_type": ("modernbert",)}),  # answerdotai/ModernBERT-base
        ("gpt-2", {}),  # openai-community/gpt2
    ],
    (r"\p{N}", GPT2_REGEX): [  # Digits (individual_digits), then ByteLevel with its regex
        ("command-r", {"model_type": ("cohere", "cohere2")}),  # CohereForAI/c4ai-command-r-v01
        ("refact", {"model_type": ("gpt_refact",)}),  # smallcloudai/Refact-1_6-base
        ("codeshell", {"model_type": ("codeshell",)}),  # WisdomShell/CodeShell-7B
        ("exaone", {"model_type": ("exaone",)}),  # LGAI-EXAONE/EXAONE-3.0-7.8B-Instruct
        ("smollm", {"model_type": ("llama",)}),  # HuggingFaceTB/SmolLM-135M (SmolLM2 too): a Llama with this
        ("minerva-7b", {"model_type": ("mistral",)}),  # sapienzanlp/Minerva-7B-base-v1.0: a Mistral with this
        ("starcoder", {}),  # bigcode/starcoder2-3b (StarCoder, Granite 3)
    ],
    (PUNCT_REGEX, GPT2_REGEX, r"\p{N}+", "[0-9][0-9][0-9]"): [("falcon", {})],  # tiiuae/falcon-7b
    ("[\r\n]", DEEPSEEK_LLM_LETTERS, DEEPSEEK_LLM_PUNCT, r"\s+$", DEEPSEEK_CJK, r"\p{N}+"): [
        ("deepseek-llm", {})],  # deepseek-ai/deepseek-llm-7b-base
    ("[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", DEEPSEEK_CJK, r"\p{N}"): [
        ("deepseek-coder", {})],  # deepseek-ai/deepseek-coder-6.7b-base
    (r"\p{N}{1,3}", DEEPSEEK3_CJK, DEEPSEEK3_REGEX): [("deepseek-v3", {})],  # deepseek-ai/DeepSeek-V3
    (LLAMA3_REGEX,): [
        # databricks/dbrx-base; OLMo 2 and Phi-4 use the same (cl100k) vocabulary, which hashes the same
        ("dbrx", {"model_type": ("dbrx", "olmo2", "phi3")}),
        ("glm4", {"model_type": ("glm", "glm4", "glm4_moe")}),  # THUDM/glm-4-9b-hf, zai-org/GLM-4.5-Air
        ("llama-bpe", {}),  # meta-llama/Meta-Llama-3-8B (Llama 3.x, SmolLM3)
    ],
    (JAIS2_REGEX,): [("jais-2", {})],  # inceptionai/Jais-2-8B-Chat
    (QWEN2_REGEX,): [
        # deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B: Qwen 2.5's vocabulary with DeepSeek's tokenizer_config.json
        ("deepseek-r1-qwen", {"tokenizer_class": ("LlamaTokenizerFast", "LlamaTokenizer")}),
        ("stablelm2", {"model_type": ("stablelm",)}),  # stabilityai/stablelm-2-zephyr-1_6b
        ("qwen2", {}),  # Qwen/Qwen1.5-7B (Qwen 2, 2.5, 3)
    ],
    (QWEN35_REGEX,): [("qwen35", {})],  # Qwen/Qwen3.5-9B-Instruct
    (r"\p{N}{1,3}", MINICPM5_REGEX): [("minicpm5", {})],  # openbmb/MiniCPM5-1B
    (EXAONE_MOE_REGEX,): [("exaone-moe", {})],  # LGAI-EXAONE/K-EXAONE-236B-A23B
    (TEKKEN_REGEX,): [("tekken", {})],  # mistralai/Mistral-Nemo-Base-2407
    (GPT4O_REGEX,): [
        ("llama4", {"model_type": ("llama4", "llama4_text")}),  # meta-llama/Llama-4-Scout-17B-16E-Instruct
        ("gpt-4o", {}),  # Xenova/gpt-4o
    ],
    (TINY_AYA_DIGITS, GPT4O_REGEX): [("tiny_aya", {})],  # CohereLabs/tiny-aya-base
    (SEED_CODER_REGEX,): [("seed-coder", {})],  # ByteDance-Seed/Seed-Coder-8B-Base
    (BAILINGMOE_REGEX,): [("bailingmoe", {})],  # inclusionAI/Ling-lite
}
# slow tokenizers (vocab.json + merges.txt) have their regex in the class
SLOW_TOKENIZER_REGEXES = {"GPT2Tokenizer": (GPT2_REGEX,), "Qwen2Tokenizer": (QWEN2_REGEX,), None: (GPT2_REGEX,)}

# The names of llama.cpp's src/llama-vocab.cpp (b11312) that the table does not give, and why.
SAME_SPLITS_NO_FIELD = ("splits as {0} and its releases share {0}'s model_type and tokenizer_class; only the "
                        "vocabulary (which llama.cpp's converter hashes) tells them apart")
SAME_SPLITS_UNKNOWN_TYPE = ("llama.cpp splits as {0}, and the model_type of its releases is not known here to tell "
                            "it apart")
ADAPTED = "llama.cpp quotes only its own adaptation of the regexes, not tokenizer.json's, which is not known here"
NO_SPLITS = ("a SentencePiece-style BPE (spaces become \u2581 in the normalizer): the pre-tokenizer splits nothing "
             "that tells it apart")
NOT_IDENTIFIED: dict[str, str] = {
    "default": "the name for a vocabulary without a pre-tokenizer (SentencePiece), not a tokenizer.json one",
    "llama3": "an alias llama.cpp accepts; its converter writes llama-bpe",
    "llama-v3": "an alias llama.cpp accepts; its converter writes llama-bpe",
    "mpt": "mosaicml/mpt-7b hashes as allenai/OLMo-1.7-7B-hf, and llama.cpp's converter writes olmo for both",
    "glm5": "llama.cpp's converter never writes it (not in its hash table)",
    "llada-moe": "llama.cpp's converter never writes it (not in its hash table)",
    "chatglm-bpe": "THUDM/glm-4-9b-chat ships a tiktoken tokenizer (Python code), no tokenizer.json",
    "kimi-k2": "moonshotai/Kimi-K2-Base ships a tiktoken tokenizer (Python code), no tokenizer.json",
    "hunyuan": "tencent/Hunyuan-A13B-Instruct ships a tiktoken tokenizer (Python code), no tokenizer.json",
    "smaug-bpe": SAME_SPLITS_NO_FIELD.format("llama-bpe"),
    "midm-2.0": SAME_SPLITS_NO_FIELD.format("llama-bpe"),
    "falcon3": SAME_SPLITS_NO_FIELD.format("llama-bpe"),
    "megrez": SAME_SPLITS_NO_FIELD.format("qwen2"),
    "f2llmv2": SAME_SPLITS_NO_FIELD.format("qwen2"),
    "kormo": SAME_SPLITS_NO_FIELD.format("qwen2"),
    "a.x-4.0": SAME_SPLITS_NO_FIELD.format("gpt-2"),
    "mellum": SAME_SPLITS_NO_FIELD.format("gpt-2"),
    "trillion": SAME_SPLITS_NO_FIELD.format("gpt-2"),
    "jina-v1-en": SAME_SPLITS_NO_FIELD.format("gpt-2") + " (the jina models differ by language only)",
    "jina-v2-code": SAME_SPLITS_NO_FIELD.format("gpt-2") + " (the jina models differ by language only)",
    "jina-v2-es": SAME_SPLITS_NO_FIELD.format("gpt-2") + " (the jina models differ by language only)",
    "jina-v2-de": SAME_SPLITS_NO_FIELD.format("gpt-2") + " (the jina models differ by language only)",
    "jina-es": "an older name of jina-v2-es that llama.cpp accepts; its converter writes jina-v2-es",
    "jina-de": "an older name of jina-v2-de that llama.cpp accepts; its converter writes jina-v2-de",
    "gigachat": "its tokenizer.json pre-tokenizer is not known here, and llama.cpp does not quote it",
    "exaone4": "its tokenizer.json pre-tokenizer is not known here, and llama.cpp does not quote it",
    "granite-docling": "its tokenizer.json pre-tokenizer is not known here, and llama.cpp does not quote it",
    "mellum2": "its tokenizer.json pre-tokenizer is not known here, and llama.cpp does not quote it",
    "lfm2": "its tokenizer.json pre-tokenizer is not known here, and llama.cpp does not quote it",
    "falcon-h1": "its tokenizer.json pre-tokenizer is not known here, and llama.cpp does not quote it",
    "pixtral": "its tokenizer.json pre-tokenizer is not known here, and llama.cpp does not quote it",
    "jina-v5-nano": "its tokenizer.json pre-tokenizer is not known here, and llama.cpp does not quote it",
    "kanana2": "its tokenizer.json pre-tokenizer is not known here, and llama.cpp does not quote it",
    "talkie": "its tokenizer.json pre-tokenizer is not known here, and llama.cpp does not quote it",
    "cohere2moe": "its tokenizer.json pre-tokenizer is not known here, and llama.cpp does not quote it",
    "minimax-m2": "its tokenizer.json pre-tokenizer is not known here, and llama.cpp does not quote it",
    "bailingmoe2": "its tokenizer.json pre-tokenizer is not known here, and llama.cpp does not quote it",
    "solar-open": "its tokenizer.json pre-tokenizer is not known here, and llama.cpp does not quote it",
    "grok-2": "splits as qwen2, and no field of its tokenizer-only release (alvarobartt/grok-2-tokenizer) is known "
              "to tell it apart",
    "hunyuan-dense": SAME_SPLITS_UNKNOWN_TYPE.format("deepseek-v3"),
    "hy_v4": SAME_SPLITS_UNKNOWN_TYPE.format("deepseek-v3"),
    "joyai-llm": SAME_SPLITS_UNKNOWN_TYPE.format("deepseek-v3"),
    "spark2_5": ADAPTED,
    "youtu": ADAPTED,
    "laguna": ADAPTED,
    "superbpe": ADAPTED,
    "ufakzeka": ADAPTED,
    "chameleon": ADAPTED,
    "granite-embed-multi-97m": ADAPTED,
    "poro-chat": ADAPTED,
    "bloom": ADAPTED,
    "gpt3-finnish": ADAPTED,
    "viking": ADAPTED,
    "afmoe": "llama.cpp splits its digits with code of its own (\\p{AFMoE_digits}), not with tokenizer.json's regex",
    "whitespace": "llama.cpp's converter writes it for one model class (jina-embeddings-v2-base-zh), whose vocabulary "
                  "is not byte-level BPE",
    "gemma4": NO_SPLITS,
    "sarvam-moe": NO_SPLITS,
    "granite-embed-multi-311m": NO_SPLITS,
}


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
    if kind == "Punctuation" and pre.get("behavior", "Isolated") == "Contiguous":
        return (PUNCT_REGEX,)
    return (f"<{kind} {pre.get('behavior')}>",) if "behavior" in pre else (f"<{kind}>",)


def pick(regexes: tuple[str, ...], config: dict | None, tokenizer_config: dict | None) -> str | None:
    """The table's name for these splits and this model family, or None."""
    facts = {"model_type": (config or {}).get("model_type"),
             "tokenizer_class": (tokenizer_config or {}).get("tokenizer_class")}
    for name, when in PRE_TOKENIZERS.get(regexes, []):
        if all(facts[field] in values for field, values in when.items()):
            return name
    return None


def recognise_pre(pre_tokenizer: dict | None, path: Path, config: dict | None = None,
                  tokenizer_config: dict | None = None) -> str:
    """llama.cpp's tokenizer.ggml.pre name for a tokenizer.json pre-tokenizer (config: config.json,
    tokenizer_config: tokenizer_config.json), or a ConversionError showing the regexes."""
    regexes = _pre_regexes(pre_tokenizer, path)
    name = pick(regexes, config, tokenizer_config)
    if name is not None:
        return name
    shown = ", ".join(f"r{r!r}" if not r.startswith("<") else r for r in regexes) or "(none)"
    raise ConversionError(path, f"its pre-tokenizer splits with {shown}, which is not in the table of "
                          "pre-tokenizers llama.cpp knows",
                          "if llama.cpp supports this tokenizer, add the regexes with llama.cpp's name for them "
                          "(tokenizer.ggml.pre; see LLAMA_VOCAB_PRE_TYPE_* in llama.cpp's src/llama-vocab.cpp) to "
                          "PRE_TOKENIZERS in scripts/hf2gguf/tokenizer/pretokenizers.py")
