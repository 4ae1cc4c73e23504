"""Our tokenizer conversion (scripts/hf2gguf/tokenizer/) against three independent references:

1. llama.cpp itself: it tokenizes the test strings of its own tests (models/ggml-vocab-<name>.gguf.inp) with
   our converted vocabularies into the ids of the .out files;
2. the ggml-vocab-<name>.gguf files, made by llama.cpp's converter from the real models: every tokenizer KV
   they hold equals ours;
3. llama.cpp's convert_hf_to_gguf.py (b11312) run --vocab-only on the same folders: every tokenizer.* KV, in
   the same order, for each architecture's way of reading tokenizers.

The tokenizer folders are rebuilt from the ggml-vocab GGUFs by tests/generators/tokenizers.py.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import gguf
import pytest
from conftest import edit_json

from generators import tokenizers as G
from hf2gguf.errors import ConversionError
from hf2gguf.tokenizer import load_vocab, read_sentencepiece

pytestmark = pytest.mark.tokenizer
T = gguf.TokenType

# each architecture's way of reading its tokenizer, as the lead's architecture modules call load_vocab
OPTIONS = {
    "LlamaForCausalLM": dict(space_prefix_from_config=True),
    "MistralForCausalLM": dict(space_prefix_from_config=True),
    "Qwen2ForCausalLM": dict(kinds=("sentencepiece", "gpt2")),
    "Qwen3ForCausalLM": dict(kinds=("sentencepiece", "gpt2")),
    "GemmaForCausalLM": dict(kinds=("sentencepiece",), add_space_prefix=False, extra_special_ids={"eot": 107}),
    "Gemma2ForCausalLM": dict(kinds=("sentencepiece",), add_space_prefix=False),
    "Phi3ForCausalLM": dict(kinds=("phi3",)),
    "GPT2LMHeadModel": dict(kinds=("gpt2",)),
}
ARCH_OF = {"gpt-2": "GPT2LMHeadModel", "llama-bpe": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
           "llama-spm": "LlamaForCausalLM", "phi-3": "Phi3ForCausalLM"}
# just enough of config.json for the reference converter to run --vocab-only
_DECODER = dict(hidden_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                intermediate_size=128, max_position_embeddings=256, rms_norm_eps=1e-5, rope_theta=10000.0)
HPARAMS = {
    "GPT2LMHeadModel": dict(n_embd=64, n_layer=1, n_head=2, n_ctx=128, n_positions=128, layer_norm_epsilon=1e-5),
    "LlamaForCausalLM": _DECODER, "MistralForCausalLM": _DECODER, "Qwen2ForCausalLM": _DECODER,
    "Qwen3ForCausalLM": _DECODER | dict(head_dim=32),
    "GemmaForCausalLM": _DECODER | dict(head_dim=32),
    "Gemma2ForCausalLM": _DECODER | dict(head_dim=32, attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
                                         sliding_window=16, query_pre_attn_scalar=32),
    "Phi3ForCausalLM": _DECODER | dict(original_max_position_embeddings=256, sliding_window=None),
}


def make_folder(dest: Path, vocab: str, arch: str) -> tuple[Path, int, dict]:
    n_vocab = G.write_tokenizer(vocab, dest)
    config = {"architectures": [arch], **HPARAMS[arch], **G.config_json(vocab)}
    (dest / "config.json").write_text(json.dumps(config, indent=2))
    return dest, n_vocab, config


def write_vocab_gguf(folder: Path, n_vocab: int, config: dict, out: Path, arch_kv: dict, **options) -> Path:
    """A vocab-only GGUF of our tokenizer, with the architecture KVs llama.cpp needs to load it."""
    vocab = load_vocab(folder, n_vocab, config, **options)
    w = gguf.GGUFWriter(out, arch_kv["general.architecture"])
    for k, v in arch_kv.items():
        if k.startswith(("tokenizer.", "GGUF.")) or k == "general.architecture":
            continue
        if isinstance(v, str):
            w.add_string(k, v)
        elif isinstance(v, float):
            w.add_float32(k, v)
        elif isinstance(v, int) and not isinstance(v, bool):
            w.add_uint32(k, v)
    vocab.write(w)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.close()
    return out


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> dict[str, Path]:
    """Each test vocabulary: rebuilt tokenizer folder -> our vocab-only GGUF."""
    root = tmp_path_factory.mktemp("vocabs")
    out = {}
    for name in G.VOCABS:
        folder, n_vocab, config = make_folder(root / name, name, ARCH_OF[name])
        out[name] = write_vocab_gguf(folder, n_vocab, config, root / f"{name}.gguf", G.read_kv(G.vocab_gguf(name)),
                                     **OPTIONS[ARCH_OF[name]])
    return out


# --- 1. llama.cpp tokenizes its test strings with our vocabularies ---------------------------------------------
@pytest.mark.parametrize("name", G.VOCABS)
def test_llama_cpp_tokenizes_its_test_strings(converted, name):
    import llama_cpp

    llm = llama_cpp.Llama(str(converted[name]), vocab_only=True, verbose=False)
    cases = G.test_strings(name)
    assert len(cases) == 46  # the .inp files hold 46 strings each
    # as llama.cpp's tests/test-tokenizer-0: no BOS, special tokens not parsed
    wrong = [(text, ids, got) for text, ids in cases
             if (got := llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)) != ids]
    assert not wrong, f"{len(cases) - len(wrong)}/{len(cases)} right; first wrong: {wrong[0]}"


# --- 2. the KVs of llama.cpp's own ggml-vocab GGUFs ----------------------------------------------------------
# Keys the current reference converter writes and the (older) converter that made ggml-vocab-*.gguf did not:
# SpecialVocab now turns tokenizer.json's post-processor into add_bos/add_eos/add_sep (test 3 proves the
# reference writes them with our values).
OLD_PAD_TYPES = {"phi-3": T.UNKNOWN, "qwen2": T.USER_DEFINED}
NEWER_KEYS = {"tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_eos_token", "tokenizer.ggml.add_sep_token"}


@pytest.mark.parametrize("name", G.VOCABS)
def test_tokenizer_kvs_equal_the_ggml_vocab_files(converted, name):
    original, ours = G.read_kv(G.vocab_gguf(name)), G.read_kv(converted[name])
    for key, value in original.items():
        if not key.startswith("tokenizer."):
            continue
        assert key in ours, f"{key} missing"
        if key == "tokenizer.ggml.token_type" and name in OLD_PAD_TYPES:
            # the converter that made this file typed the [PAD<i>] rows (embedding rows without a token)
            # differently; b11312's converter types them UNUSED (test 3), as ours does
            pads = {i for i, t in enumerate(original["tokenizer.ggml.tokens"]) if t == f"[PAD{i}]"}
            assert pads and {value[i] for i in pads} == {OLD_PAD_TYPES[name]}
            assert {ours[key][i] for i in pads} == {T.UNUSED}
            value = [T.UNUSED if i in pads else t for i, t in enumerate(value)]
        if key == "tokenizer.ggml.scores":
            assert ours[key] == pytest.approx(value, abs=0), key
        else:
            assert ours[key] == value, key
    extra = {k for k in ours if k.startswith("tokenizer.") and k not in original}
    assert extra <= NEWER_KEYS


def test_fast_kv_reader_agrees_with_gguf_reader(converted):
    reader = gguf.GGUFReader(G.vocab_gguf("llama-spm"))
    ours = G.read_kv(G.vocab_gguf("llama-spm"))
    for key, f in reader.fields.items():
        if not key.startswith("GGUF."):
            assert ours[key] == f.contents(), key


# --- 3. llama.cpp's convert_hf_to_gguf.py, --vocab-only, per architecture -----------------------------------
def _no_tokenizer_model(folder: Path) -> None:
    (folder / "tokenizer.model").unlink()


def _llama3_extras(folder: Path) -> None:
    """What Llama 3.x instruct folders add: several EOS ids in generation_config.json, templates in files."""
    (folder / "generation_config.json").write_text(json.dumps({"bos_token_id": 128000,
                                                               "eos_token_id": [128001, 128009]}))
    tc = json.loads((folder / "tokenizer_config.json").read_text())
    tc["add_prefix_space"] = False
    (folder / "tokenizer_config.json").write_text(json.dumps(tc))
    (folder / "chat_template.jinja").write_text("{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}")
    (folder / "additional_chat_templates").mkdir()
    (folder / "additional_chat_templates" / "tool_use.jinja").write_text("{{ tools }}")


def _codellama_vocab_size(folder: Path) -> None:
    """CodeLlama's embedding has 32016 rows: LlamaModel then adds an EOT id (32010)."""
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"vocab_size": 32016}))


