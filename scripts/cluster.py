"""Slurm runs that never wait for ever (README, "Running on a cluster").

Used by rules/cluster.smk in the Snakemake process that submits jobs (profiles/slurm), never inside a job:
- `query()` reads what the nodes of each partition hold (`sinfo`), so that jobs and group jobs are sized to fit
  and a request no node can hold stops the run at start-up (`misfits`);
- `Watchdog` looks at the run's jobs (`squeue`, `sacct`) and stops the run, saying why, when Slurm says one can
  never start (reason PartitionConfig and the like) or one was cancelled outside the workflow: Snakemake and its
  Slurm plugin would wait on either for ever;
- `Interrupt` makes Ctrl-C and SIGTERM cancel the run's jobs at once and exit within seconds;
- `retried()` lists the run's jobs that ran more than once, and why each attempt ended (`sacct`).

A run's jobs are found by user and working directory: Snakemake's lock allows one run per directory.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

# Node states whose nodes take no new jobs (sinfo %t, suffixes such as * ~ # ! % $ @ stripped)
UNUSABLE = {"down", "drain", "drng", "drained", "draining", "fail", "failg", "futr", "future", "inval", "unk"}
# Pending reasons that no amount of waiting changes: the request exceeds what the partition's nodes, limits or
# the user's association allow, or the partition is down or inactive.
NEVER_STARTS = {
    "PartitionConfig", "PartitionNodeLimit", "PartitionTimeLimit", "PartitionDown", "PartitionInactive",
    "BadConstraints", "InvalidAccount", "InvalidQOS", "AssocMaxWallDurationPerJobLimit",
    "AssocGrpMemLimit", "QOSMaxCpuPerJobLimit", "QOSMaxMemoryPerJob", "QOSMaxWallDurationPerJobLimit",
    "QOSMaxGRESPerJob", "QOSMaxNodePerJobLimit", "JobHeldAdmin", "DependencyNeverSatisfied",
}  # fmt: skip


class ClusterError(Exception):
    """A request that no node of its partition can hold, or a cluster that cannot be asked."""


def sacct_time(since: float) -> str:
    """A Unix time as sacct's --starttime, 5 s early (job start times are whole seconds)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(since - 5))


def same_dir(path: str, workdir: str) -> bool:
    """Whether a job's working directory (squeue %Z, sacct WorkDir) is the run's."""
    return os.path.realpath(path) == os.path.realpath(workdir)


def say(message: str) -> None:
    print(f"hf2gguf (cluster): {message}", file=sys.stderr, flush=True)


# --- what the nodes hold ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Partition:
    name: str
    cpus: int  # of its largest node that takes jobs
    mem_mb: int
    gpus: int
    nodes: int  # nodes that take jobs
    up: bool  # the partition itself is up (sinfo %a)
    default: bool

    def describe(self) -> str:
        gpus = f", {self.gpus} GPU(s)" if self.gpus else ""
        return f"{self.cpus} CPUs and {self.mem_mb} MB{gpus}"


SINFO_FORMAT = "%P|%N|%c|%m|%G|%t|%a"


def gres_gpus(gres: str) -> int:
    """GPUs in a sinfo %G field: `gpu:a100:4(S:0-1),gpu:v100:2` -> 6; `(null)` -> 0."""
    total = 0
    for item in gres.split(","):
        m = re.match(r"gpu(?::[^:(]+)?:(\d+)", item.strip())
        if m:
            total += int(m.group(1))
    return total


def parse_sinfo(text: str) -> dict[str, Partition]:
    """`sinfo -h -N -o SINFO_FORMAT` (one line per node and partition) -> {partition: Partition}. A partition's
    size is that of its largest node that takes jobs; when none does (all down or drained), of its largest node."""
    rows: dict[str, list[tuple]] = {}
    flags: dict[str, tuple[bool, bool]] = {}
    for line in text.splitlines():
        fields = line.strip().split("|")
        if len(fields) != 7:
            continue
        part, _node, cpus, mem, gres, state, avail = fields
        default = part.endswith("*")
        part = part.rstrip("*")
        usable = re.sub(r"[^a-z]", "", state.lower()) not in UNUSABLE
        rows.setdefault(part, []).append((usable, int(cpus), int(re.sub(r"\D", "", mem) or 0), gres_gpus(gres)))
        flags[part] = (default, avail.lower().startswith("up"))
    partitions = {}
    for part, nodes in rows.items():
        usable = [n for n in nodes if n[0]] or nodes
        partitions[part] = Partition(
            name=part, cpus=max(n[1] for n in usable), mem_mb=max(n[2] for n in usable),
            gpus=max(n[3] for n in usable), nodes=sum(n[0] for n in nodes), up=flags[part][1],
            default=flags[part][0],
        )  # fmt: skip
    return partitions


