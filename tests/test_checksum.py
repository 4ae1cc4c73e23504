"""scripts/checksum.py against coreutils' sha256sum: the same lines, for a GGUF and for a folder of shards, which
`sha256sum -c` then checks; bad input leaves no checksum file."""
import subprocess
import sys

from conftest import ROOT

SCRIPT = ROOT / "scripts" / "checksum.py"


def checksum(path, out):
    return subprocess.run([sys.executable, SCRIPT, path, out], capture_output=True, text=True)


def sha256sum(folder, name):  # what the rule ran before: coreutils over the sorted .gguf files
    return subprocess.run(f"find {name} -name '*.gguf' | sort | xargs sha256sum", shell=True, cwd=folder,
                          capture_output=True, text=True, check=True).stdout


def test_a_gguf(tmp_path):
    (tmp_path / "m-Q4_0.gguf").write_bytes(bytes(range(256)) * 5000)
    out = tmp_path / "m-Q4_0.gguf.sha256"
    assert checksum(tmp_path / "m-Q4_0.gguf", out).returncode == 0
    assert out.read_text() == sha256sum(tmp_path, "m-Q4_0.gguf")
    check = subprocess.run(["sha256sum", "-c", out.name], cwd=tmp_path, capture_output=True, text=True)
    assert check.returncode == 0 and check.stdout == "m-Q4_0.gguf: OK\n"


def test_a_folder_of_shards(tmp_path):
    folder = tmp_path / "m-Q4_0"
    folder.mkdir()
    for i in (3, 1, 2):
        (folder / f"m-Q4_0-0000{i}-of-00003.gguf").write_bytes(bytes([i]) * (1000 * i))
    out = tmp_path / "m-Q4_0.gguf.sha256"
    assert checksum(folder, out).returncode == 0
    assert out.read_text() == sha256sum(tmp_path, "m-Q4_0")
    assert [line.split("  ")[1] for line in out.read_text().splitlines()] == [
        f"m-Q4_0/m-Q4_0-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    check = subprocess.run(["sha256sum", "-c", out.name], cwd=tmp_path, capture_output=True, text=True)
    assert check.returncode == 0 and check.stdout.count(": OK") == 3


def test_missing_or_empty_input_leaves_nothing(tmp_path):
    out = tmp_path / "m.gguf.sha256"
    run = checksum(tmp_path / "m.gguf", out)
    assert run.returncode != 0 and "m.gguf: no such GGUF or folder of shards" in run.stderr
    (tmp_path / "empty").mkdir()
    run = checksum(tmp_path / "empty", out)
    assert run.returncode != 0 and "holds no .gguf file" in run.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]