REFERENCE_CASES = {  # id: (vocab, architecture, change to the folder[, load_vocab options])
    "gpt-2": ("gpt-2", "GPT2LMHeadModel", None),
    "llama-bpe": ("llama-bpe", "LlamaForCausalLM", None),
    "qwen2": ("qwen2", "Qwen2ForCausalLM", None),
    "llama-spm": ("llama-spm", "LlamaForCausalLM", None),
    "phi-3": ("phi-3", "Phi3ForCausalLM", None),
    "qwen3": ("qwen2", "Qwen3ForCausalLM", None),
    "mistral-spm": ("llama-spm", "MistralForCausalLM", None),
    "gemma-spm": ("llama-spm", "GemmaForCausalLM", None),
    "gemma2-spm": ("llama-spm", "Gemma2ForCausalLM", None),
    "llama-hf-byte-fallback": ("llama-spm", "LlamaForCausalLM", _no_tokenizer_model),
    "llama3-instruct-files": ("llama-bpe", "LlamaForCausalLM", _llama3_extras),
    "llama-hf-added-tokens": ("phi-3", "LlamaForCausalLM", _no_tokenizer_model),
    "codellama-vocab-size": ("llama-spm", "LlamaForCausalLM", _codellama_vocab_size,
                             dict(space_prefix_from_config=True, extra_special_ids={"eot": 32010})),
}

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


