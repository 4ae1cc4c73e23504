"""Every way a cluster run can go wrong ends in a finished build or one clear message, never in a wait
(rules/cluster.smk, scripts/cluster.py, profiles/slurm). On the real one-node test cluster (2 CPUs, memory
enforced: tests/slurm/slurm.conf.in), through the shipped profile, each outcome checked in Slurm itself
(sacct, squeue) as well as in Snakemake's output.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, Run, configured_pairs, copy_workflow, edit_yaml
from test_slurm import FAST, MODEL, NO_VALIDATION, ok, run_id, sacct, sha256, slurm_cluster, snakemake  # noqa: F401

pytestmark = [pytest.mark.slurm, pytest.mark.workflow]

CPU, GPU = "CPU_LLM_LLAMA", "GPU_LLM_LLAMA"
Q8 = f"outputs/{CPU}/{MODEL}-Q8_0.gguf"  # converted directly (convert Q8_0, then the pair's copy)
Q4 = f"outputs/{GPU}/{MODEL}-Q4_K_M.gguf"  # convert F16, then llama-quantize
INTERRUPT_BOUND = 15  # seconds from SIGINT/SIGTERM to exit (scripts/cluster.py: Interrupt, grace 5 s)


@pytest.fixture
def wf(tmp_path):
    return copy_workflow(tmp_path / "wf")


def ours(wf: Path) -> list[str]:
    """squeue lines of jobs whose working directory is the workflow's."""
    out = subprocess.run(["squeue", "-h", "-o", "%i|%T|%r|%Z|%k"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if line.split("|")[3] == str(wf)]


def start(wf: Path, *args: str, profiles=("profiles/slurm",), fast=True) -> subprocess.Popen:
    """Snakemake in the background, its output to a file (a pipe nobody reads while it runs would fill up and
    block it)."""
    cmd = [sys.executable, "-m", "snakemake", *(a for p in profiles for a in ("--profile", p)),
           *(FAST if fast else ()), *args]  # fmt: skip
    out = open(wf.parent / f"snakemake-{time.monotonic_ns()}.out", "w+")
    proc = subprocess.Popen(cmd, cwd=wf, stdout=out, stderr=subprocess.STDOUT, text=True)
    proc.output_file = out
    return proc


def finish(proc: subprocess.Popen, timeout: float = 240) -> Run:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    proc.output_file.seek(0)
    out = proc.output_file.read()
    proc.output_file.close()
    if proc.returncode == -signal.SIGKILL:
        pytest.fail(f"snakemake did not finish within {timeout}s:\n{out[-6000:]}")
    return Run(subprocess.CompletedProcess(proc.args, proc.returncode, out, ""))


def wait_for_job(wf: Path, state: str, rule: str = "", timeout: float = 120) -> str:
    """The Slurm id of the first job of the run in `state` (and of `rule`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in ours(wf):
            jobid, st, _reason, _wd, comment = line.split("|")
            if st == state and f"rule_{rule}" in comment:
                return jobid
        time.sleep(0.2)
    pytest.fail(f"no {state} job of rule {rule or 'any'} within {timeout}s: {ours(wf)}")


def states(run: Run, expect: int) -> list[tuple[str, str, str]]:
    """(comment, state, requested memory) of each Slurm job of the run, in submission order."""
    jobs = sacct(run, expect=expect)
    proc = subprocess.run(["sacct", "-X", "-n", "-P", "--name", run_id(run), "-o", "JobID,ReqMem"],
                          capture_output=True, text=True)  # fmt: skip
    mem = dict(line.split("|") for line in proc.stdout.splitlines() if line)
    jobs.sort(key=lambda j: int(j["JobID"]))
    return [(j["Comment"], j["State"].split()[0], mem.get(j["JobID"], "")) for j in jobs]


def test_request_no_node_can_hold_stops_before_anything_is_submitted(wf):
    edit_yaml(wf / "configurations" / GPU / "converter_args_gpu_llm_llama.yaml",
              lambda d: d.update(GPUS=4))  # the node has one GPU
    start_ = time.monotonic()
    run = snakemake(wf, Q8, f"outputs/{GPU}/{MODEL}-Q4_K_M.json", "--set-resources", "convert:mem_mb=999999")
    seconds = time.monotonic() - start_
    assert run.returncode != 0, run.output[-3000:]
    node_mem = int(re.search(r"RealMemory=(\d+)", Path("/etc/slurm/slurm.conf").read_text()).group(1))
    out = run.output
    assert "No node can run these jobs, so nothing was submitted" in out, out[-3000:]
    assert (f"rule convert (model={MODEL}, ftype=Q8_0) needs 999999 MB of memory, but the largest node of "
            f"partition debug has 2 CPUs and {node_mem} MB, 1 GPU(s)") in out, out[-3000:]  # fmt: skip
    assert re.search(rf"rule validate \(pair={GPU}, model={MODEL}, precision=Q4_K_M\) needs 4 GPU\(s\), but the "
                     r"largest node of partition debug", out), out[-3000:]  # fmt: skip
    assert "has been submitted with SLURM jobid" not in out
    assert sacct(run) == [] and ours(wf) == []  # Slurm never saw a job of this run
    assert not (wf / "outputs" / "intermediate").exists()
    print(f"start-up refusal: {seconds:.1f}s")


def test_job_that_can_never_start_stops_the_run(wf):
    # cpus_per_task overrides the capped threads: the job asks for 4 CPUs of a 2-CPU node, and Slurm keeps it
    # pending with reason PartitionConfig (which Snakemake alone would wait on for ever).
    start_ = time.monotonic()
    run = snakemake(wf, Q8, "--set-resources", "convert:cpus_per_task=4", *NO_VALIDATION, timeout=120)
    seconds = time.monotonic() - start_
    assert run.returncode != 0, run.output[-3000:]
    assert re.search(r"error: Slurm job \d+, rule convert \(tiny-gpt2_Q8_0\), can never start: Slurm's reason is "
                     r"PartitionConfig\. It asks for 4 CPUs and 512M of memory on partition debug; its largest node "
                     r"has 2 CPUs", run.output), run.output[-3000:]  # fmt: skip
    assert [s for _c, s, _m in states(run, expect=1)] == ["CANCELLED"]
    assert ours(wf) == [] and not (wf / "outputs" / "intermediate").exists()
    assert not list((wf / ".snakemake" / "locks").glob("*"))  # the next run needs no --unlock
    print(f"never-starting job reported and the run stopped after {seconds:.1f}s")


def test_job_killed_for_memory_is_retried_with_more(wf):
    # Slurm kills a step whose memory passes the job's --mem (OverMemoryKill): the job step (Snakemake in the
    # job, then the converter) needs about 145 MB, so 100 MB is killed and the retry's 200 MB is enough. The retry
    # also gets twice the time (the converter's runtime, rules/common.smk, grows with the attempt).
    run = ok(snakemake(wf, Q8, "--set-resources", "convert:mem_mb=100*attempt", *NO_VALIDATION))
    converts = [(s, m) for c, s, m in states(run, expect=3) if c.startswith("rule_convert")]
    assert converts == [("FAILED", "100M"), ("COMPLETED", "200M")], converts
    first = next(Path(wf, ".snakemake", "slurm_logs").rglob("*.log"))  # the failed attempt's log is kept
    assert "exceeded memory limit" in first.read_text()  # Slurm's own words
    assert re.search(r"hf2gguf \(cluster\): rule convert \(tiny-gpt2_Q8_0\) was retried: attempt 1 \(job \d+, 100M, "
                     r"00:10:00\): killed for memory; attempt 2 \(job \d+, 200M, 00:20:00\): COMPLETED",
                     run.output), run.output[-3000:]  # fmt: skip
    assert (wf / Q8).is_file()


def test_running_job_cancelled_outside_the_workflow_is_reported_and_the_rerun_finishes(wf):
    # Snakemake's Slurm plugin does not recognise sacct's "CANCELLED by <uid>" and would wait for ever.
    proc = start(wf, Q8, *NO_VALIDATION)
    jobid = wait_for_job(wf, "RUNNING", "convert")
    subprocess.run(["scancel", jobid], check=True)
    t0 = time.monotonic()
    run = finish(proc)
    print(f"external scancel reported and the run stopped after {time.monotonic() - t0:.1f}s")
    assert run.returncode != 0, run.output[-3000:]
    assert re.search(rf"error: Slurm job {jobid}, rule convert \(tiny-gpt2_Q8_0\), was cancelled outside the "
                     r"workflow \(CANCELLED by \d+\)", run.output), run.output[-3000:]  # fmt: skip
    assert ours(wf) == [] and not (wf / Q8).exists()
    again = ok(snakemake(wf, Q8, *NO_VALIDATION))
    assert again.jobs().get("convert") == 1, again.output[-3000:]
    assert (wf / Q8).is_file()


@pytest.fixture
def node_back():
    yield
    subprocess.run(["scontrol", "update", "nodename=localhost", "state=resume"], capture_output=True)


def test_node_down_mid_run_is_reported_and_the_rerun_finishes(wf, node_back):
    proc = start(wf, Q8, *NO_VALIDATION)
    wait_for_job(wf, "RUNNING", "convert")
    subprocess.run(["scontrol", "update", "nodename=localhost", "state=down", "reason=hf2gguf-test"], check=True)
    deadline = time.monotonic() + 60
    while "NODE_FAIL" not in subprocess.run(["sacct", "-X", "-n", "-o", "State", "--starttime", "now-10minutes"],
                                            capture_output=True, text=True).stdout:  # fmt: skip
        assert time.monotonic() < deadline, "the job did not end NODE_FAIL"
        time.sleep(0.5)
    # (the test cluster's slurmd still answers, so the node may come back by itself: ReturnToService=2)
    subprocess.run(["scontrol", "update", "nodename=localhost", "state=resume"], capture_output=True)
    run = finish(proc)
    # The plugin resubmits excluding the failed node, and this cluster has no other: the run ends with an error
    # that names the node failure, and leaves nothing queued (profiles/slurm: slurm-no-requeue).
    assert run.returncode != 0, run.output[-3000:]
    assert "NODE_FAIL" in run.output, run.output[-3000:]
    assert ours(wf) == []
    again = ok(snakemake(wf, Q8, *NO_VALIDATION))
    assert again.jobs().get("convert") == 1, again.output[-3000:]
    assert (wf / Q8).is_file()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupt_cancels_the_runs_jobs_and_exits_within_seconds(wf, sig):
    # The shipped profile as a user runs it (no fast status checks: Snakemake's Slurm executor then sleeps up
    # to 3 minutes between checks), with jobs queued and one running.
    proc = start(wf, Q8, Q4, *NO_VALIDATION, fast=False)
    wait_for_job(wf, "RUNNING")
    queued = ours(wf)
    proc.send_signal(sig)
    t0 = time.monotonic()
    run = finish(proc, timeout=200)
    seconds = time.monotonic() - t0
    print(f"{sig.name}: exited after {seconds:.1f}s with {len(queued)} job(s) queued or running")
    assert run.returncode != 0
    assert seconds < INTERRUPT_BOUND, (seconds, run.output[-3000:])
    assert f"hf2gguf (cluster): {sig.name}: cancelled the run's Slurm jobs" in run.output, run.output[-3000:]
    assert ours(wf) == []
    assert not list((wf / ".snakemake" / "locks").glob("*"))
    again = ok(snakemake(wf, Q8, Q4, *NO_VALIDATION))
    for target in (Q8, Q4):
        assert (wf / target).is_file()


def test_many_models_through_the_shipped_profile(tmp_path):
    """The load case: N tiny models x the pairs of the tests' configuration (4), the job limit honoured, and a no-op
    second run."""
    n_models, job_limit = int(os.environ.get("HF2GGUF_LOAD_MODELS", "4")), 4
    wf = copy_workflow(tmp_path / "wf")
    names = [f"tiny-{i:02d}" for i in range(n_models)]
    for name in names:
        shutil.copytree(ROOT / "models" / MODEL, wf / "models" / name)
    pairs = configured_pairs(wf / "configurations")  # {pair: PRECISION}
    targets = [f"outputs/{p}/{m}-{q}.gguf.sha256" for m in names for p, q in pairs.items()]
    proc = start(wf, *targets, "--jobs", str(job_limit), *NO_VALIDATION)
    peak, t0 = 0, time.monotonic()
    while proc.poll() is None:
        peak = max(peak, len(ours(wf)))
        time.sleep(0.2)
    wall = time.monotonic() - t0
    run = finish(proc)
    assert run.returncode == 0, run.output[-3000:]
    submitted = len(re.findall(r"has been submitted with SLURM jobid", run.output))
    jobs = sacct(run, expect=submitted)
    assert all(j["State"] == "COMPLETED" for j in jobs), jobs
    in_job = sum(int(j["ElapsedRaw"]) for j in jobs) / len(jobs)
    assert 0 < peak <= job_limit, peak
    assert all((wf / t).is_file() for t in targets)
    t1 = time.monotonic()
    again = ok(snakemake(wf, *targets, *NO_VALIDATION))
    noop = time.monotonic() - t1
    assert "Nothing to be done" in again.output and "submitted" not in again.output
    print(f"load: {n_models} models x {len(pairs)} pairs = {len(targets)} checksummed GGUFs, {submitted} Slurm "
          f"jobs, {wall:.0f}s ({wall / submitted:.1f}s per Slurm job, {submitted / wall:.2f} jobs/s; each job ran "
          f"{in_job:.1f}s in Slurm on average), at most {peak} queued at once "
          f"(limit {job_limit}); no-op rerun {noop:.1f}s")  # fmt: skip
