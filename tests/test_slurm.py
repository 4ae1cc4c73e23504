"""The workflow on a real Slurm cluster, through profiles/slurm and snakemake-executor-plugin-slurm.

The cluster is this machine (tests/slurm/cluster.sh start: slurmctld, slurmd, slurmdbd, MariaDB, munge; one
node with one fake GPU and two partitions, debug and gpu). Jobs are checked in Slurm's own accounting
(sacct), not only in Snakemake's output. With CI=true a missing cluster fails these tests; elsewhere it skips.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import gguf
import pytest

from conftest import ROOT, Run, copy_workflow, pair_yamls

pytestmark = [pytest.mark.slurm, pytest.mark.workflow]

CLUSTER = ROOT / "tests" / "slurm" / "cluster.sh"
MODEL = "tiny-gpt2"
CPU, GPU = "CPU_LLM_LLAMA", "GPU_LLM_LLAMA"
TARGETS = [f"outputs/{CPU}/{MODEL}-Q8_0.gguf.sha256", f"outputs/{GPU}/{MODEL}-Q4_K_M.gguf.sha256"]
# Fast status checks; everything else comes from the profiles, as a user runs them. The node has 2 CPUs, fewer
# than the profile's threads for convert (4) and than a quantize group's sum: the workflow fits them to it.
FAST = ["--seconds-between-status-checks", "1", "--slurm-init-seconds-before-status-checks", "2"]
NO_VALIDATION = ["--config", "VALIDATE=False"]  # last: --config takes every argument after it
TIMEOUT = 240  # seconds per Snakemake run: a hang (the no-slurmdbd pitfall) fails instead of blocking CI


def cluster_problem() -> str | None:
    """Why the Slurm tests cannot run here, or None."""
    try:
        import snakemake_executor_plugin_slurm  # noqa: F401
    except ImportError:
        return "snakemake-executor-plugin-slurm is not installed (pip install snakemake-executor-plugin-slurm==2.8.0)"
    if not shutil.which("sbatch"):
        return "no Slurm client here: run `tests/slurm/cluster.sh start` (as root) to install and start a test cluster"
    try:
        states = subprocess.run(["sinfo", "-h", "-N", "-o", "%t"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer: run `tests/slurm/cluster.sh start`"
    if states.returncode != 0 or not re.search(r"^(idle|mix|alloc)", states.stdout, re.M):
        return f"no Slurm node takes jobs ({(states.stdout + states.stderr).strip()}): run `tests/slurm/cluster.sh start`"
    return None


@pytest.fixture(scope="module", autouse=True)
def slurm_cluster():
    problem = cluster_problem()
    if problem:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"Slurm tests cannot run: {problem}")
        pytest.skip(problem)


def snakemake(workdir: Path, *args: str, timeout: int = TIMEOUT, profiles=("profiles/slurm",),
              env: dict | None = None) -> Run:
    """Snakemake through the Slurm profile. On timeout it gets SIGINT (it then cancels its Slurm jobs), the
    workflow is unlocked, and the test fails with the output so far."""
    cmd = [sys.executable, "-m", "snakemake", *(a for p in profiles for a in ("--profile", p)), *FAST, *args]
    proc = subprocess.Popen(cmd, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        subprocess.run([sys.executable, "-m", "snakemake", "--unlock", "--cores", "1"], cwd=workdir,
                       capture_output=True)
        pytest.fail(f"snakemake {' '.join(args)} did not finish within {timeout}s (interrupted):\n"
                    f"{(out + err)[-6000:]}")
    return Run(subprocess.CompletedProcess(cmd, proc.returncode, out, err))


def ok(run: Run) -> Run:
    assert run.returncode == 0, run.output[-6000:]
    return run


def run_id(run: Run) -> str:
    """The plugin names every Slurm job of one Snakemake run after the run's id."""
    m = re.search(r"SLURM run ID: (\S+)", run.output)
    assert m, run.output[-3000:]
    return m.group(1)