@pytest.fixture(scope="module")
def reference_cases(tmp_path_factory) -> dict[str, tuple[Path, Path, int, dict]]:
    """id -> (folder, the reference's vocab-only GGUF, n_vocab, config), all made in one interpreter."""
    root = tmp_path_factory.mktemp("reference")
    cases, jobs = {}, []
    for case, (vocab, arch, change, *_) in REFERENCE_CASES.items():
        folder, n_vocab, config = make_folder(root / case, vocab, arch)
        if change:
            change(folder)
            config = json.loads((folder / "config.json").read_text())
            n_vocab = config["vocab_size"]
        out = root / f"{case}.reference.gguf"
        cases[case] = (folder, out, n_vocab, config)
        jobs.append((str(folder), str(out)))
    src = G.vocab_gguf("gpt-2").parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src / "gguf-py"), str(src)]), "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error"}
    python = os.environ.get("HF2GGUF_REFERENCE_PYTHON") or sys.executable  # as tests/reference.py: torch, transformers
    proc = subprocess.run([python, "-c", _DRIVER, str(src / "convert_hf_to_gguf.py"), json.dumps(jobs)],
                          capture_output=True, text=True, env=env, cwd=root)
    missing = [case for case, (_, out, _, _) in cases.items() if not out.exists()]
    assert proc.returncode == 0 and not missing, f"no reference output for {missing}:\n{proc.stderr[-4000:]}"
    return cases


def tokenizer_kvs(path: Path) -> list[tuple[str, object]]:
    return [(k, v) for k, v in G.read_kv(path).items() if k.startswith("tokenizer.")]


