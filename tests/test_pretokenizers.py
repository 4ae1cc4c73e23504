"""tokenizer.ggml.pre for tokenizer.json pre-tokenizers (scripts/hf2gguf/tokenizer/pretokenizers.py), against
llama.cpp's own files (b11312), never against our table:

1. every name in llama.cpp's src/llama-vocab.cpp is either recognised or listed with the reason it cannot be, and
   every name we write is one llama.cpp's converter writes (its hash table, conversion/base.py);
2. for each recognised name, a pre_tokenizer laid out as the releases of its family have it (Sequence of Split
   with Regex, Digits, ByteLevel with its options), with the config fields of those releases, gives the name that
   llama.cpp's converter writes for that family (the "# ref:" repository of its hash table);
3. llama.cpp's test vocabularies (models/ggml-vocab-*.gguf) rebuilt as tokenizer folders (generators/tokenizers.py)
   get the tokenizer.ggml.pre of those files, and of llama.cpp's converter run on the same folders;
4. llama.cpp's converter writes attention.key_length and value_length for a Llama config.json without head_dim
   (a SmolLM2 one), and so do we.
"""
from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from generators import tokenizers as G
from hf2gguf.errors import ConversionError
from hf2gguf.tokenizer import load_vocab, pretokenizers, recognise_pre

SRC = G.llama_toolchain.extract_source(G.llama_toolchain.cache_root())
VOCAB_CPP = SRC / "src" / "llama-vocab.cpp"


def llama_cpp_regexes(pre_type: str) -> list[str]:
    """The regex_exprs llama.cpp's src/llama-vocab.cpp gives LLAMA_VOCAB_PRE_TYPE_<pre_type> (its comments left out)."""
    lines = VOCAB_CPP.read_text(encoding="utf-8").splitlines()
    start = lines.index(f"            case LLAMA_VOCAB_PRE_TYPE_{pre_type}:")
    first = next(i for i in range(start, len(lines)) if "regex_exprs = {" in lines[i]) + 1
    last = next(i for i in range(first, len(lines)) if lines[i].strip() == "};")
    return [ast.literal_eval(s.rstrip(",")) for s in map(str.strip, lines[first:last]) if s.startswith('"')]


# --- tokenizer.json building blocks, as the releases write them -------------------------------------------------
def split(regex: str) -> dict:
    return {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False}


def byte_level(add_prefix_space=False, trim_offsets=True, use_regex=True) -> dict:
    return {"type": "ByteLevel", "add_prefix_space": add_prefix_space, "trim_offsets": trim_offsets,
            "use_regex": use_regex}


def digits(individual: bool) -> dict:
    return {"type": "Digits", "individual_digits": individual}


def seq(*steps: dict) -> dict:
    return {"type": "Sequence", "pretokenizers": list(steps)}


# The regexes as the releases' tokenizer.json files hold them (llama.cpp quotes most as "original regex from
# tokenizer.json"; it rewrites (?i:...) for its own regex engine)
CL100K = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
          r"|\s+(?!\S)|\s+")
QWEN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
        r"|\s+(?!\S)|\s+")
QWEN35 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*"
          r"|\s*[\r\n]+|\s+(?!\S)|\s+")
JAIS2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
         r"|\s{512}(?!\S)|\s{256}(?!\S)|\s{128}(?!\S)|\s{64}(?!\S)|\s{32}(?!\S)|\s{16}(?!\S)|\s{8}(?!\S)"
         r"|\s{4}(?!\S)|\s{1,2}(?!\S)|\s{1}")
MINICPM5 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}+| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
            r"|\s+(?!\S)|\s+")
EXAONE_MOE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?(?:\p{L}\p{M}*(?: \p{L}\p{M}*)*)+|\p{N}"
              r"| ?[^\s\p{L}\p{N}]+[\r\n/]?|\s*[\r\n]|\s+(?!\S)|\s+")
TEKKEN = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?"
          r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+"
          r"|\s+(?!\S)|\s+")
O200K = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
         r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
         r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
SEED_CODER = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+"
              r"|\s+(?!\S)|\s+")
BAILING = (r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]"
           r"|\s+(?!\S)|\s+")