def query(timeout: float = 30) -> dict[str, Partition]:
    """The cluster's partitions, from sinfo."""
    try:
        proc = subprocess.run(["sinfo", "-h", "-N", "-o", SINFO_FORMAT], capture_output=True, text=True,
                              timeout=timeout)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ClusterError(f"sinfo failed ({e})") from None
    if proc.returncode != 0:
        raise ClusterError(f"sinfo failed: {proc.stderr.strip()}")
    partitions = parse_sinfo(proc.stdout)
    if not partitions:
        raise ClusterError("sinfo lists no partitions")
    return partitions


def resolve(partitions: dict[str, Partition], name: str | None) -> Partition:
    """The partition a job goes to: the one it names, else the cluster's default."""
    if name:
        if name not in partitions:
            raise ClusterError(f"partition {name!r} does not exist (sinfo lists {', '.join(sorted(partitions))})")
        return partitions[name]
    for p in partitions.values():
        if p.default:
            return p
    raise ClusterError("the cluster has no default partition: set SBATCH_PARTITION")


# --- start-up check -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Request:
    job: str  # the rule and wildcards, as the user reads them
    partition: str | None
    threads: int
    mem_mb: int | None  # None: not known yet (it grows with an input that is not made yet)
    gpus: int

    @classmethod
    def of(cls, job, max_threads: int) -> "Request":
        """What a Snakemake job will ask of Slurm: its threads capped as Snakemake will cap them."""
        wildcards = ", ".join(f"{k}={v}" for k, v in job.wildcards_dict.items())
        mem, gpus = job.resources.get("mem_mb"), job.resources.get("gpu") or 0
        return cls(
            job=f"rule {job.rule.name} ({wildcards})",
            partition=job.resources.get("slurm_partition") or None,
            threads=min(job.threads, max_threads),
            mem_mb=mem if isinstance(mem, int) else None,
            gpus=gpus if isinstance(gpus, int) else 0,
        )


def misfits(requests: list[Request], partitions: dict[str, Partition]) -> list[str]:
    """One line per request that no node of its partition can hold, or whose partition takes no jobs."""
    problems = []
    for r in requests:
        try:
            p = resolve(partitions, r.partition)
        except ClusterError as e:
            problems.append(f"{r.job}: {e}")
            continue
        if not p.up:
            problems.append(f"{r.job}: partition {p.name} is down or inactive (sinfo): its jobs would never start")
            continue
        wants = []
        if r.mem_mb is not None and r.mem_mb > p.mem_mb:
            wants.append(f"{r.mem_mb} MB of memory")
        if r.gpus > p.gpus:
            wants.append(f"{r.gpus} GPU(s)")
        if r.threads > p.cpus:
            wants.append(f"{r.threads} CPUs")
        if wants:
            problems.append(
                f"{r.job} needs {' and '.join(wants)}, but the largest node of partition {p.name} has "
                f"{p.describe()}"
            )
    return problems


# --- the run's jobs in Slurm --------------------------------------------------------------------------------
@dataclass(frozen=True)
class QueuedJob:
    jobid: str
    state: str
    reason: str
    comment: str
    cpus: str
    memory: str
    partition: str


SQUEUE_FORMAT = "%i|%T|%r|%Z|%k|%C|%m|%P"


def parse_squeue(text: str, workdir: str) -> list[QueuedJob]:
    """`squeue --me -h -o SQUEUE_FORMAT` -> the jobs whose working directory is `workdir`."""
    jobs = []
    for line in text.splitlines():
        fields = line.strip().split("|")
        if len(fields) != 8 or not same_dir(fields[3], workdir):
            continue
        jobid, state, reason, _wd, comment, cpus, memory, partition = fields
        jobs.append(QueuedJob(jobid, state, reason, comment, cpus, memory, partition))
    return jobs