@pytest.mark.parametrize("case", REFERENCE_CASES)
def test_tokenizer_kvs_equal_the_reference_converter(reference_cases, case, tmp_path):
    folder, reference, n_vocab, config = reference_cases[case]
    _, arch, _, *options = REFERENCE_CASES[case]
    options = options[0] if options else OPTIONS[arch]
    ours = write_vocab_gguf(folder, n_vocab, config, tmp_path / "ours.gguf", G.read_kv(reference), **options)
    want, got = tokenizer_kvs(reference), tokenizer_kvs(ours)
    assert [k for k, _ in got] == [k for k, _ in want]  # the same keys, in the same order
    for (key, a), (_, b) in zip(want, got):
        if key in PER_TOKEN and len(a) < n_vocab:
            # The reference's LlamaHfVocab stops at the last token; llama.cpp then refuses the model, whose
            # embedding has n_vocab rows. We fill the rows as the SentencePiece path does.
            assert case == "llama-hf-added-tokens" and len(b) == n_vocab
            b, tail = b[:len(a)], b[len(a):]
            assert tail == PAD_TAIL[key](range(len(a), n_vocab))
        assert b == a, key


PER_TOKEN = ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type")
PAD_TAIL = {"tokenizer.ggml.tokens": lambda ids: [f"[PAD{i}]" for i in ids],
            "tokenizer.ggml.scores": lambda ids: [-10000.0 for _ in ids],
            "tokenizer.ggml.token_type": lambda ids: [T.UNUSED for _ in ids]}


def test_what_the_reference_cases_cover(reference_cases):
    """The reference cases exercise what they are meant to: otherwise the comparison proves less."""
    kv = dict(tokenizer_kvs(reference_cases["llama-hf-byte-fallback"][1]))
    assert kv["tokenizer.ggml.model"] == "llama" and "tokenizer.ggml.merges" not in kv
    assert set(kv["tokenizer.ggml.scores"]) == {-1000.0} and kv["tokenizer.ggml.token_type"][3] == T.BYTE
    kv = dict(tokenizer_kvs(reference_cases["llama3-instruct-files"][1]))
    assert kv["tokenizer.ggml.add_space_prefix"] is False and "tokenizer.chat_template.tool_use" in kv
    assert kv["tokenizer.ggml.eos_token_id"] == 128001  # generation_config.json's eos ids are not read
    kv = dict(tokenizer_kvs(reference_cases["gemma-spm"][1]))
    assert kv["tokenizer.ggml.eot_token_id"] == 107 and kv["tokenizer.ggml.add_space_prefix"] is False
    kv = dict(tokenizer_kvs(reference_cases["codellama-vocab-size"][1]))
    assert kv["tokenizer.ggml.eot_token_id"] == 32010 and len(kv["tokenizer.ggml.tokens"]) == 32016
    kv = dict(tokenizer_kvs(reference_cases["qwen2"][1]))
    assert kv["tokenizer.ggml.tokens"][-1] == "[PAD151935]" and kv["tokenizer.ggml.token_type"][-1] == T.UNUSED


# --- units ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, tuple[Path, int]]:
    root = tmp_path_factory.mktemp("units")
    return {name: (root / name, G.write_tokenizer(name, root / name)) for name in ("gpt-2", "llama-spm")}


def copy(folders, name: str, dest: Path) -> tuple[Path, int]:
    src, n_vocab = folders[name]
    shutil.copytree(src, dest)
    return dest, n_vocab