def deepseek(pre_type: str, individual_digits: bool) -> dict:
    """DeepSeek's Splits (llama.cpp copies them), its digits, then ByteLevel without its regex."""
    *splits, _ = llama_cpp_regexes(pre_type)
    return seq(*map(split, splits), digits(individual_digits), byte_level(False, False, False))


def deepseek_v3() -> dict:
    return seq(*map(split, llama_cpp_regexes("DEEPSEEK3_LLM")), byte_level(False, False, False))


STARCODER = seq(digits(True), byte_level())
LLAMA3 = seq(split(CL100K), byte_level(False, True, False))
# (expected tokenizer.ggml.pre, pre_tokenizer, config.json model_type, tokenizer_config.json tokenizer_class); the
# comment names the repository llama.cpp's converter gives for that name
CASES = {
    "gpt2": ("gpt-2", byte_level(), "gpt2", "GPT2Tokenizer"),  # openai-community/gpt2
    "phi-2": ("phi-2", byte_level(), "phi", "CodeGenTokenizer"),  # microsoft/phi-2
    "olmo": ("olmo", byte_level(), "olmo", "GPTNeoXTokenizer"),  # allenai/OLMo-1.7-7B-hf
    # mosaicml/mpt-7b hashes as OLMo (the later entry wins); GPT-NeoX-20B's vocabulary is MPT's (part 3 proves both)
    "mpt": ("olmo", byte_level(), "mpt", "GPTNeoXTokenizer"),
    "gpt-neox": ("olmo", byte_level(), "gpt_neox", "GPTNeoXTokenizer"),
    "stablelm-3b-4e1t": ("olmo", byte_level(), "stablelm", "GPTNeoXTokenizer"),
    "jais": ("jais", byte_level(), "jais", "PreTrainedTokenizerFast"),  # core42/jais-13b
    "roberta": ("roberta-bpe", {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True},
                "roberta", "RobertaTokenizer"),  # sentence-transformers/stsb-roberta-base
    "modernbert": ("modern-bert", byte_level(), "modernbert", "PreTrainedTokenizerFast"),  # answerdotai/ModernBERT-base
    "starcoder2": ("starcoder", STARCODER, "starcoder2", "GPT2Tokenizer"),  # bigcode/starcoder2-3b
    "granite": ("starcoder", STARCODER, "granite", "GPT2Tokenizer"),  # StarCoder's vocabulary
    "refact": ("refact", STARCODER, "gpt_refact", "GPT2Tokenizer"),  # smallcloudai/Refact-1_6-base
    "command-r": ("command-r", STARCODER, "cohere", "CohereTokenizer"),  # CohereForAI/c4ai-command-r-v01
    "codeshell": ("codeshell", STARCODER, "codeshell", "CodeShellTokenizer"),  # WisdomShell/CodeShell-7B
    "exaone": ("exaone", STARCODER, "exaone", "GPT2Tokenizer"),  # LGAI-EXAONE/EXAONE-3.0-7.8B-Instruct
    "smollm": ("smollm", STARCODER, "llama", "GPT2Tokenizer"),  # HuggingFaceTB/SmolLM-135M
    "minerva": ("minerva-7b", STARCODER, "mistral", "LlamaTokenizer"),  # sapienzanlp/Minerva-7B-base-v1.0
    "falcon": ("falcon", seq({"type": "Punctuation", "behavior": "Contiguous"}, byte_level(), digits(False),
                             split("[0-9][0-9][0-9]")), "falcon", "PreTrainedTokenizerFast"),  # tiiuae/falcon-7b
    "deepseek-llm": ("deepseek-llm", deepseek("DEEPSEEK_LLM", False), "llama", "LlamaTokenizerFast"),
    "deepseek-coder": ("deepseek-coder", deepseek("DEEPSEEK_CODER", True), "llama", "LlamaTokenizerFast"),
    "deepseek-v3": ("deepseek-v3", deepseek_v3(), "deepseek_v3", "LlamaTokenizerFast"),  # deepseek-ai/DeepSeek-V3
    "llama3": ("llama-bpe", LLAMA3, "llama", "PreTrainedTokenizerFast"),  # meta-llama/Meta-Llama-3-8B
    "smollm3": ("llama-bpe", LLAMA3, "smollm3", "PreTrainedTokenizerFast"),  # Llama 3.2's vocabulary
    "dbrx": ("dbrx", LLAMA3, "dbrx", "GPT2Tokenizer"),  # databricks/dbrx-base
    "olmo2": ("dbrx", LLAMA3, "olmo2", "GPT2Tokenizer"),  # cl100k, as DBRX
    "phi-4": ("dbrx", LLAMA3, "phi3", "GPT2Tokenizer"),  # cl100k, as DBRX
    "glm-4-hf": ("glm4", LLAMA3, "glm", "PreTrainedTokenizerFast"),  # THUDM/glm-4-9b-hf
    "glm-4-0414": ("glm4", LLAMA3, "glm4", "PreTrainedTokenizerFast"),
    "glm-4.5": ("glm4", LLAMA3, "glm4_moe", "PreTrainedTokenizerFast"),  # zai-org/GLM-4.5-Air
    "jais-2": ("jais-2", seq(split(JAIS2), byte_level(False, True, False)), "jais2",
               "PreTrainedTokenizerFast"),  # inceptionai/Jais-2-8B-Chat
    "qwen2": ("qwen2", seq(split(QWEN), byte_level(False, False, False)), "qwen2", "Qwen2Tokenizer"),
    "qwen3": ("qwen2", seq(split(QWEN), byte_level(False, False, False)), "qwen3", "Qwen2Tokenizer"),
    "deepseek-r1-qwen": ("deepseek-r1-qwen", seq(split(QWEN), byte_level(False, False, False)), "qwen2",
                         "LlamaTokenizerFast"),  # deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B
    "stablelm2": ("stablelm2", seq(split(QWEN), byte_level(False, False, False)), "stablelm",
                  "GPT2Tokenizer"),  # stabilityai/stablelm-2-zephyr-1_6b
    "qwen35": ("qwen35", seq(split(QWEN35), byte_level(False, False, False)), "qwen3_5",
               "Qwen2Tokenizer"),  # Qwen/Qwen3.5-9B-Instruct
    "minicpm5": ("minicpm5", seq(split(r"\p{N}{1,3}"), split(MINICPM5), byte_level(False, False, False)),
                 "minicpm5", "PreTrainedTokenizerFast"),  # openbmb/MiniCPM5-1B
    "exaone-moe": ("exaone-moe", seq(split(EXAONE_MOE), byte_level(False, False, False)), "exaone_moe",
                   "PreTrainedTokenizerFast"),  # LGAI-EXAONE/K-EXAONE-236B-A23B
    "tekken": ("tekken", seq(split(TEKKEN), byte_level(False, True, False)), "mistral",
               "PreTrainedTokenizerFast"),  # mistralai/Mistral-Nemo-Base-2407
    "gpt-4o": ("gpt-4o", seq(split(O200K), byte_level(False, False, False)), None,
               "GPT2Tokenizer"),  # Xenova/gpt-4o (a tokenizer alone)
    "llama4": ("llama4", seq(split(O200K), byte_level(False, True, False)), "llama4",
               "PreTrainedTokenizerFast"),  # meta-llama/Llama-4-Scout-17B-16E-Instruct
    "tiny-aya": ("tiny_aya", seq(split(r"\d{1,3}(?=(?:\d{3})*\b)"), split(O200K), byte_level(False, False, False)),
                 "cohere2", "CohereTokenizer"),  # CohereLabs/tiny-aya-base
    "seed-coder": ("seed-coder", seq(split(SEED_CODER), byte_level(False, False, False)), "llama",
                   "PreTrainedTokenizerFast"),  # ByteDance-Seed/Seed-Coder-8B-Base
    "bailingmoe": ("bailingmoe", seq(split(BAILING), byte_level(False, False, False)), "bailing_moe",
                   "PreTrainedTokenizerFast"),  # inclusionAI/Ling-lite
}
PATH = Path("tokenizer.json")


