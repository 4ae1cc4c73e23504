"""The files run in llama-cpp-python, the runtime they are made for: a converted GGUF of every architecture family
the converter supports loads with llama_cpp.Llama and generates, greedily, the tokens that transformers' own
greedy generate() produces from the same Hugging Face folder.

- Our converter writes the F32 GGUF of a fixture (tests/generators/models.py: tiny random checkpoints laid out as
  the releases are). llama-cpp-python loads it (F32 K/V cache, so that both sides compute the same function) and
  generates N_NEW tokens from the first PROMPT_LENGTH of the fixture's recorded token ids, at temperature 0 and
  top_k 1. transformers loads the folder in float32 (the stored values, widened: what the F32 file holds) and
  runs generate(do_sample=False) on the same ids, with no stop token. Asserted: the general.architecture that
  llama.cpp reports (llama.cpp's own names, written out here), the token ids, the logits of every step within
  test_logits.py's tolerance for the family, and the text: llama.cpp's detokenize of the tokens is what the Hugging
  Face tokenizer (tokenizer.json) decodes them to.
- For GPT-2, Llama, Qwen2 and a MoE family, llama-quantize makes a Q4_K_M file of the F32 one, which
  llama-cpp-python loads with its defaults (F16 K/V cache; logits_all only keeps the logits) and runs: the file
  type it reports, the next-token distribution after the prompt close to transformers' (KL), and N_NEW tokens that
  detokenize.
- A broken file (one tensor scaled) fails the same comparison, so the comparison can fail.

Prompts are 8 tokens and 8 are generated: past the 8-token sliding window of the Gemma 2, Gemma 3 and gpt-oss
fixtures, so that their windowed attention runs in generation too.
"""
from __future__ import annotations

import itertools
import multiprocessing
import shutil
import subprocess
from concurrent.futures import ProcessPoolExecutor

import llama_cpp  # the reference runtime, built by .ci/run from the pinned sdist
import numpy as np
import pytest
import reference
from reference import VARIANTS, convert_ours, ensure_models, our_gguf, read_gguf

pytestmark = pytest.mark.fidelity

PROMPT_LENGTH = 8
N_NEW = 8
N_CTX = 32

# fixture -> the general.architecture llama.cpp (b11312) names the family by: one fixture per architecture module
# of the converter (scripts/hf2gguf/architectures/), written out here rather than read from the converter
FAMILIES = {
    "gpt2": "gpt2",
    "llama2": "llama",
    "mistral": "llama",  # llama.cpp runs Mistral (and Mixtral) as Llama
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "gemma": "gemma",
    "gemma2": "gemma2",
    "gemma3": "gemma3",
    "gemma3-mm": "gemma3",  # the language model of a Gemma3ForConditionalGeneration release (multimodal.py)
    "phi3": "phi3",
    "mixtral": "llama",
    "qwen2moe": "qwen2moe",
    "qwen3moe": "qwen3moe",
    "olmoe": "olmoe",
    "smollm3": "smollm3",
    "olmo2": "olmo2",
    "granite": "granite",
    "glm4": "glm4",
    "stablelm": "stablelm",
    "starcoder2": "starcoder2",
    "phi2": "phi2",
    "pythia": "gptneox",
    "cohere": "command-r",
    "deepseek-v2-lite": "deepseek2",
    "gptoss-bf16": "gpt-oss",
    "gptoss": "gpt-oss",  # MXFP4 experts, as released
    "llama4": "llama4",
}
# Fixtures whose logits are not compared step by step; their tokens still are. gptoss: llama.cpp's MXFP4 kernels
# quantize the activations to Q8_0 (generators/gptoss.py), about 5e-2 of logit difference, and where the router's 4th
# and 5th experts are 6e-4 apart (layer 1, at the first generated token of this prompt) another expert is chosen,
# which moves that step's logits by 0.6. gptoss-bf16 (float experts) proves the same model's logits at every step.
NO_LOGIT_COMPARISON = frozenset({"gptoss"})
# llama-quantize's type for the quantized runs, and what the file then states (gguf.LlamaFileType.MOSTLY_Q4_K_M)
QUANTIZED = "Q4_K_M"
QUANTIZED_FILE_TYPE = "15"
QUANTIZED_FAMILIES = ("gpt2", "llama2", "qwen2", "qwen3moe")
# KL divergence (nats) of the Q4_K_M file's next-token distribution after the prompt from transformers': measured
# 0.003 (GPT-2), 0.005 (Llama, Qwen2), 0.021 (Qwen3-MoE: quantization moves its routing). A gross break exceeds it
# by far (Qwen2's output norm x1.5: 0.16); a subtle one (one FFN matrix x1.5: 0.008 to 0.019) is the F32 test's
MAX_QUANTIZED_KL = 0.05