def sacct(run: Run, expect: int | None = None) -> list[dict]:
    """The run's jobs as Slurm accounted them (slurmdbd receives records a moment after a job ends)."""
    fields = ["JobID", "Comment", "State", "Partition", "Account", "AllocTRES", "ExitCode", "AllocCPUS", "ReqMem", "ElapsedRaw"]
    for _ in range(40):
        proc = subprocess.run(["sacct", "-X", "-n", "-P", "--starttime", "now-1days", "--name", run_id(run),
                               "-o", ",".join(f"{f}%400" for f in fields)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        jobs = [dict(zip(fields, line.split("|"))) for line in proc.stdout.splitlines() if line]
        done = all(j["State"] not in ("PENDING", "RUNNING") for j in jobs)
        if done and (expect is None or len(jobs) >= expect):
            return jobs
        time.sleep(0.5)
    return jobs


def rules_of(job: dict) -> str:
    """The plugin's comment: rule_<rule>_wildcards_<values> (a group job: rule_<rules>_<group>)."""
    return job["Comment"]


def tensor_types(path: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in gguf.GGUFReader(path).tensors:
        counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + 1
    return counts


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One model built for two pairs through Slurm. The GPU pair's validation is sent to partition gpu and
    account hf2gguf-gpu (the per-pair fields), with the GPU it asks for in the tests' YAML (GPUS: 1)."""
    wf = copy_workflow(tmp_path_factory.mktemp("slurm") / "wf")
    pair_yaml = wf / "configurations" / GPU / "converter_args_gpu_llm_llama.yaml"
    assert pair_yamls(wf / "configurations")[GPU].get("GPUS") == 1
    with open(pair_yaml, "a") as f:
        f.write("SLURM_PARTITION: gpu\nSLURM_ACCOUNT: hf2gguf-gpu\n")
    start = time.monotonic()
    run = ok(snakemake(wf, *TARGETS, *NO_VALIDATION))
    return wf, run, time.monotonic() - start


def test_build_two_pairs_through_slurm(built):
    wf, run, seconds = built
    print(f"full build through Slurm: {seconds:.1f}s")
    jobs = sacct(run, expect=4)
    comments = sorted(rules_of(j) for j in jobs)
    # convert twice (the F16 intermediate, and Q8_0 directly), the toolchain copy, and the two pairs' quantize
    # and checksum jobs grouped into one Slurm job (group "quantize", group-components in profiles/slurm).
    assert len(jobs) == 4, jobs
    assert [c for c in comments if c.startswith("rule_convert")] == [
        f"rule_convert_wildcards_{MODEL}_F16", f"rule_convert_wildcards_{MODEL}_Q8_0"]
    assert "rule_llama_cpp" in comments
    group = [c for c in comments if "quantize" in c and "checksum" in c]
    assert len(group) == 1, comments
    assert all(j["State"] == "COMPLETED" and j["ExitCode"] == "0:0" for j in jobs), jobs
    assert all(j["Partition"] == "debug" for j in jobs), jobs  # the cluster's default partition
    # No job asked for more than the node has (2 CPUs): convert's 4 threads were capped, and the group job
    # of two quantize jobs (2 threads each) and their checksums runs them one after the other.
    assert all(int(j["AllocCPUS"]) <= 2 for j in jobs), jobs
    for target in TARGETS:
        gguf_path = wf / target[: -len(".sha256")]
        assert (wf / target).read_text().split()[0] == sha256(gguf_path)
    assert tensor_types(wf / f"outputs/{CPU}/{MODEL}-Q8_0.gguf").keys() == {"F32", "Q8_0"}
    assert "Q4_K" in tensor_types(wf / f"outputs/{GPU}/{MODEL}-Q4_K_M.gguf")
    # Nothing left to do: a second run submits nothing.
    again = ok(snakemake(wf, *TARGETS, *NO_VALIDATION))
    assert "Nothing to be done" in again.output, again.output[-3000:]


def test_incremental_rebuild_submits_only_the_stale_job(built):
    wf = built[0]
    cpu_out, gpu_out = wf / f"outputs/{CPU}/{MODEL}-Q8_0.gguf", wf / f"outputs/{GPU}/{MODEL}-Q4_K_M.gguf"
    cpu_before, gpu_before = (cpu_out.stat().st_mtime_ns, sha256(cpu_out)), tensor_types(gpu_out)
    with open(wf / "configurations" / GPU / "converter_args_gpu_llm_llama.yaml", "a") as f:
        f.write("PURE: true\n")  # a llama-quantize option: only this pair's quantize (and its checksum) is stale
    # SBATCH_PARTITION, Slurm's own variable, picks the partition of every job (profiles/slurm)
    run = ok(snakemake(wf, *TARGETS, *NO_VALIDATION, env={"SBATCH_PARTITION": "gpu"}))
    assert run.jobs() == {"quantize": 1, "checksum": 1}, run.output[-3000:]
    jobs = sacct(run, expect=1)
    assert len(jobs) == 1 and "quantize" in rules_of(jobs[0]), jobs  # one Slurm job: the pair's group
    assert jobs[0]["Partition"] == "gpu", jobs
    assert (cpu_out.stat().st_mtime_ns, sha256(cpu_out)) == cpu_before
    gpu_after = tensor_types(gpu_out)
    assert gpu_after != gpu_before and "Q6_K" not in gpu_after, (gpu_before, gpu_after)  # --pure: no Q6_K mix
    assert (wf / f"{gpu_out}.sha256").read_text().split()[0] == sha256(gpu_out)


def test_gpu_pair_validation_requests_a_gpu(built):
    wf = built[0]
    reports = [f"outputs/{CPU}/{MODEL}-Q8_0.json", f"outputs/{GPU}/{MODEL}-Q4_K_M.json"]
    run = ok(snakemake(wf, *reports))
    assert run.jobs() == {"kld_base": 1, "validate": 2}, run.output[-3000:]
    jobs = {rules_of(j): j for j in sacct(run, expect=3)}
    gpu_job = jobs[f"rule_validate_wildcards_{GPU}_{MODEL}_Q4_K_M"]
    cpu_job = jobs[f"rule_validate_wildcards_{CPU}_{MODEL}_Q8_0"]
    base_job = jobs[f"rule_kld_base_wildcards_{MODEL}"]
    assert "gres/gpu=1" in gpu_job["AllocTRES"], gpu_job
    assert (gpu_job["Partition"], gpu_job["Account"]) == ("gpu", "hf2gguf-gpu"), gpu_job
    for job in (cpu_job, base_job):  # no GPU, default partition and account
        assert "gpu" not in job["AllocTRES"] and job["Partition"] == "debug", job
        assert job["Account"] != "hf2gguf-gpu", job
    for report in reports:
        assert '"kl_divergence"' in (wf / report).read_text()


def test_gpu_pair_benchmark_runs_on_its_partition_with_its_gpu(built):
    """The benchmark (rule speed, llama-bench) runs where the file will run, as validation does: the GPU pair's
    job on partition gpu and account hf2gguf-gpu, with its GPU, and every layer offloaded (-ngl 99)."""
    wf = built[0]
    target = f"outputs/{GPU}/{MODEL}-Q4_K_M.speed.json"
    run = ok(snakemake(wf, target))
    assert run.jobs() == {"speed": 1}, run.output[-3000:]
    jobs = {rules_of(j): j for j in sacct(run, expect=1)}
    job = jobs[f"rule_speed_wildcards_{GPU}_{MODEL}_Q4_K_M"]
    assert "gres/gpu=1" in job["AllocTRES"], job
    assert (job["Partition"], job["Account"]) == ("gpu", "hf2gguf-gpu"), job
    speed = json.loads((wf / target).read_text())
    assert speed["prompt_tps"] > 0 and speed["generation_tps"] > 0 and speed["n_gpu_layers"] == 99


@pytest.fixture
def no_slurmdbd():
    """slurmdbd stopped for the test (sacct fails, as on clusters without accounting), restarted after."""
    subprocess.run([str(CLUSTER), "dbd", "stop"], check=True, capture_output=True)
    try:
        yield
    finally:
        subprocess.run([str(CLUSTER), "dbd", "start"], check=True, capture_output=True)


def test_no_slurmdbd_mode_completes(built, no_slurmdbd):
    wf = built[0]
    probe = subprocess.run(["sacct", "-X", "-n"], capture_output=True, text=True)
    assert probe.returncode != 0, "sacct still works: slurmdbd did not stop"
    checksum = wf / TARGETS[0]
    checksum.unlink()
    start = time.monotonic()
    run = ok(snakemake(wf, *TARGETS, *NO_VALIDATION,
                       profiles=("profiles/slurm", "profiles/slurm-nodbd"), timeout=120))
    print(f"no-slurmdbd run: {time.monotonic() - start:.1f}s")
    assert run.jobs() == {"checksum": 1}, run.output[-3000:]
    assert "has been submitted with SLURM jobid" in run.output
    assert checksum.read_text().split()[0] == sha256(wf / TARGETS[0][: -len(".sha256")])


def test_failing_job_exits_nonzero_naming_its_log(built):
    wf = built[0]
    intermediate = wf / f"outputs/intermediate/{MODEL}-F16.gguf"
    intermediate.write_bytes(b"not a GGUF file" * 100)  # newer than the GPU pair's output: quantize reruns
    run = snakemake(wf, TARGETS[1], *NO_VALIDATION)
    assert run.returncode != 0, run.output[-3000:]
    logs = re.findall(r"log: (\S*slurm_logs\S*\.log)", run.output)
    assert logs, run.output[-3000:]
    slurm_log = Path(logs[0])
    assert slurm_log.is_file(), slurm_log
    assert "Error in rule quantize" in slurm_log.read_text(), slurm_log.read_text()[-3000:]
    rule_log = wf / f"outputs/logs/quantize/{GPU}/{MODEL}-Q4_K_M.log"
    assert str(rule_log.relative_to(wf)) in run.output and rule_log.stat().st_size > 0
    # profiles/slurm retries a failed job twice, then the run stops and says what each attempt did
    jobs = sacct(run, expect=3)
    assert [j["State"] for j in jobs] == ["FAILED"] * 3 and jobs[0]["ExitCode"] != "0:0", jobs
    assert re.search(r"hf2gguf \(cluster\): group job quantize_checksum_quantize was retried: attempt 1 \(job \d+, "
                     r"[^)]*\): ended FAILED; attempt 2 .*; attempt 3 \(job \d+, [^)]*\): FAILED", run.output), \
        run.output[-3000:]  # fmt: skip
    assert not (wf / f"outputs/{GPU}/{MODEL}-Q4_K_M.gguf").exists()  # no partial output left behind
