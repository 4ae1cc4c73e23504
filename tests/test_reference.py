"""Our converter's GGUFs against llama.cpp's own convert_hf_to_gguf.py (b11312, from the same pinned sdist), on
tiny random checkpoints of every supported architecture (tests/generators/models.py) at F32, F16, BF16 and Q8_0:
the same tensors (names, shapes, types, bytes) and the same KV pairs (value types and values), except:

- general.name, general.basename, general.finetune, general.version, general.organization, general.size_label:
  display and authorship labels the reference guesses from the folder name, a model card or the parameter
  count. llama.cpp only prints them. Ours names the file after the workflow's model.
- hf2gguf.*: our provenance (converter version, precision, source digest).

(The exact list, with reasons, is reference.ALLOWED_KV.) Tensor order is reported in the table, not required:
llama.cpp finds tensors by name. Every variant except gpt2-v5 takes part: the reference reads GPT-2's n_ctx,
which transformers v5 no longer writes (tests/test_logits.py covers that one).

The reference runs in a subprocess with b11312's gguf-py on PYTHONPATH; its outputs and the fixtures are cached
under $HF2GGUF_CACHE/fixtures/ (this file and test_logits.py together: about 80 s on 2 cores from an empty cache,
40 s cached). The comparison table is printed at the end of the session, and by
`python tests/reference.py --table [--details]`.
"""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from reference import (ALLOWED_KV, OUTTYPES, VARIANTS, Comparison, compare, compare_pair, ensure_reference, our_gguf,
                       read_gguf, selected_variants, table)

pytestmark = [pytest.mark.reference, pytest.mark.slow]

RESULTS: dict[tuple[str, str], Comparison] = {}


class _Table:
    """Prints the comparison table after the test summary."""

    def pytest_terminal_summary(self, terminalreporter):
        if RESULTS:
            terminalreporter.write_sep("=", "our converter vs llama.cpp's convert_hf_to_gguf.py (b11312)")
            terminalreporter.write_line(table(dict(sorted(RESULTS.items(), key=_order))))


def _order(item):
    (variant, outtype), _ = item
    return list(VARIANTS).index(variant), OUTTYPES.index(outtype)


@pytest.fixture(scope="session", autouse=True)
def _print_table(request):
    if not request.config.pluginmanager.has_plugin("hf2gguf-reference-table"):
        request.config.pluginmanager.register(_Table(), "hf2gguf-reference-table")


@pytest.fixture(scope="session")
def reference_outputs(request):
    return ensure_reference(selected_variants(request.session, default=["gemma"]), log=print)


@pytest.fixture(scope="session")
def ours(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ours")
    return lambda variant, outtype: our_gguf(variant, outtype, folder)


@pytest.mark.parametrize("outtype", OUTTYPES)
@pytest.mark.parametrize("variant", [n for n, v in VARIANTS.items() if v.reference])
def test_same_gguf_as_llama_cpp_converter(variant, outtype, reference_outputs, ours):
    c = compare_pair(ours(variant, outtype), reference_outputs[variant, outtype])
    RESULTS[variant, outtype] = c
    assert c.equal, f"{variant} at {outtype} differs from convert_hf_to_gguf.py's output:\n{c.report()}"


# --- the comparison itself can fail ------------------------------------------------------------------------------
def test_fast_reader_agrees_with_gguf_reader(reference_outputs):
    """read_gguf (used for speed) sees what gguf.GGUFReader sees: every KV with its type, every tensor."""
    import gguf

    path = reference_outputs["gemma", "Q8_0"].path
    ours, theirs = read_gguf(path), gguf.GGUFReader(path)
    fields = {k: f for k, f in theirs.fields.items() if not k.startswith("GGUF.")}
    assert list(ours.kvs) == list(fields)
    for key, f in fields.items():
        kind = f.types[0].name if len(f.types) == 1 else f"{f.types[0].name}[{f.types[1].name}]"
        assert ours.kvs[key] == (kind, f.contents()), key
    assert [(t.name, t.shape, t.type) for t in ours.tensors] == \
        [(t.name, tuple(int(n) for n in t.shape), t.tensor_type) for t in theirs.tensors]
    for a, b in zip(ours.tensors, theirs.tensors):
        assert a.raw.tobytes() == np.asarray(b.data).tobytes(), a.name


def test_comparison_reports_a_changed_value_and_kv(reference_outputs, tmp_path):
    """A GGUF against itself is equal; one changed weight and one changed KV are each reported, by name."""
    import gguf

    original = reference_outputs["gemma", "F32"].path
    assert compare(original, original).equal
    changed = shutil.copy(original, tmp_path / "changed.gguf")
    r = gguf.GGUFReader(changed, "r+")
    weight = next(t for t in r.tensors if t.name == "blk.1.ffn_down.weight")
    weight.data[3, 5] += 0.25
    count = r.fields["gemma.block_count"]
    count.parts[count.data[0]][0] = 7
    r.data.flush()
    del r
    c = compare(changed, original)
    assert not c.equal
    assert len(c.tensors) == 1 and c.tensors[0].startswith("blk.1.ffn_down.weight: 1 of ") and "0.25" in c.tensors[0]
    assert c.kvs == ["gemma.block_count: 7, reference 2"]


def test_allow_list_is_short_and_justified():
    assert len(ALLOWED_KV) <= 8 and all(len(reason) > 30 for reason in ALLOWED_KV.values())