def tolerance(variant: str) -> float:
    from test_logits import tolerance as logit_tolerance

    return logit_tolerance(variant)


def collected(session) -> list[str]:
    """The fixtures this module's collected tests use, in test order (`-k qwen2` builds and converts one)."""
    names = [item.callspec.params["variant"] for item in session.items
             if getattr(item, "module", None) is not None and item.module.__name__ == __name__
             and hasattr(item, "callspec") and "variant" in item.callspec.params]
    return list(dict.fromkeys(names))


@pytest.fixture(scope="module")
def models(request):
    return ensure_models(collected(request.session), log=print)


@pytest.fixture(scope="module")
def f32_files(request, models, tmp_path_factory):
    """Our F32 file of each fixture, converted once: in a second process, in test order, while this one runs
    transformers and llama.cpp; shared with test_logits.py through reference.our_gguf's per-process memo."""
    folder = tmp_path_factory.mktemp("runtime")
    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))  # no fork of a torch process
    pending = {v: pool.submit(convert_ours, models[v], folder / f"{v}-F32.gguf", "F32")
               for v in collected(request.session) if (v, "F32") not in reference._OURS}

    def get(variant: str):
        if (variant, "F32") not in reference._OURS:
            if variant in pending:
                reference._OURS[variant, "F32"] = pending.pop(variant).result()
            else:
                our_gguf(variant, "F32", folder)
        path, error = reference._OURS[variant, "F32"]
        assert path is not None, f"{variant}: {error}"
        return path
    yield get
    pool.shutdown(cancel_futures=True)


def prompt(folder) -> list[int]:
    return np.load(folder / "reference_logits.npz")["input_ids"][:PROMPT_LENGTH].tolist()


class Reference:
    """transformers' greedy generation from a fixture folder: the new token ids, the logits of each step (float64,
    [N_NEW, vocab]) and the tokenizer's decoding of the new ids."""

    def __init__(self, variant: str, folder):
        import tokenizers
        import torch
        import transformers
        from generators.models import READ_BACK

        extra = READ_BACK[variant](VARIANTS[variant]) if variant in READ_BACK else {}
        model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32,
                                                                  attn_implementation="eager", **extra).eval()
        model.generation_config.eos_token_id = None  # N_NEW tokens, whatever they are
        self.prompt = prompt(folder)
        with torch.no_grad():
            out = model.generate(torch.tensor([self.prompt]), do_sample=False, max_new_tokens=N_NEW,
                                 output_logits=True, return_dict_in_generate=True)
        self.tokens = out.sequences[0, len(self.prompt):].tolist()
        self.logits = torch.stack(out.logits)[:, 0].double().numpy()
        assert len(self.tokens) == N_NEW and self.logits.shape[0] == N_NEW
        # the folder's tokenizer.json, decoded by the library transformers' fast tokenizers are
        self.text = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json")).decode(self.tokens,
                                                                                      skip_special_tokens=False)


@pytest.fixture(scope="module")
def references(models):
    cache: dict[str, Reference] = {}

    def get(variant: str) -> Reference:
        if variant not in cache:
            cache[variant] = Reference(variant, models[variant])
        return cache[variant]
    return get


class Generation:
    """llama-cpp-python's greedy generation from a GGUF: metadata, new token ids, the logits of each step, text."""

    def __init__(self, path, ids: list[int], **options):
        llm = llama_cpp.Llama(str(path), n_ctx=N_CTX, n_threads=2, verbose=False, logits_all=True, **options)
        try:
            self.metadata = dict(llm.metadata)
            self.tokens = list(itertools.islice(llm.generate(ids, temp=0.0, top_k=1), N_NEW))
            # row i holds the logits after token i of the sequence: the prompt's last row picks the first new token
            self.logits = np.array(llm.scores[len(ids) - 1:len(ids) - 1 + N_NEW], dtype=np.float64)
            self.text = llm.detokenize(self.tokens)
        finally:
            llm.close()


