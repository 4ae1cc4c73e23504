"""Pre-quantized releases with whole weights and scales beside them, read by our converter as the values they
stand for (hf2gguf/source.py, hf2gguf/peek.weight_scaling), as llama.cpp's converter dequantizes them: FP8
releases (quantization_config.quant_method "fp8": DeepSeek-V3 and R1, Qwen3's -FP8 models) and llm-compressor's
compressed-tensors FP8-dynamic, FP8-block and W8A8 int8 releases.

Independent references: torch's own float8 conversion for the 256 codes of each format; torch's repeat_interleave
dequantization (the reference's formula, written here in torch) for the scales of every layout; llama.cpp's
convert_hf_to_gguf.py (b11312) on the same release, byte for byte; and a bf16 twin whose values the FP8 codes
stand for exactly. The releases are made from the tests' fixtures as the real ones are laid out: each projection
(*_proj.weight) as codes with its scale beside it (W_scale_inv, or compressed-tensors' W_scale), the embedding,
output, router and norms left as they were; DeepSeek's scales float32, Qwen3's bfloat16. The fixtures are 64 wide,
so the blocks here are smaller than the releases' [128, 128], to give each tensor several blocks, the last ones
partial.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from hf2gguf.errors import ConversionError
from hf2gguf.source import FLOAT8, ModelFolder

FP8_LINEAR = ("_proj.weight", "_proj_with_mqa.weight")  # what the releases quantize: the projections only


def fixture(variant: str) -> Path:
    from reference import ensure_models

    return ensure_models([variant])[variant]


def quantize(w, block: tuple[int, int], scale_dtype, exact: bool = False, code: str = "e4m3"):
    """(codes, scale [row blocks, column blocks], values the codes stand for, float32) of a 2-D weight: each
    block's largest magnitude maps to the codes' largest value (448 for float8_e4m3fn, 127 for int8), as the
    releases' tools do; exact rounds that scale up to a power of two, so that code times scale is exact in bf16.
    A block as wide as the weight gives one scale per row (compressed-tensors' "channel" strategy)."""
    import torch

    (rows, cols), (br, bc) = w.shape, block
    padded = torch.zeros(-(-rows // br) * br, -(-cols // bc) * bc)  # the last blocks may be partial
    padded[:rows, :cols] = w.float()
    peak = padded.reshape(padded.shape[0] // br, br, padded.shape[1] // bc, bc).abs().amax(dim=(1, 3))
    scale = peak.clamp(min=1e-12) / (448.0 if code == "e4m3" else 127.0)
    if exact:
        scale = torch.exp2(torch.ceil(torch.log2(scale)))
    scale = scale.to(scale_dtype)
    full = scale.float().repeat_interleave(br, 0).repeat_interleave(bc, 1)[:rows, :cols]
    if code == "e4m3":
        codes = (w.float() / full).to(torch.float8_e4m3fn)
    else:
        codes = torch.round(w.float() / full).clamp(-127, 127).to(torch.int8)
    return codes, scale, codes.float() * full


def compressed_tensors(kind: str, block: tuple[int, int] | None) -> dict:
    """quantization_config as llm-compressor writes it: FP8-dynamic (float, a scale per channel), FP8-block (float,
    block_structure) or W8A8 (int, per channel), dynamic per-token activations, lm_head left out."""
    number = "float" if kind == "fp8" else "int"
    weights = dict(actorder=None, block_structure=list(block) if block else None, dynamic=False, group_size=None,
                   num_bits=8, observer="minmax", observer_kwargs={}, strategy="block" if block else "channel",
                   symmetric=True, type=number)
    inputs = dict(actorder=None, block_structure=None, dynamic=True, group_size=128 if block else None, num_bits=8,
                  observer=None, observer_kwargs={}, strategy="group" if block else "token", symmetric=True,
                  type=number)
    return {"config_groups": {"group_0": {"input_activations": inputs, "output_activations": None,
                                          "targets": ["Linear"], "weights": weights}},
            "format": "float-quantized" if kind == "fp8" else "int-quantized", "global_compression_ratio": None,
            "ignore": ["lm_head"], "kv_cache_scheme": None, "quant_method": "compressed-tensors",
            "quantization_status": "compressed"}


def fp8_release(source: Path, dest: Path, block: tuple[int, int] | None, scale_dtype="float32", exact: bool = False,
                twin: Path | None = None, scheme: str = "fp8") -> Path:
    """source as a release of scheme in dest: "fp8" (DeepSeek's and Qwen's FP8 releases: W_scale_inv per block of
    weight_block_size), "ct-fp8" or "ct-int8" (llm-compressor's compressed-tensors: W_scale per channel, block
    None, or per block); and, when twin is given, a bf16 twin there holding the values the codes stand for (needs
    exact scales)."""
    import torch
    from safetensors.torch import load_file, save_file

    dtype = getattr(torch, scale_dtype)
    suffix = "_scale_inv" if scheme == "fp8" else "_scale"
    for folder in [dest] + ([twin] if twin else []):
        shutil.copytree(source, folder, ignore=shutil.ignore_patterns("*.npz", "*.safetensors"))
    index_path = source / "model.safetensors.index.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else None
    for shard in sorted(source.glob("*.safetensors")):
        release, bf16 = {}, {}
        for name, w in load_file(shard).items():
            if not name.endswith(FP8_LINEAR) or w.ndim != 2:
                release[name] = bf16[name] = w
                continue
            codes, scale, values = quantize(w, block or (1, w.shape[1]), dtype, exact,
                                            "int8" if scheme == "ct-int8" else "e4m3")
            release[name], release[name + suffix] = codes, scale
            bf16[name] = values.to(torch.bfloat16)
            if index:
                index["weight_map"][name + suffix] = shard.name
        save_file(release, dest / shard.name, metadata={"format": "pt"})
        if twin:
            save_file(bf16, twin / shard.name, metadata={"format": "pt"})
    if index:
        (dest / index_path.name).write_text(json.dumps(index, indent=2))
    config = json.loads((dest / "config.json").read_text())
    config["quantization_config"] = (
        {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8", "weight_block_size": list(block)}
        if scheme == "fp8" else compressed_tensors(scheme.removeprefix("ct-"), block))
    (dest / "config.json").write_text(json.dumps(config, indent=2))
    return dest


# --- the float8 formats ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype, torch_dtype", [("F8_E4M3", "float8_e4m3fn"), ("F8_E5M2", "float8_e5m2")])
def test_each_code_has_torchs_value(dtype, torch_dtype):
    import torch

    theirs = torch.arange(256, dtype=torch.uint8).view(getattr(torch, torch_dtype)).float().numpy()
    ours = FLOAT8[dtype]
    assert ours.dtype == np.float32
    assert np.array_equal(np.isnan(ours), np.isnan(theirs)) and np.isnan(ours).sum() == (2 if dtype == "F8_E4M3" else 6)
    assert np.array_equal(ours[~np.isnan(ours)].view(np.uint32), theirs[~np.isnan(theirs)].view(np.uint32))


# --- the scales, read as the reference's formula reads them -----------------------------------------------------------
def write_model(folder: Path, tensors: dict, quantization: dict | None) -> Path:
    from safetensors.torch import save_file

    folder.mkdir()
    config = {"architectures": ["LlamaForCausalLM"]}
    if quantization is not None:
        config["quantization_config"] = quantization
    (folder / "config.json").write_text(json.dumps(config))
    save_file(tensors, folder / "model.safetensors")
    return folder


def dequantized(weight, scale, block):
    """llama.cpp's dequant_simple, written here in torch: the scale repeated over its blocks, cut to the weight."""
    scale = scale.float()
    if block is not None:
        offset = scale.ndim - len(block)
        for i, size in enumerate(block):
            scale = scale.repeat_interleave(size, offset + i)
        scale = scale[tuple(slice(0, n) for n in weight.shape)]
    while scale.ndim < weight.ndim:
        scale = scale.unsqueeze(-1)
    return (weight.float() * scale).numpy()


@pytest.mark.parametrize("shape, scale_shape, block, scale_dtype", [
    ((200, 96), (5, 3), [48, 32], "float32"),  # rows 200 = 4 blocks of 48 and a partial one
    ((130, 260), (2, 3), [128, 128], "bfloat16"),  # the releases' blocks, partial at both ends, Qwen3's scale dtype
    ((3, 70, 40), (3, 2, 1), [64, 64], "float32"),  # stacked experts: one grid of blocks per matrix
    ((64, 32), (), None, "float32"),  # one scale for the tensor
    ((64, 32), (64,), None, "bfloat16"),  # one scale per row
    ((64, 32), (64, 1), None, "float32"),  # one per row, as a column
    ((2, 64, 32), (2,), None, "float32"),  # one per matrix of stacked experts ([2] unsqueezed to [2, 1, 1])
])
def test_a_scaled_weight_reads_as_the_reference_dequantizes_it(tmp_path, shape, scale_shape, block, scale_dtype):
    import torch

    g = torch.Generator().manual_seed(0)
    codes = (torch.randn(shape, generator=g) * 40).to(torch.float8_e4m3fn)
    scale = (torch.rand(scale_shape, generator=g) * 1e-2 + 1e-4).to(getattr(torch, scale_dtype))
    quantization = {"quant_method": "fp8", "activation_scheme": "dynamic", "weight_block_size": block}
    folder = write_model(tmp_path / "m", {"w": codes, "w_scale_inv": scale, "w.activation_scale": torch.ones(1),
                                          "norm": torch.ones(shape[-1])}, quantization)
    model = ModelFolder(folder)
    assert list(model.tensors) == ["norm", "w"]  # the scales are not tensors of the model
    assert model.value_dtype("w") == "F32" and model.tensors["w"].dtype == "F8_E4M3"
    expected = dequantized(codes, scale, block)
    whole = model.read("w")
    assert whole.dtype == np.float32 and whole.shape == shape
    assert np.array_equal(whole.view(np.uint32), expected.view(np.uint32))
    rows = expected.reshape(-1, shape[-1])
    n = rows.shape[0]
    for start, stop in ((0, 1), (47, 53), (69, 71), (n - 5, n)):  # 69:71 crosses the first two experts' matrices
        start, stop = min(start, n - 1), min(stop, n)
        part = model.read("w", start, stop)
        assert np.array_equal(part.view(np.uint32), rows[start:stop].view(np.uint32)), (start, stop)


@pytest.mark.parametrize("kind, block, scale_shape", [("int8", None, (96, 1)), ("fp8", None, (96, 1)),
                                                     ("fp8", (32, 32), (3, 2))])
def test_a_compressed_tensors_weight_reads_as_the_reference_dequantizes_it(tmp_path, kind, block, scale_shape):
    """llm-compressor's layout: W and W_scale (per channel [rows, 1], or per block of block_structure); int8 codes
    for W8A8, float8 for FP8; a static release's activation and KV-cache scales are left out."""
    import torch

    g = torch.Generator().manual_seed(1)
    w = torch.randn(96, 64, generator=g) * 40
    codes = w.clamp(-127, 127).round().to(torch.int8) if kind == "int8" else w.to(torch.float8_e4m3fn)
    scale = (torch.rand(scale_shape, generator=g) * 1e-2 + 1e-4).to(torch.bfloat16)
    static = {"proj.input_scale": torch.ones(1), "attn.k_scale": torch.ones(1), "attn.v_scale": torch.ones(1)}
    folder = write_model(tmp_path / "m", {"proj.weight": codes, "proj.weight_scale": scale, **static},
                         compressed_tensors(kind, block))
    model = ModelFolder(folder)  # static activation and KV-cache scales are not tensors of the model
    assert list(model.tensors) == ["proj.weight"] and model.tensors["proj.weight"].dtype == ("I8" if kind == "int8"
                                                                                            else "F8_E4M3")
    expected = dequantized(codes, scale, block)
    assert np.array_equal(model.read("proj.weight").view(np.uint32), expected.view(np.uint32))
    assert np.array_equal(model.read("proj.weight", 30, 70).view(np.uint32), expected[30:70].view(np.uint32))


def test_which_quantizations_our_converter_reads():
    """peek.weight_scaling: those llama.cpp's dequant_model dequantizes with a scale beside whole weights; the rest
    is llama.cpp's (or nobody's), and CONVERTER auto sends it there."""
    from hf2gguf.peek import NotOurs, weight_scaling

    assert weight_scaling(None) is None and weight_scaling({"quant_method": "mxfp4"}) is None
    fp8 = weight_scaling({"quant_method": "fp8", "weight_block_size": [128, 128]})
    assert (fp8.suffix, fp8.strip, fp8.block, fp8.unused) == ("_scale_inv", "_scale_inv", (128, 128),
                                                             (".activation_scale", "_activation_scale"))
    assert weight_scaling(compressed_tensors("fp8", None)).suffix == ".weight_scale"
    assert weight_scaling(compressed_tensors("int8", None)).block is None
    assert weight_scaling(compressed_tensors("fp8", (128, 128))).block == (128, 128)
    packed = compressed_tensors("int8", None) | {"format": "pack-quantized"}  # W4A16: llama.cpp's converter's
    tensor = compressed_tensors("fp8", None)
    tensor["config_groups"]["group_0"]["weights"]["strategy"] = "tensor"
    grouped = compressed_tensors("int8", None)
    grouped["config_groups"]["group_0"]["weights"] |= {"strategy": "group", "group_size": 128}
    two = compressed_tensors("fp8", None)
    two["config_groups"]["group_1"] = two["config_groups"]["group_0"]
    for q, why in ((packed, "format 'pack-quantized'"), (tensor, "strategy 'tensor'"), (grouped, "strategy 'group'"),
                   (two, "with 2 config_groups"), ({"quant_method": "gptq", "bits": 4}, "gptq weights")):
        with pytest.raises(NotOurs, match=why):
            weight_scaling(q)
    with pytest.raises(ValueError, match=r"weight_block_size is \[0, 128\]; a block is two positive sizes"):
        weight_scaling({"quant_method": "fp8", "weight_block_size": [0, 128]})


def test_the_workflow_sends_each_release_to_the_converter_that_reads_it(tmp_path):
    import pipeline
    from test_fallback import model_with

    from conftest import edit_json

    def theirs():
        raise AssertionError("llama.cpp's list is read only when ours does not apply")

    def release(name, q):  # test_fallback's config-only model folder, with this quantization_config
        models, model = model_with(tmp_path, "LlamaForCausalLM", name=name)
        edit_json(Path(models) / model / "config.json", lambda c: c.update(quantization_config=q))
        return models, model

    assert pipeline.choose_converter("auto", *release("dyn", compressed_tensors("fp8", None)), theirs) == "hf2gguf"
    assert pipeline.choose_converter("hf2gguf", *release("w8a8", compressed_tensors("int8", None)), theirs) == "hf2gguf"
    packed = release("w4a16", compressed_tensors("int8", None) | {"format": "pack-quantized"})
    assert pipeline.choose_converter("auto", *packed, theirs) == "llama.cpp"
    with pytest.raises(pipeline.ConfigError, match=r"w4a16/config.json: its weights are pre-quantized "
                                                   r"\(compressed-tensors pack-quantized, quantization_config\), "
                                                   r"which our converter"):
        pipeline.choose_converter("hf2gguf", *packed, theirs)
    with pytest.raises(pipeline.ConfigError, match=r"bad/config.json: quantization_config.weight_block_size is \[128\]"
                                                   r"; a block is two positive sizes \(rows, columns\), e.g. \[128, "
                                                   r"128\]. Re-download config.json"):
        pipeline.choose_converter("auto", *release("bad", {"quant_method": "fp8", "weight_block_size": [128]}), theirs)


@pytest.mark.parametrize("tensors, quantization, message", [
    (lambda t: {"w": t.zeros(8, 8).to(t.float8_e4m3fn), "w_scale_inv": t.ones(2, 2)}, {"weight_block_size": [8, 8]},
     r"tensor 'w_scale_inv' has shape \[2, 2\], but its weight \[8, 8\] needs \[1, 1\] \(blocks of \[8, 8\]\)"),
    (lambda t: {"w_scale_inv": t.ones(1, 1)}, {"weight_block_size": [8, 8]},
     r"holds 'w_scale_inv' but not the weight it scales, 'w'"),
    (lambda t: {"w": t.zeros(8, 8).to(t.float8_e4m3fn), "w_scale_inv": t.ones(1, 1)}, {"weight_block_size": [8]},
     r"config.json: quantization_config.weight_block_size is \[8\]; a block is two positive sizes \(rows, columns\)"),
    (lambda t: {"w": t.zeros(8, 8).to(t.float8_e4m3fn), "w_scale_inv": t.ones(8, 2)}, {"weight_block_size": None},
     r"has shape \[8, 2\], but its weight \[8, 8\] needs a shape that broadcasts to it \(one value, or one per "
     r"row \[8\]\)"),
])
def test_a_release_whose_scales_do_not_fit_is_refused(tmp_path, tensors, quantization, message):
    import torch

    folder = write_model(tmp_path / "m", tensors(torch), {"quant_method": "fp8", **quantization})
    with pytest.raises(ConversionError, match=message):
        ModelFolder(folder)


def test_float8_weights_without_an_fp8_config_are_refused(tmp_path):
    import torch

    folder = write_model(tmp_path / "m", {"w": torch.zeros(8, 8).to(torch.float8_e4m3fn)}, None)
    with pytest.raises(ConversionError, match=r"tensor 'w' has dtype F8_E4M3; F32, F16, BF16, F64 weights convert, "
                                              r"and float8 or int8 ones with their scales \(a release"):
        ModelFolder(folder).read("w")


def test_a_quant_method_we_do_not_read_names_the_fix(tmp_path):
    import torch

    folder = write_model(tmp_path / "m", {"w": torch.zeros(8, 8)}, {"quant_method": "awq", "bits": 4})
    with pytest.raises(ConversionError, match=r"config.json: declares awq weights, which our converter does not "
                                              r"dequantize\n  fix: CONVERTER: auto"):
        ModelFolder(folder)


# --- whole releases against llama.cpp's converter --------------------------------------------------------------------
RELEASES = {  # name: (fixture, scheme, block, scale dtype), as each kind of release stores its weights
    "deepseek-v3-fp8": ("deepseek-v3", "fp8", (48, 32), "float32"),  # DeepSeek-V3/R1: float32 scales (non-square
    # blocks here)
    "qwen3-fp8": ("qwen3", "fp8", (48, 48), "bfloat16"),  # Qwen3-*-FP8: bfloat16 scales
    "qwen3moe-fp8": ("qwen3moe", "fp8", (48, 48), "bfloat16"),  # Qwen3-30B-A3B-FP8: each expert's own scales
    "llama3-fp8-dynamic": ("llama3", "ct-fp8", None, "bfloat16"),  # llm-compressor FP8-dynamic: one scale per row
    "qwen3-fp8-block": ("qwen3", "ct-fp8", (48, 48), "float32"),  # llm-compressor FP8-block
    "qwen2-w8a8": ("qwen2", "ct-int8", None, "bfloat16"),  # llm-compressor W8A8: int8 codes, one scale per row
}


@pytest.fixture(scope="module")
def releases(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fp8")
    return {name: fp8_release(fixture(variant), root / name, block, dtype, scheme=scheme)
            for name, (variant, scheme, block, dtype) in RELEASES.items()}


@pytest.mark.reference
@pytest.mark.slow
@pytest.mark.parametrize("release, outtype", [
    ("deepseek-v3-fp8", "F32"), ("deepseek-v3-fp8", "F16"), ("deepseek-v3-fp8", "BF16"), ("qwen3-fp8", "F16"),
    ("qwen3-fp8", "Q8_0"), ("qwen3moe-fp8", "F16"), ("llama3-fp8-dynamic", "F16"), ("qwen3-fp8-block", "BF16"), ("qwen2-w8a8", "F32")])
def test_a_scaled_release_converts_as_llama_cpps_converter_converts_it(releases, release, outtype, tmp_path):
    import reference_converter
    from reference import compare

    from hf2gguf.convert import convert

    folder = releases[release]
    theirs = tmp_path / "theirs.gguf"
    reference_converter.convert(folder, theirs, outtype, reference_converter.build_env())
    ours = convert(folder, tmp_path / "ours.gguf", outtype, log=lambda m: None, threads=2)
    c = compare(ours, theirs)
    assert not c.tensors and not c.kvs and c.same_order, c.report()
    model = ModelFolder(folder)
    codes = "I8" if release.endswith("w8a8") else "F8_E4M3"
    assert model.scales and all(model.tensors[w].dtype == codes for w in model.scales)


@pytest.mark.slow
def test_an_fp8_release_holds_the_values_of_its_bf16_twin(tmp_path):
    """With power-of-two scales, code times scale is exact in bf16: the twin (dequantized by torch) is the
    release's values, and both convert to the same F32 tensors."""
    from reference import compare

    from hf2gguf.convert import convert

    twin = tmp_path / "twin"
    release = fp8_release(fixture("deepseek-v3"), tmp_path / "fp8", (48, 32), exact=True, twin=twin)
    ours = convert(release, tmp_path / "release.gguf", "F32", log=lambda m: None)
    c = compare(ours, convert(twin, tmp_path / "twin.gguf", "F32", log=lambda m: None))
    assert not c.tensors, c.report()


@pytest.mark.workflow
@pytest.mark.slow
def test_the_workflow_converts_an_fp8_release_with_our_converter(tmp_path):
    """CONVERTER auto: the FP8 release is ours now (no fallback environment); it quantizes to Q4_K_M and validates
    against its own intermediate."""
    from test_fallback import kv, one_pair_workflow, targets

    from conftest import snakemake

    release = fp8_release(fixture("deepseek-v3"), tmp_path / "fp8", (128, 128))
    wf = one_pair_workflow(tmp_path / "wf", {"ds-fp8": release})
    run = snakemake(wf, *targets("ds-fp8"))
    assert run.jobs()["convert"] == 1 and "reference_converter" not in run.jobs(), run.output
    intermediate = wf / "outputs/intermediate/ds-fp8-F32.gguf"
    assert kv(intermediate, "hf2gguf.converter") is None  # ours writes no converter key
    assert "F8_E4M3 -> F32" in (wf / "outputs/logs/convert/ds-fp8-F32.log").read_text()
    report = json.loads((wf / "outputs/GPU_LLM_LLAMA/ds-fp8-Q4_K_M.json").read_text())
    assert report["converter"] == "hf2gguf" and report["loaded"] is True and 0 <= report["kl_divergence"] < 0.5, report
