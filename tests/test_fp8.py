"""FP8 releases (quantization_config.quant_method "fp8": DeepSeek-V3 and R1, Qwen3's -FP8 models), read by our
converter as the values they stand for (hf2gguf/source.py), as llama.cpp's converter dequantizes them.

Independent references: torch's own float8 conversion for the 256 codes of each format; torch's repeat_interleave
dequantization (the reference's formula, written here in torch) for the scales of every layout; llama.cpp's
convert_hf_to_gguf.py (b11312) on the same release, byte for byte; and a bf16 twin whose values the FP8 codes
stand for exactly. The releases are made from the tests' fixtures as the real ones are laid out: each projection
(*_proj.weight) in float8_e4m3fn with W_scale_inv beside it, the embedding, output, router and norms left as they
were; DeepSeek's scales float32, Qwen3's bfloat16. The fixtures are 64 wide, so the blocks here are smaller than
the releases' [128, 128], to give each tensor several blocks, the last ones partial.
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


def quantize_fp8(w, block: tuple[int, int], scale_dtype, exact: bool):
    """(codes float8_e4m3fn, scale [row blocks, column blocks], values the codes stand for, float32) of a 2-D
    weight: each block's largest magnitude maps to 448 (e4m3's largest value), as the releases' scripts do; exact
    rounds that scale up to a power of two, so that code times scale is exact in bf16."""
    import torch

    (rows, cols), (br, bc) = w.shape, block
    padded = torch.zeros(-(-rows // br) * br, -(-cols // bc) * bc)  # the last blocks may be partial
    padded[:rows, :cols] = w.float()
    peak = padded.reshape(padded.shape[0] // br, br, padded.shape[1] // bc, bc).abs().amax(dim=(1, 3))
    scale = peak.clamp(min=1e-12) / 448.0
    if exact:
        scale = torch.exp2(torch.ceil(torch.log2(scale)))
    scale = scale.to(scale_dtype)
    full = scale.float().repeat_interleave(br, 0).repeat_interleave(bc, 1)[:rows, :cols]
    codes = (w.float() / full).to(torch.float8_e4m3fn)
    return codes, scale, codes.float() * full


def fp8_release(source: Path, dest: Path, block: tuple[int, int], scale_dtype="float32", exact: bool = False,
                twin: Path | None = None) -> Path:
    """source as its FP8 release in dest (config.json with the releases' quantization_config), and, when twin is
    given, a bf16 twin there holding the values the codes stand for (needs exact scales)."""
    import torch
    from safetensors.torch import load_file, save_file

    dtype = getattr(torch, scale_dtype)
    folders = [dest] + ([twin] if twin else [])
    for folder in folders:
        shutil.copytree(source, folder, ignore=shutil.ignore_patterns("*.npz", "*.safetensors"))
    index_path = source / "model.safetensors.index.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else None
    for shard in sorted(source.glob("*.safetensors")):
        fp8, bf16 = {}, {}
        for name, w in load_file(shard).items():
            if not name.endswith(FP8_LINEAR) or w.ndim != 2:
                fp8[name] = bf16[name] = w
                continue
            codes, scale, values = quantize_fp8(w, block, dtype, exact)
            fp8[name], fp8[name + "_scale_inv"] = codes, scale
            bf16[name] = values.to(torch.bfloat16)
            if index:
                index["weight_map"][name + "_scale_inv"] = shard.name
        save_file(fp8, dest / shard.name, metadata={"format": "pt"})
        if twin:
            save_file(bf16, twin / shard.name, metadata={"format": "pt"})
    if index:
        (dest / index_path.name).write_text(json.dumps(index, indent=2))
    config = json.loads((dest / "config.json").read_text())
    config["quantization_config"] = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                                     "weight_block_size": list(block)}
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


@pytest.mark.parametrize("tensors, quantization, message", [
    (lambda t: {"w": t.zeros(8, 8).to(t.float8_e4m3fn), "w_scale_inv": t.ones(2, 2)}, {"weight_block_size": [8, 8]},
     r"tensor 'w_scale_inv' has shape \[2, 2\], but its weight \[8, 8\] needs \[1, 1\] \(blocks of \[8, 8\]\)"),
    (lambda t: {"w_scale_inv": t.ones(1, 1)}, {"weight_block_size": [8, 8]},
     r"holds 'w_scale_inv' but not the weight it scales, 'w'"),
    (lambda t: {"w": t.zeros(8, 8).to(t.float8_e4m3fn), "w_scale_inv": t.ones(1, 1)}, {"weight_block_size": [8]},
     r"quantization_config.weight_block_size is \[8\]; an FP8 release has two positive block sizes"),
    (lambda t: {"w": t.zeros(8, 8).to(t.float8_e4m3fn), "w_scale_inv": t.ones(8, 2)}, {"weight_block_size": None},
     r"has shape \[8, 2\], but its weight \[8, 8\] needs a shape that broadcasts to it \(one value, or one per row \[8\]\)"),
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
                                              r"and float8 ones with their scales \(an FP8 release"):
        ModelFolder(folder).read("w")


def test_a_quant_method_we_do_not_read_names_the_fix(tmp_path):
    import torch

    folder = write_model(tmp_path / "m", {"w": torch.zeros(8, 8)}, {"quant_method": "awq", "bits": 4})
    with pytest.raises(ConversionError, match=r"config.json: declares awq weights \(quantization_config\), which this "
                                              r"converter does not dequantize\n  fix: CONVERTER: auto"):
        ModelFolder(folder)


# --- whole releases against llama.cpp's converter --------------------------------------------------------------------
RELEASES = {  # variant: (block, scale dtype), as the family's release stores its scales
    "deepseek-v3": ((48, 32), "float32"),  # DeepSeek-V3/R1: float32 scales (here a non-square block)
    "qwen3": ((48, 48), "bfloat16"),  # Qwen3-*-FP8: bfloat16 scales
}


@pytest.fixture(scope="module")
def releases(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fp8")
    return {v: fp8_release(fixture(v), root / v, block, dtype) for v, (block, dtype) in RELEASES.items()}


@pytest.mark.reference
@pytest.mark.slow
@pytest.mark.parametrize("variant, outtype", [("deepseek-v3", "F32"), ("deepseek-v3", "F16"), ("deepseek-v3", "BF16"),
                                              ("qwen3", "F16"), ("qwen3", "Q8_0")])
def test_an_fp8_release_converts_as_llama_cpps_converter_converts_it(releases, variant, outtype, tmp_path):
    import reference_converter
    from reference import compare

    from hf2gguf.convert import convert

    release = releases[variant]
    theirs = tmp_path / "theirs.gguf"
    reference_converter.convert(release, theirs, outtype, reference_converter.build_env())
    ours = convert(release, tmp_path / "ours.gguf", outtype, log=lambda m: None, threads=2)
    c = compare(ours, theirs)
    assert not c.tensors and not c.kvs and c.same_order, c.report()
    model = ModelFolder(release)
    assert model.scales and all(model.tensors[w].dtype == "F8_E4M3" for w in model.scales)


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
