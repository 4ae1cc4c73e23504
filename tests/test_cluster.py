"""scripts/cluster.py without a cluster: sinfo, squeue and sacct output as Slurm 22.05 prints it (the lines of
the one-node test cluster, and of a larger cluster written in the same format), and the checks made on it.
tests/test_slurm.py and tests/test_slurm_faults.py run the same code against a real Slurm."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import cluster

ROOT = Path(__file__).resolve().parents[1]

# sinfo -h -N -o '%P|%N|%c|%m|%G|%t|%a' on a cluster with a default CPU partition of two node sizes (one big node
# drained), a GPU partition, and a partition that is down.
SINFO = """\
cpu*|c001|64|256000|(null)|mix|up
cpu*|c002|64|256000|(null)|idle|up
cpu*|c100|128|1024000|(null)|drain*|up
gpu|g001|32|512000|gpu:a100:4(S:0-1)|alloc|up
gpu|g002|32|512000|gpu:a100:2,gpu:v100:2|idle~|up
old|o001|8|16000|(null)|down*|down
"""
# the one-node test cluster (tests/slurm/cluster.sh)
SINFO_TEST = "debug*|localhost|2|23593|gpu:fake:1|idle|up\ngpu|localhost|2|23593|gpu:fake:1|idle|up\n"


def test_gres_gpus():
    assert cluster.gres_gpus("(null)") == 0
    assert cluster.gres_gpus("gpu:fake:1") == 1
    assert cluster.gres_gpus("gpu:a100:4(S:0-1)") == 4
    assert cluster.gres_gpus("gpu:a100:2,gpu:v100:2") == 4
    assert cluster.gres_gpus("gpu:2,shard:8") == 2


def test_partitions_are_sized_by_their_largest_node_that_takes_jobs():
    parts = cluster.parse_sinfo(SINFO)
    assert set(parts) == {"cpu", "gpu", "old"}
    cpu = parts["cpu"]
    # the 128-CPU node is drained: jobs that need it would never start
    assert (cpu.cpus, cpu.mem_mb, cpu.gpus, cpu.nodes, cpu.default, cpu.up) == (64, 256000, 0, 2, True, True)
    gpu = parts["gpu"]
    assert (gpu.cpus, gpu.gpus, gpu.default, gpu.nodes) == (32, 4, False, 2)  # idle~ (powered down) takes jobs
    old = parts["old"]
    assert (old.up, old.nodes, old.cpus) == (False, 0, 8)  # no usable node: sized by all of them
    test = cluster.parse_sinfo(SINFO_TEST)
    assert (test["debug"].cpus, test["debug"].mem_mb, test["debug"].gpus, test["debug"].default) == (2, 23593, 1, True)


def test_resolve_default_and_unknown_partitions():
    parts = cluster.parse_sinfo(SINFO)
    assert cluster.resolve(parts, None).name == "cpu"
    assert cluster.resolve(parts, "gpu").name == "gpu"
    with pytest.raises(cluster.ClusterError, match=r"'nope' does not exist \(sinfo lists cpu, gpu, old\)"):
        cluster.resolve(parts, "nope")


def test_misfits_name_the_job_the_partition_and_the_numbers():
    parts = cluster.parse_sinfo(SINFO)
    ok = cluster.Request("rule convert (model=m)", None, 4, 4000, 0)
    big = cluster.Request("rule convert (model=huge)", None, 4, 300000, 0)
    gpus = cluster.Request("rule validate (pair=GPU)", "gpu", 2, 1000, 8)
    down = cluster.Request("rule validate (pair=OLD)", "old", 1, 100, 0)
    unknown_mem = cluster.Request("rule quantize (model=m)", None, 2, None, 0)  # input not made yet
    problems = cluster.misfits([ok, big, gpus, down, unknown_mem], parts)
    assert problems == [
        "rule convert (model=huge) needs 300000 MB of memory, but the largest node of partition cpu has 64 CPUs "
        "and 256000 MB",
        "rule validate (pair=GPU) needs 8 GPU(s), but the largest node of partition gpu has 32 CPUs and 512000 MB, "
        "4 GPU(s)",
        "rule validate (pair=OLD): partition old is down or inactive (sinfo): its jobs would never start",
    ]


def test_request_of_a_snakemake_job():
    from types import SimpleNamespace

    class Resources(dict):  # Snakemake's job.resources: a mapping, with values TBD until inputs exist
        pass

    job = SimpleNamespace(rule=SimpleNamespace(name="validate"), threads=4,
                          wildcards_dict={"pair": "GPU_LLM_LLAMA", "model": "m", "precision": "Q4_K_M"},
                          resources=Resources(mem_mb="<TBD>", gpu=1, slurm_partition="gpu"))  # fmt: skip
    assert cluster.Request.of(job, max_threads=2) == cluster.Request(
        "rule validate (pair=GPU_LLM_LLAMA, model=m, precision=Q4_K_M)", "gpu", 2, None, 1)
    job.resources = Resources(mem_mb=1536, slurm_partition="")
    assert cluster.Request.of(job, max_threads=8) == cluster.Request(
        "rule validate (pair=GPU_LLM_LLAMA, model=m, precision=Q4_K_M)", None, 4, 1536, 0)


SQUEUE = """\
101|PENDING|PartitionConfig|/work/run|rule_convert_wildcards_m_F16|4|512M|debug
102|PENDING|Resources|/work/run|rule_quantize_quantize|2|1035M|debug
103|RUNNING|None|/work/run|rule_llama_cpp|2|2560M|debug
104|PENDING|PartitionConfig|/elsewhere|rule_convert_wildcards_x_F16|4|512M|debug
105|PENDING|(ReqNodeNotAvail, UnavailableNodes:n1)|/work/run|rule_validate_wildcards_G_m_Q4_K_M|2|1G|gpu
106|PENDING|PartitionTimeLimit|/work/run|rule_imatrix_wildcards_m|2|1G|debug
"""


def test_only_the_runs_jobs_and_only_never_starting_reasons():
    jobs = cluster.parse_squeue(SQUEUE, "/work/run")
    assert [j.jobid for j in jobs] == ["101", "102", "103", "105", "106"]  # 104 is another directory's
    assert [j.jobid for j in jobs if cluster.never_starts(j)] == ["101", "106"]  # waiting for a node is not


def test_jobs_the_plugin_would_wait_on_for_ever():
    ended = [("201", "CANCELLED by 0", "rule_convert_wildcards_m_F16"),  # scancel by root
             ("202", "CANCELLED", "rule_convert_wildcards_m_Q8_0"),  # no "by": the plugin recognises it
             ("203", "PREEMPTED", "rule_quantize_quantize"),  # not requeued
             ("204", "PREEMPTED", "rule_validate_wildcards_G_m_Q4_K_M")]  # requeued: queued again  # fmt: skip
    assert cluster.abandoned(ended, queued_ids={"204"}) == [
        "error: Slurm job 201, rule convert (m_F16), was cancelled outside the workflow (CANCELLED by 0). "
        "Snakemake's Slurm plugin would wait for it for ever.",
        "error: Slurm job 203, group job quantize_quantize, was preempted and not requeued by Slurm. Snakemake's "
        "Slurm plugin would wait for it for ever.",
    ]


def test_job_labels():
    assert cluster.job_label("rule_convert_wildcards_tiny-gpt2_F16") == "rule convert (tiny-gpt2_F16)"
    assert cluster.job_label("rule_quantize_checksum_quantize") == "group job quantize_checksum_quantize"


SACCT = """\
45|FAILED|rule_convert_wildcards_m_Q8_0|100M|00:10:00|/work/run
46|COMPLETED|rule_convert_wildcards_m_Q8_0|200M|00:20:00|/work/run
47|COMPLETED|rule_quantize_quantize|1G|00:20:00|/work/run
48|TIMEOUT|rule_convert_wildcards_m_F16|512M|00:10:00|/work/run
49|NODE_FAIL|rule_convert_wildcards_m_F16|1G|00:20:00|/work/run
50|COMPLETED|rule_convert_wildcards_m_F16|1.50G|00:30:00|/work/run
51|FAILED|rule_convert_wildcards_m_F16|512M|00:10:00|/elsewhere
"""


def test_retries_say_each_attempt_and_why_it_ended():
    rows = cluster.parse_sacct(SACCT, "/work/run")
    logs = {"45": "slurmstepd-n1: error: StepId=45.batch exceeded memory limit (145072128 > 104857600), being killed"}
    assert cluster.retries(rows, logs) == [
        "rule convert (m_Q8_0) was retried: attempt 1 (job 45, 100M, 00:10:00): killed for memory; "
        "attempt 2 (job 46, 200M, 00:20:00): COMPLETED",
        "rule convert (m_F16) was retried: attempt 1 (job 48, 512M, 00:10:00): killed for time; "
        "attempt 2 (job 49, 1G, 00:20:00): lost with its node; attempt 3 (job 50, 1.50G, 00:30:00): COMPLETED",
    ]
    assert cluster.why("CANCELLED by 0", "") == "cancelled"
    assert cluster.why("FAILED", "") == "ended FAILED"


def test_every_shipped_memory_and_time_request_grows_with_the_attempt():
    """profiles/default: what each rule asks of a cluster; a retry must ask for more of both."""
    profile = yaml.safe_load((ROOT / "profiles/default/config.yaml").read_text())
    for rule, resources in profile["set-resources"].items():
        for name in ("mem_mb", "runtime"):
            expr = str(resources[name])

            def value(attempt, expr=expr):
                class Input:
                    size_mb = 300

                return eval(expr, {"input": Input(), "attempt": attempt, "threads": 2})

            assert value(2) >= 2 * value(1) > 0, (rule, name, expr)
    slurm = yaml.safe_load((ROOT / "profiles/slurm/config.yaml").read_text())
    assert slurm["retries"] == 2 and slurm["slurm-no-requeue"] is True
    # the converter's own sizing (scripts/jobs.py) grows with the attempt too: tests/test_jobs.py
