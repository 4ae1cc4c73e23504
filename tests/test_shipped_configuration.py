"""The shipped configurations/ as a user has it (the other tests use tests/configurations/): plain `snakemake` builds
every pair it lists, and again after the edits the README invites (a precision changed, a pair removed, one added).
The expected outputs are read from the YAMLs with plain yaml, not with the workflow's code."""
from __future__ import annotations

import shutil

import gguf
import pytest
import yaml
from conftest import ROOT, configured_pairs, copy_workflow, edit_yaml, file_type, pair_yamls, snakemake

pytestmark = pytest.mark.workflow


def expected_outputs(wf) -> dict:
    """{pair: (precision, [GGUF files])} of every llama.cpp pair of wf's configuration, checked: each output (a file,
    or the folder of its shards when the pair is split) exists with its checksum, and its validation report unless
    VALIDATE is false."""
    general = yaml.safe_load((wf / "configurations/converter_args.yaml").read_text())
    outputs = wf / general.get("OUTPUTS_DIR", "outputs")
    found = {}
    for pair, fields in pair_yamls(wf / "configurations").items():
        name = f"{general['MODEL_NAME']}-{fields['PRECISION']}"
        split = fields.get("SPLIT_MAX_SIZE") or fields.get("SPLIT_MAX_TENSORS")
        files = sorted((outputs / pair / name).glob("*.gguf")) if split else [outputs / pair / f"{name}.gguf"]
        assert files and all(f.is_file() for f in files), (pair, files)
        assert (outputs / pair / f"{name}.gguf.sha256").is_file(), pair
        if general.get("VALIDATE", True):
            assert (outputs / pair / f"{name}.json").is_file(), pair
        found[pair] = fields["PRECISION"], files
    return found


def check_outputs(wf) -> dict:
    """expected_outputs(wf), each a GGUF that gguf reads, declaring its precision's file type (when gguf names it)."""
    found = expected_outputs(wf)
    for pair, (precision, files) in found.items():
        fields = gguf.GGUFReader(files[0]).fields  # the first shard holds the KV of a split output
        if file_type(precision) is not None:
            assert fields["general.file_type"].contents() == file_type(precision), (pair, precision)
    return found


def test_the_shipped_configuration_builds_and_so_does_an_edited_one(tmp_path):
    shipped = ROOT / "configurations"
    pairs = configured_pairs(shipped)
    assert pairs, "the shipped configuration has no *_LLAMA pair"
    wf = copy_workflow(tmp_path / "wf", configurations=shipped)
    general = yaml.safe_load((shipped / "converter_args.yaml").read_text())
    model = wf / general.get("MODELS_DIR", "models") / general["MODEL_NAME"]
    if not model.is_dir():
        pytest.skip(f"the shipped configuration builds {model.name}, which is not in models/ (the tests reach no Hub)")
    snakemake(wf)
    assert check_outputs(wf).keys() == pairs.keys()

    # a user's edits: one pair's precision changed, one pair removed (when there are two), a new pair added
    config = wf / "configurations"
    first, *rest = pairs
    changed = "Q5_K_M" if pairs[first] != "Q5_K_M" else "Q5_K_S"
    edit_yaml(config / first / f"converter_args_{first.lower()}.yaml", lambda d: d.update(PRECISION=changed))
    if rest:
        shutil.rmtree(config / rest[-1])
    new = next(p for p in ("NPU_LLM_LLAMA", "NPU2_LLM_LLAMA") if p not in pairs)
    (config / new).mkdir()
    (config / new / f"converter_args_{new.lower()}.yaml").write_text("PRECISION: Q6_K\n")
    snakemake(wf)
    found = check_outputs(wf)
    expected = {**pairs, first: changed, new: "Q6_K"}
    if rest:
        del expected[rest[-1]]
    assert {pair: precision for pair, (precision, _) in found.items()} == expected