def table_names() -> set[str]:
    return {name for rules in pretokenizers.PRE_TOKENIZERS.values() for name, _ in rules}


# --- 1. coverage --------------------------------------------------------------------------------------------------
def test_every_llama_cpp_name_is_recognised_or_explained():
    names = set(re.findall(r'tokenizer_pre == "([^"]+)"', VOCAB_CPP.read_text(encoding="utf-8")))
    written = set(re.findall(r'res = "([^"]+)"', (SRC / "conversion" / "base.py").read_text(encoding="utf-8")))
    recognised, explained = table_names(), set(pretokenizers.NOT_IDENTIFIED)
    assert len(names) == 91
    assert recognised <= written <= names | {"bert-bge", "bert-bge-large", "jina-v2-en"}  # those three: WordPiece
    assert not recognised & explained and recognised | explained == names
    assert all(pretokenizers.NOT_IDENTIFIED.values())
    assert (len(recognised), len(explained)) == (33, 58)
    assert {expected for expected, *_ in CASES.values()} == recognised  # each has a release layout below


# --- 2. the releases' layouts -------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES)
def test_release_layout_gets_llama_cpp_name(case):
    expected, pre, model_type, tokenizer_class = CASES[case]
    assert recognise_pre(pre, PATH, {"model_type": model_type}, {"tokenizer_class": tokenizer_class}) == expected