def queued(workdir: str, timeout: float = 30) -> list[QueuedJob]:
    proc = subprocess.run(["squeue", "--me", "-h", "-o", SQUEUE_FORMAT], capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip
    if proc.returncode != 0:
        raise ClusterError(f"squeue failed: {proc.stderr.strip()}")
    return parse_squeue(proc.stdout, workdir)


def never_starts(job: QueuedJob) -> bool:
    return job.state == "PENDING" and job.reason.split(",")[0].strip("()") in NEVER_STARTS


def job_label(comment: str) -> str:
    """The Slurm plugin's comment `rule_<rule>_wildcards_<values>` -> `rule <rule> (<values>)`; a group job's,
    `rule_<its rules>_<group>`, -> `group job <its rules>_<group>`."""
    m = re.match(r"rule_(.+?)_wildcards_(.+)", comment)
    if m:
        return f"rule {m.group(1)} ({m.group(2)})"
    return f"group job {comment[len('rule_'):]}" if comment.startswith("rule_") else comment or "a job"


def cancel(workdir: str) -> list[str]:
    """scancel every queued or running job of this user whose working directory is `workdir`."""
    try:
        ids = [j.jobid for j in queued(workdir, timeout=10)]
    except (ClusterError, OSError, subprocess.TimeoutExpired) as e:
        say(f"could not list the run's Slurm jobs to cancel them ({e})")
        return []
    if ids:
        subprocess.run(["scancel", *ids], capture_output=True, timeout=30)
    return ids


def ended_since(workdir: str, since: float) -> list[tuple[str, str, str]]:
    """(job id, state, comment) of this directory's jobs started after `since` (a Unix time) that were since
    cancelled or preempted, from sacct; [] without accounting."""
    try:
        command = ["sacct", "-X", "-n", "-P", "-s", "CA,PR", "--starttime", sacct_time(since), "--endtime", "now",
                   "-o", "JobID,State,Comment,WorkDir"]  # fmt: skip
        proc = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    rows = [line.split("|") for line in proc.stdout.splitlines()] if proc.returncode == 0 else []
    return [(r[0], r[1], r[2]) for r in rows if len(r) == 4 and same_dir(r[3], workdir)]


def abandoned(ended: list[tuple[str, str, str]], queued_ids: set[str]) -> list[str]:
    """The jobs that Snakemake's Slurm plugin (2.8.0) would wait on for ever, one message each: sacct's state of
    a job cancelled outside the workflow reads `CANCELLED by <uid>`, which the plugin does not take for an end
    state, nor `PREEMPTED` for a job that Slurm did not requeue (it is not queued any more)."""
    problems = []
    for jobid, state, comment in ended:
        if state.startswith("CANCELLED by"):
            what = f"was cancelled outside the workflow ({state})"
        elif state.startswith("PREEMPTED") and jobid not in queued_ids:
            what = "was preempted and not requeued by Slurm"
        else:
            continue
        problems.append(f"error: Slurm job {jobid}, {job_label(comment)}, {what}. Snakemake's Slurm plugin would "
                        f"wait for it for ever.")  # fmt: skip
    return problems


class Watchdog(threading.Thread):
    """Every `interval` seconds, looks at the run's jobs in Slurm for what Snakemake's Slurm plugin (2.8.0)
    would wait on for ever, and stops the run with a message that says why (SIGINT to this process, which
    cancels the run's other jobs: see Interrupt):
    - a job pending for a reason that never passes (PartitionConfig and the like, NEVER_STARTS);
    - a job cancelled outside the workflow (scancel by you or an administrator), or preempted and not
      requeued: see `abandoned`."""

    def __init__(self, workdir: str, partitions: dict[str, Partition], stopping: threading.Event,
                 interval: float = 5):  # fmt: skip
        super().__init__(name="hf2gguf-slurm-watchdog", daemon=True)
        self.workdir, self.partitions, self.interval = workdir, partitions, interval
        self.stopping = stopping  # set when the run stops anyway (Interrupt, the end of the run)

    def run(self) -> None:
        since = time.time()
        while not self.stopping.wait(self.interval):
            try:
                jobs = queued(self.workdir)
            except (ClusterError, OSError, subprocess.TimeoutExpired):
                continue  # a slow or restarting controller: look again later
            problems = [self.explain(j) for j in jobs if never_starts(j)]
            problems += abandoned(ended_since(self.workdir, since), {j.jobid for j in jobs})
            if problems and not self.stopping.is_set():
                for line in problems:
                    say(line)
                say("stopping the run. Fix what is said above if it needs fixing, then run the same command again.")
                os.kill(os.getpid(), signal.SIGINT)
                return

    def explain(self, job: QueuedJob) -> str:
        part = self.partitions.get(job.partition)
        has = f"; its largest node has {part.describe()}" if part else ""
        return (
            f"error: Slurm job {job.jobid}, {job_label(job.comment)}, can never start: Slurm's reason is "
            f"{job.reason}. It asks for {job.cpus} CPUs and {job.memory} of memory on partition "
            f"{job.partition}{has}."
        )


class Interrupt:
    """Ctrl-C (SIGINT) and SIGTERM: cancel the run's Slurm jobs at once, then let Snakemake stop as after
    Ctrl-C (it marks the cancelled jobs incomplete, so the next run makes them again). Snakemake's Slurm
    executor only exits after its current status-check pause, which grows to 3 minutes; after `grace`
    seconds this releases Snakemake's lock on the working directory and exits (status 130)."""

    def __init__(self, workdir: str, unlock, stopping: threading.Event, grace: float = 5):
        self.workdir, self.unlock, self.stopping, self.grace = workdir, unlock, stopping, grace
        self.fired = False

    def install(self) -> None:
        signal.signal(signal.SIGINT, self.handle)
        signal.signal(signal.SIGTERM, self.handle)

    def handle(self, signum, frame):
        if self.fired:  # a second Ctrl-C: leave at once
            self.exit()
        self.fired = True
        self.stopping.set()
        ids = cancel(self.workdir)
        name = signal.Signals(signum).name
        say(f"{name}: cancelled the run's Slurm jobs ({', '.join(ids) or 'none queued'}); stopping")
        threading.Thread(target=self.deadline, name="hf2gguf-exit", daemon=True).start()
        raise KeyboardInterrupt

    def deadline(self) -> None:
        time.sleep(self.grace)
        cancel(self.workdir)  # anything submitted while Snakemake was stopping
        self.exit()

    def exit(self) -> None:
        try:
            self.unlock()
        finally:
            sys.stderr.flush()
            os._exit(130)


# --- what was retried ---------------------------------------------------------------------------------------
SACCT_FIELDS = ["JobID", "State", "Comment", "ReqMem", "Timelimit", "WorkDir"]


def parse_sacct(text: str, workdir: str) -> list[dict]:
    """`sacct -X -n -P -o SACCT_FIELDS` -> the rows whose working directory is `workdir`, by job id."""
    rows = []
    for line in text.splitlines():
        values = line.split("|")
        if len(values) == len(SACCT_FIELDS):
            row = dict(zip(SACCT_FIELDS, values))
            if row["JobID"].isdigit() and same_dir(row["WorkDir"], workdir):
                rows.append(row)
    return sorted(rows, key=lambda r: int(r["JobID"]))


def why(state: str, log: str) -> str:
    """Why Slurm ended a job, from its state and its Slurm log. Without cgroups, a job killed for memory ends
    FAILED, and only its log says why."""
    state = state.split()[0]
    if state == "OUT_OF_MEMORY" or "exceeded memory limit" in log or "Exceeded job memory limit" in log:
        return "killed for memory"
    if state == "TIMEOUT" or "DUE TO TIME LIMIT" in log:
        return "killed for time"
    return {
        "NODE_FAIL": "lost with its node",
        "PREEMPTED": "preempted",
        "CANCELLED": "cancelled",
        "BOOT_FAIL": "its node failed to boot",
    }.get(state, f"ended {state}")


def retries(rows: list[dict], logs: dict[str, str]) -> list[str]:
    """One line per job of the run that Slurm ran more than once (Snakemake's retries), oldest first: each
    attempt's request and how it ended. `logs`: job id -> its Slurm log."""
    attempts: dict[str, list[dict]] = {}
    for row in rows:
        attempts.setdefault(row["Comment"], []).append(row)
    lines = []
    for comment, runs in attempts.items():
        if len(runs) < 2:
            continue
        steps = []
        for n, row in enumerate(runs, 1):
            ended = why(row["State"], logs.get(row["JobID"], "")) if n < len(runs) else row["State"].split()[0]
            steps.append(f"attempt {n} (job {row['JobID']}, {row['ReqMem']}, {row['Timelimit']}): {ended}")
        lines.append(f"{job_label(comment)} was retried: " + "; ".join(steps))
    return lines


def retried(workdir: str, since: float, slurm_logs: str) -> list[str]:
    """The run's retried jobs (see `retries`), from sacct and the Slurm plugin's logs under `slurm_logs`;
    [] without accounting."""
    try:
        command = ["sacct", "-X", "-n", "-P", "--starttime", sacct_time(since), "-o", ",".join(SACCT_FIELDS)]
        proc = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    if proc.returncode != 0:
        return []
    rows = parse_sacct(proc.stdout, workdir)
    ids = {row["JobID"] for row in rows}
    logs = {}  # only this run's jobs' logs (the folder keeps failed jobs' logs of earlier runs too)
    for root, _dirs, files in os.walk(slurm_logs):
        for name in files:
            if name.endswith(".log") and name[: -len(".log")] in ids:
                with open(os.path.join(root, name), errors="replace") as f:
                    logs[name[: -len(".log")]] = f.read()
    return retries(rows, logs)