def same_text(ours: bytes, hf: str) -> bool:
    """llama.cpp's bytes against the Hugging Face tokenizer's string. Invalid UTF-8 (a character cut between
    tokens) is replaced on both sides. A continuation's first space: the Strip decoder of the SentencePiece
    fixtures' tokenizer.json drops it, llama.cpp keeps it where the file says add_space_prefix false (Gemma)."""
    return ours.decode("utf-8", errors="replace").removeprefix(" ") == hf.removeprefix(" ")


def check_f32(variant: str, path, ref: Reference, expected_arch: str) -> Generation:
    run = Generation(path, ref.prompt, type_k=0, type_v=0)  # F32 K/V cache: the default F16 cache adds ~1e-3
    assert run.metadata.get("general.architecture") == expected_arch, run.metadata.get("general.architecture")
    assert run.tokens == ref.tokens, f"{variant}: llama.cpp generated {run.tokens}, transformers {ref.tokens}"
    if variant not in NO_LOGIT_COMPARISON:
        diff = np.abs(run.logits - ref.logits).max(axis=-1)
        assert diff.max() <= tolerance(variant), \
            f"{variant}: max |logit difference| per step {np.array2string(diff, precision=2)} " \
            f"(tolerance {tolerance(variant):.0e})"
    assert run.text and same_text(run.text, ref.text), f"{variant}: llama.cpp {run.text!r}, transformers {ref.text!r}"
    return run


@pytest.mark.parametrize("variant", list(FAMILIES))
def test_llama_cpp_python_generates_what_transformers_generates(variant, f32_files, references):
    """Our F32 file: llama.cpp's architecture name, transformers' greedy tokens, their logits and their text."""
    check_f32(variant, f32_files(variant), references(variant), FAMILIES[variant])


def kl(p_logits: np.ndarray, q_logits: np.ndarray) -> float:
    def log_softmax(x):
        x = x - x.max()
        return x - np.log(np.exp(x).sum())
    p, q = log_softmax(p_logits), log_softmax(q_logits)
    return float((np.exp(p) * (p - q)).sum())


@pytest.mark.parametrize("variant", QUANTIZED_FAMILIES)
def test_a_quantized_file_runs_with_llama_cpp_pythons_defaults(variant, f32_files, references, llama_quantize,
                                                               tmp_path):
    """llama-quantize's Q4_K_M of our F32 file, loaded as a user would: it runs and stays close to transformers."""
    ref = references(variant)
    path = tmp_path / f"{variant}-{QUANTIZED}.gguf"
    subprocess.run([llama_quantize, f32_files(variant), path, QUANTIZED, "2"], check=True, capture_output=True)
    run = Generation(path, ref.prompt)
    assert run.metadata.get("general.architecture") == FAMILIES[variant]
    assert run.metadata.get("general.file_type") == QUANTIZED_FILE_TYPE, run.metadata.get("general.file_type")
    assert len(run.tokens) == N_NEW and run.text
    # the tokens may part from transformers' (quantization moves near-ties); the first step's distribution may not
    divergence = kl(ref.logits[0], run.logits[0])
    assert divergence <= MAX_QUANTIZED_KL, f"{variant} {QUANTIZED}: KL {divergence:.3g} from transformers"


def scale_tensor(path, name: str, factor: float) -> None:
    g = read_gguf(path, mode="r+")
    t = next(t for t in g.tensors if t.name == name)
    t.raw.view(np.float32)[:] *= factor
    g.data.flush()
    del g


@pytest.mark.parametrize("variant, tensor", [("llama2", "blk.1.ffn_down.weight"), ("gpt2", "blk.0.attn_qkv.bias")])
def test_a_broken_file_fails_the_comparison(variant, tensor, f32_files, references, tmp_path):
    """One tensor of a copy of the F32 file scaled by 1.5: the tokens or the logits part from transformers'."""
    broken = shutil.copy(f32_files(variant), tmp_path / "broken.gguf")
    scale_tensor(broken, tensor, 1.5)
    with pytest.raises(AssertionError, match="llama.cpp generated|logit difference"):
        check_f32(variant, broken, references(variant), FAMILIES[variant])