def test_smollm2_is_named_smollm_not_starcoder(tmp_path):
    """A SmolLM2 folder: a Llama whose tokenizer splits as StarCoder's (digits, then byte-level); llama.cpp's
    converter names it smollm (llama.cpp then keeps spaces around punctuation), whatever tokenizer_config.json's
    clean_up_tokenization_spaces says."""
    n_vocab = G.write_tokenizer("gpt-2", tmp_path)
    tok = json.loads((tmp_path / "tokenizer.json").read_text(encoding="utf-8"))
    tok["pre_tokenizer"] = STARCODER
    (tmp_path / "tokenizer.json").write_text(json.dumps(tok), encoding="utf-8")
    smollm2 = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": n_vocab}
    for clean_up in (True, False, None):
        tc = json.loads((tmp_path / "tokenizer_config.json").read_text(encoding="utf-8"))
        tc["clean_up_tokenization_spaces"] = clean_up
        (tmp_path / "tokenizer_config.json").write_text(json.dumps(tc), encoding="utf-8")
        assert load_vocab(tmp_path, n_vocab, smollm2).pre == "smollm"
        assert load_vocab(tmp_path, n_vocab, smollm2 | {"model_type": "starcoder2"}).pre == "starcoder"


@pytest.mark.parametrize("pre, shown", [
    (byte_level(add_prefix_space=True), "<ByteLevel add_prefix_space>"),
    (seq(split(CL100K) | {"behavior": "Removed"}, byte_level(use_regex=False)), "behavior=Removed"),
    (seq(split(CL100K) | {"invert": True}, byte_level(use_regex=False)), "invert=True"),
    (seq(digits(False), byte_level()), r"r'\\p{N}+'"),
    (seq({"type": "Punctuation", "behavior": "Isolated"}, byte_level()), "<Punctuation Isolated>"),
    (seq(split(CL100K), byte_level(use_regex=True)), repr(CL100K)),
])
def test_options_that_split_differently_are_not_recognised(pre, shown):
    """ByteLevel's add_prefix_space and use_regex, Split's behavior and invert, Digits' individual_digits and
    Punctuation's behavior change the splits: a layout that differs in any of them is an error that shows it."""
    with pytest.raises(ConversionError) as e:
        recognise_pre(pre, PATH, {"model_type": "llama"}, {})
    assert shown in str(e.value)


# --- 3. llama.cpp's test vocabularies -----------------------------------------------------------------------------
# Rebuilt as their real models ship them (the layouts of part 2); the reference's hash of their tokenization (part
# 3b) proves the rebuilt folders tokenize as the real ones.
def _bpe(pre: dict, tokenizer_config: dict, config: dict, post=None, normalizer=None, in_vocab=True) -> dict:
    return dict(kind="bpe", specials_in_vocab=in_vocab, normalized=not in_vocab, normalizer=normalizer,
                pre_tokenizer=pre, post_processor=post or byte_level(False, False), decoder=byte_level(False, True),
                model_extra={"continuing_subword_prefix": None, "end_of_word_suffix": None},
                tokenizer_config=tokenizer_config, config=config)


ZERO_IDS = {"bos_token_id": 0, "eos_token_id": 0}
ENDOFTEXT = {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}
DS_SPECIAL = {"bos_token": "<\uff5cbegin\u2581of\u2581sentence\uff5c>",
              "eos_token": "<\uff5cend\u2581of\u2581sentence\uff5c>",
              "add_bos_token": True, "add_eos_token": False, "clean_up_tokenization_spaces": False}
