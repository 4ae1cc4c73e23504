"""Peak memory does not grow with the model: a bound that is not noisy, unlike a timing."""
from __future__ import annotations

import subprocess
import sys

import gguf
from conftest import ROOT, make_gpt2

# The converter's CLI, then its own peak resident memory. VmHWM belongs to the process image after exec, so
# it does not count what the (large) test process held when it forked.
MEASURED = """
import re, sys
sys.path.insert(0, sys.argv[1])
from hf2gguf.cli import main
code = main(sys.argv[2:])
print(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1))
sys.exit(code)
"""


def test_peak_rss_stays_under_a_tenth_of_the_model_plus_150_mib(tmp_path):
    model = make_gpt2(tmp_path / "m", n_embd=1024, n_layer=8, n_head=8, n_positions=1024, dtype="BF16")
    size = (model / "model.safetensors").stat().st_size
    assert size > 200 * 2**20
    out = tmp_path / "o.gguf"
    proc = subprocess.run([sys.executable, "-c", MEASURED, ROOT / "scripts", model, "-o", out, "--outtype", "F16",
                           "--threads", "2"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    peak = int(proc.stdout.split()[-1]) * 1024
    assert peak <= 0.10 * size + 150 * 2**20, f"peak RSS {peak / 2**20:.0f} MiB for a {size / 2**20:.0f} MiB model"
    assert len(gguf.GGUFReader(out).tensors) == 100