def test_unknown_pre_tokenizer_regex_is_shown_with_the_fix(folders, tmp_path):
    folder, n_vocab = copy(folders, "gpt-2", tmp_path / "m")
    regex = r"\p{L}+|\p{N}{1,2}|[^\s\p{L}\p{N}]+|\s+"
    edit_json(folder / "tokenizer.json", lambda d: d.update(pre_tokenizer={"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}))
    with pytest.raises(ConversionError) as e:
        load_vocab(folder, n_vocab, {}, kinds=("gpt2",))
    text = str(e.value)
    assert str(folder / "tokenizer.json") in text and repr(regex) in text
    assert "PRE_TOKENIZERS in scripts/hf2gguf/tokenizer/pretokenizers.py" in text and "src/llama-vocab.cpp" in text


def test_unknown_pre_tokenizer_type_is_an_error(folders, tmp_path):
    folder, n_vocab = copy(folders, "gpt-2", tmp_path / "m")
    edit_json(folder / "tokenizer.json", lambda d: d.update(pre_tokenizer={"type": "Metaspace"}))
    with pytest.raises(ConversionError, match=r"splits with <Metaspace>"):
        load_vocab(folder, n_vocab, {}, kinds=("gpt2",))


def test_embedding_rows_without_a_token_become_unused_pads(folders):
    folder, n_vocab = folders["gpt-2"]
    vocab = load_vocab(folder, n_vocab + 3, {}, kinds=("gpt2",))
    assert vocab.tokens[n_vocab:] == [f"[PAD{i}]" for i in range(n_vocab, n_vocab + 3)]
    assert vocab.types[n_vocab:] == [T.UNUSED] * 3 and len(vocab.tokens) == len(vocab.types) == n_vocab + 3
    spm = load_vocab(folders["llama-spm"][0], 32005, {})
    assert spm.tokens[-1] == "[PAD32004]" and spm.types[-1] == T.UNUSED and len(spm.scores) == 32005


def test_tokenizer_larger_than_the_embedding_is_refused(folders):
    for name in ("gpt-2", "llama-spm"):
        folder, n_vocab = folders[name]
        with pytest.raises(ConversionError, match=rf"ids up to {n_vocab - 1}, but the embedding has only 100 rows"):
            load_vocab(folder, 100, {}, kinds=("sentencepiece", "gpt2"))


def test_duplicate_tokens_are_refused(folders, tmp_path):
    """llama.cpp asserts that every token is distinct (GGML_ASSERT in llama_vocab::load)."""
    folder, n_vocab = copy(folders, "llama-spm", tmp_path / "m")
    (folder / "added_tokens.json").write_text(json.dumps({"</s>": 32000}))
    with pytest.raises(ConversionError, match=r"tokens 2 and 32000 are both '</s>'; llama.cpp refuses"):
        load_vocab(folder, n_vocab + 1, {})


def test_added_tokens_beyond_the_embedding_are_dropped_as_the_reference_does(folders, tmp_path):
    folder, n_vocab = copy(folders, "llama-spm", tmp_path / "m")
    (folder / "added_tokens.json").write_text(json.dumps({"<pad>": 32000}))
    vocab = load_vocab(folder, n_vocab, {})
    assert len(vocab.tokens) == n_vocab and "<pad>" not in vocab.tokens


def test_byte_fallback_bpe_from_tokenizer_json(folders, tmp_path):
    folder, n_vocab = copy(folders, "llama-spm", tmp_path / "m")
    (folder / "tokenizer.model").unlink()
    vocab = load_vocab(folder, n_vocab, {"bos_token_id": 1, "eos_token_id": 2})
    assert (vocab.model, vocab.pre, vocab.merges) == ("llama", "default", [])
    assert vocab.tokens[3:5] == ["<0x00>", "<0x01>"] and vocab.types[3] == T.BYTE
    assert set(vocab.scores) == {-1000.0}
    assert vocab.types[:3] == [T.CONTROL] * 3  # the unk/bos/eos tokens of tokenizer_config.json
    # only tokenizer.json: without llama_hf among the kinds, there is no tokenizer
    with pytest.raises(ConversionError, match="has no tokenizer"):
        load_vocab(folder, n_vocab, {}, kinds=("sentencepiece",))


def test_special_tokens_and_flags_from_tokenizer_config(folders, tmp_path):
    folder, n_vocab = copy(folders, "llama-spm", tmp_path / "m")
    edit_json(folder / "tokenizer_config.json", lambda d: d.update(add_eos_token=True, eos_token="<unk>",
                                                                    pad_token={"content": "</s>"}))
    vocab = load_vocab(folder, n_vocab, {"eos_token_id": 2, "pad_token_id": 0})
    # tokenizer_config.json names win over config.json ids; the post-processor decides add_bos
    assert vocab.special_ids == {"bos": 1, "eos": 0, "unk": 0, "pad": 2}
    assert vocab.add_special["bos"] is True and vocab.add_special["eos"] is True


def test_special_ids_from_config_json_then_generation_config(folders, tmp_path):
    folder, n_vocab = copy(folders, "gpt-2", tmp_path / "m")
    edit_json(folder / "tokenizer_config.json", lambda d: [d.pop(k) for k in ("bos_token", "eos_token")])
    (folder / "generation_config.json").write_text(json.dumps({"bos_token_id": 7, "eos_token_id": [8, 9]}))
    vocab = load_vocab(folder, n_vocab, {"bos_token_id": 50256, "eos_token_id": [50256, 1]}, kinds=("gpt2",))
    # config.json's bos wins; its list of EOS ids is not one id (the reference writes none), so the first of
    # generation_config.json's list is taken
    assert vocab.special_ids == {"bos": 50256, "eos": 8}
    (folder / "generation_config.json").unlink()
    assert load_vocab(folder, n_vocab, {"eos_token_id": [50256, 1]}, kinds=("gpt2",)).special_ids == {}
    (folder / "generation_config.json").write_text("{not json")
    with pytest.raises(ConversionError, match="generation_config.json"):
        load_vocab(folder, n_vocab, {}, kinds=("gpt2",))
    (folder / "generation_config.json").unlink()
    with pytest.raises(ConversionError, match=r"bos_token_id 60000 is not a token id \(0..50256\)"):
        load_vocab(folder, n_vocab, {"bos_token_id": 60000}, kinds=("gpt2",))


def test_chat_template_from_tokenizer_config_or_file(folders, tmp_path):
    folder, n_vocab = copy(folders, "gpt-2", tmp_path / "m")
    assert load_vocab(folder, n_vocab, {}, kinds=("gpt2",)).chat_template is None
    (folder / "chat_template.jinja").write_text("{{ messages }}")
    assert load_vocab(folder, n_vocab, {}, kinds=("gpt2",)).chat_template == "{{ messages }}"
    edit_json(folder / "tokenizer_config.json", lambda d: d.update(chat_template="{{ config }}"))
    vocab = load_vocab(folder, n_vocab, {}, kinds=("gpt2",))
    assert vocab.chat_template == "{{ config }}"
    w = gguf.GGUFWriter(tmp_path / "t.gguf", "gpt2")
    vocab.write(w)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.close()
    assert G.read_kv(tmp_path / "t.gguf")["tokenizer.chat_template"] == "{{ config }}"


def test_sentencepiece_parser_agrees_with_the_sentencepiece_library(folders):
    import sentencepiece

    path = folders["llama-spm"][0] / "tokenizer.model"
    sp = sentencepiece.SentencePieceProcessor(model_file=str(path))
    pieces = read_sentencepiece(path)
    assert len(pieces) == sp.vocab_size() == 32000
    for i in list(range(300)) + list(range(31900, 32000)):
        text, score, kind = pieces[i]
        assert text == sp.IdToPiece(i) and score == sp.GetScore(i)
        assert (kind == 2, kind == 3, kind == 6) == (sp.IsUnknown(i), sp.IsControl(i), sp.IsByte(i))


def test_malformed_tokenizer_model_is_an_error(folders, tmp_path):
    folder, n_vocab = copy(folders, "llama-spm", tmp_path / "m")
    (folder / "tokenizer.model").write_bytes(b"\x0a\xff\xff\xff\x0fnot a model")
    with pytest.raises(ConversionError, match=r"tokenizer.model: is not a SentencePiece model"):
        load_vocab(folder, n_vocab, {})