SPECS = {  # generators/tokenizers.py's, where it has one, is used instead
    "starcoder": _bpe(STARCODER, {"tokenizer_class": "GPT2Tokenizer", **ENDOFTEXT}, ZERO_IDS),
    "refact": _bpe(STARCODER, {"tokenizer_class": "GPT2Tokenizer", **ENDOFTEXT}, ZERO_IDS),
    "mpt": _bpe(byte_level(), {"tokenizer_class": "GPTNeoXTokenizer", **ENDOFTEXT},
                ZERO_IDS, normalizer={"type": "NFC"}),
    "gpt-neox": _bpe(byte_level(), {"tokenizer_class": "GPTNeoXTokenizer", **ENDOFTEXT},
                     ZERO_IDS, normalizer={"type": "NFC"}),
    "command-r": _bpe(STARCODER, {"tokenizer_class": "CohereTokenizer", "bos_token": "<BOS_TOKEN>",
                                  "eos_token": "<|END_OF_TURN_TOKEN|>", "add_bos_token": True},
                      {"bos_token_id": 5, "eos_token_id": 255001}, post=G._bos_template("<BOS_TOKEN>", 5),
                      normalizer={"type": "NFC"}),
    "falcon": _bpe(CASES["falcon"][1], {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>"},
                   {"bos_token_id": 11, "eos_token_id": 11}),
    "deepseek-coder": _bpe(CASES["deepseek-coder"][1], {"tokenizer_class": "PreTrainedTokenizerFast", **DS_SPECIAL},
                           {"bos_token_id": 32013, "eos_token_id": 32014}, in_vocab=False,
                           post=G._bos_template(DS_SPECIAL["bos_token"], 32013),
                           normalizer={"type": "Sequence", "normalizers": []}),
    "deepseek-llm": _bpe(CASES["deepseek-llm"][1], {"tokenizer_class": "PreTrainedTokenizerFast", **DS_SPECIAL},
                         {"bos_token_id": 100000, "eos_token_id": 100001}, in_vocab=False,
                         post=G._bos_template(DS_SPECIAL["bos_token"], 100000),
                         normalizer={"type": "Sequence", "normalizers": []}),
    "qwen35": dict(G.SPECS["qwen2"], pre_tokenizer=CASES["qwen35"][1]),
}
for _name, _spec in SPECS.items():
    G.SPECS.setdefault(_name, _spec)
# test vocabulary -> the model_type of its family's config.json (what our table reads besides the splits)
VOCAB_MODEL_TYPES = {"gpt-2": "gpt2", "llama-bpe": "llama", "qwen2": "qwen2", "starcoder": "starcoder2",
                     "refact": "gpt_refact", "command-r": "cohere", "falcon": "falcon", "deepseek-coder": "llama",
                     "deepseek-llm": "llama", "qwen35": "qwen3_5", "mpt": "mpt", "gpt-neox": "gpt_neox"}
# b11312's converter writes olmo for MPT's vocabulary (mpt-7b and OLMo-1.7-7B-hf hash the same; part 3b runs it)
CONVERTER_RENAMES = {"mpt": "olmo"}


@pytest.fixture(scope="module")
def vocab_folders(tmp_path_factory) -> dict[str, tuple[Path, int]]:
    root = tmp_path_factory.mktemp("ggml-vocabs")
    return {name: (root / name, G.write_tokenizer(name, root / name)) for name in VOCAB_MODEL_TYPES}


def ours(folders, name: str) -> str:
    folder, n_vocab = folders[name]
    return load_vocab(folder, n_vocab, {"model_type": VOCAB_MODEL_TYPES[name]}, kinds=("gpt2",)).pre


@pytest.mark.parametrize("name", [n for n in VOCAB_MODEL_TYPES if n != "gpt-neox"])  # its file has no pre
def test_test_vocabularies_get_their_files_name(vocab_folders, name):
    original = G.read_kv(G.vocab_gguf(name))["tokenizer.ggml.pre"]
    assert ours(vocab_folders, name) == CONVERTER_RENAMES.get(name, original)
    if name in CONVERTER_RENAMES:
        assert original == name


# 3b: llama.cpp's converter on the same folders (its name depends on the tokenizer alone, so the architecture is
# Llama's, which reads any of these). qwen35's test vocabulary is Qwen 2's with another name: the converter,
# which hashes the vocabulary, calls it qwen2.
CONVERTER_CASES = ("starcoder", "refact", "command-r", "falcon", "deepseek-coder", "deepseek-llm", "mpt", "gpt-neox")
_DRIVER = """
import runpy, sys, json, logging
logging.disable(logging.WARNING)
script, jobs = sys.argv[1], json.loads(sys.argv[2])
for folder, out in jobs:
    sys.argv = [script, folder, "--vocab-only", "--outfile", out]
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as e:
        if e.code:
            print(f"{folder}: exit {e.code}", file=sys.stderr)
"""
LLAMA_CONFIG = dict(architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=64, num_hidden_layers=1,
                    num_attention_heads=2, num_key_value_heads=2, intermediate_size=128, max_position_embeddings=256,
                    rms_norm_eps=1e-5, rope_theta=10000.0)


def reference_env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC / "gguf-py"), str(SRC)]), "HF_HUB_OFFLINE": "1",
            "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error"}


def reference_python() -> str:
    return os.environ.get("HF2GGUF_REFERENCE_PYTHON") or sys.executable  # as tests/reference.py


@pytest.mark.reference
@pytest.mark.slow
def test_llama_cpp_converter_names_the_test_vocabularies_as_we_do(vocab_folders, tmp_path):
    jobs = []
    for name in CONVERTER_CASES:
        folder, _ = vocab_folders[name]
        (folder / "config.json").write_text(json.dumps(LLAMA_CONFIG | G.config_json(name)), encoding="utf-8")
        jobs.append((str(folder), str(tmp_path / f"{name}.gguf")))
    proc = subprocess.run([reference_python(), "-c", _DRIVER, str(SRC / "convert_hf_to_gguf.py"), json.dumps(jobs)],
                          capture_output=True, text=True, env=reference_env(), cwd=tmp_path)
    written = {name: G.read_kv(Path(out))["tokenizer.ggml.pre"] for name, (_, out) in zip(CONVERTER_CASES, jobs)
               if Path(out).exists()}
    assert set(written) == set(CONVERTER_CASES), proc.stderr[-4000:]
    assert written == {name: ours(vocab_folders, name) for name in CONVERTER_CASES}
    assert written["mpt"] == written["gpt-neox"] == "olmo"


# --- 4. key_length and value_length from a config.json without head_dim ----------------------------------------------
@pytest.mark.reference
@pytest.mark.slow
def test_llama_without_head_dim_gets_key_and_value_length_as_the_reference(tmp_path):
    """transformers' LlamaConfig fills head_dim in (hidden_size / heads) and llama.cpp's converter reads config.json
    through it, so it writes attention.key_length/value_length although config.json (as SmolLM2's) has no head_dim."""
    import reference

    model = tmp_path / "llama-no-head-dim"
    shutil.copytree(reference.ensure_models(["llama2"], log=lambda m: None)["llama2"], model)
    config = json.loads((model / "config.json").read_text())
    assert config.pop("head_dim", None) in (None, config["hidden_size"] // config["num_attention_heads"])
    (model / "config.json").write_text(json.dumps(config, indent=2))
    out = tmp_path / "reference.gguf"
    job = {"model": str(model), "arch": "LlamaForCausalLM", "outtype": "F32", "out": str(out),
           "log": str(tmp_path / "log")}
    jobs = {"src": str(SRC), "parallel": 1, "jobs": [job]}
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    subprocess.run([reference_python(), str(Path(reference.__file__)), "--drive", str(tmp_path / "jobs.json")],
                   check=True, capture_output=True, env={**reference_env(), "PYTHONPATH": str(SRC / "gguf-py")})
    assert out.exists(), (tmp_path / "log").read_text()
    head_dim = config["hidden_size"] // config["num_attention_heads"]
    kv = G.read_kv(out)
    assert kv["llama.attention.key_length"] == kv["llama.attention.value_length"] == head_dim
    mine, error = reference.convert_ours(model, tmp_path / "ours.gguf", "F32")
    assert error is None
    comparison = reference.compare(mine, out)
    assert comparison.equal, comparison.report()
