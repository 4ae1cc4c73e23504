# Slurm runs that never wait for ever (scripts/cluster.py; README "Running on a cluster"). Only in the process
# that submits jobs with the slurm executor (profiles/slurm); local runs and the jobs themselves skip all this.
import threading
import time

import cluster

RUN_STARTED = time.time()


# `cpus` (what a job occupies of its node; the grouped rules set it to their threads) is counted per group job,
# not across the cluster: slurm_start() gives each group job one node's worth, as Snakemake does for mem_mb.
resource_scopes:
    cpus="local",


def slurm_partitions():
    """{name: Partition} from sinfo, or None (not a Slurm run, or sinfo cannot be asked: a warning)."""
    plugin = workflow.executor_plugin
    if plugin is None or plugin.name != "slurm" or not workflow.is_main_process:
        return None
    try:
        return cluster.query()
    except cluster.ClusterError as e:
        cluster.say(f"warning: jobs are not sized to the nodes: {e}")
        return None


def used_partitions():
    """The partitions the run's jobs go to: SBATCH_PARTITION (or the cluster's default) for all jobs, and the
    pairs' SLURM_PARTITION for their validation."""
    names = {os.environ.get("SBATCH_PARTITION") or None}
    names |= {
        cfg.get("SLURM_PARTITION")
        for cfg in PAIRS.values()
        if cfg.get("SLURM_PARTITION")
    }
    try:
        return [cluster.resolve(PARTITIONS, name) for name in names]
    except cluster.ClusterError as e:
        raise WorkflowError(
            f"{e}. Fix SBATCH_PARTITION or the pairs' SLURM_PARTITION"
        ) from None


PARTITIONS = None  # set at start-up (onstart), when the executor is known
STOPPING = threading.Event()  # set when the run stops: the watchdog then looks no more


def slurm_start():
    """onstart: refuse requests that no node can hold, before anything is submitted; make Snakemake stack
    a group's jobs so that each group job fits one node; start the watchdog and the interrupt handler.
    """
    global PARTITIONS
    PARTITIONS = slurm_partitions()
    if not PARTITIONS:
        return
    # No job asks for more CPUs than the smallest node it may go to: threads are capped, as by --max-threads.
    node = min(used_partitions(), key=lambda p: (p.cpus, p.mem_mb))
    settings = workflow.resource_settings
    settings.max_threads = min(settings.max_threads or node.cpus, node.cpus)
    jobs = [job for job in workflow.dag.needrun_jobs() if not job.is_local]
    requests = [cluster.Request.of(job, settings.max_threads) for job in jobs]
    problems = cluster.misfits(requests, PARTITIONS)
    if problems:
        raise WorkflowError(
            "No node can run these jobs, so nothing was submitted:\n  "
            + "\n  ".join(problems)
            + "\nFix: send them to a partition with larger nodes (SBATCH_PARTITION, or the pair's "
            "SLURM_PARTITION), lower the request (--set-resources RULE:mem_mb=N, the pair's GPUS), or lower "
            "--max-threads."
        )
    # Local-scope constraints (each group job gets its own pool): a group job asks for at most one node.
    for name, value in (("mem_mb", node.mem_mb), ("cpus", node.cpus)):
        given = workflow.global_resources.get(name)
        given = getattr(given, "value", given)
        workflow.register_resource(
            name, min(given, value) if isinstance(given, int) else value
        )
    cluster.Watchdog(os.getcwd(), PARTITIONS, STOPPING).start()
    cluster.Interrupt(os.getcwd(), workflow.persistence.unlock, STOPPING).install()


def slurm_retries():
    """At the end of the run: the jobs Slurm ran more than once, and why each attempt ended."""
    STOPPING.set()
    if PARTITIONS:
        logs = os.path.join(".snakemake", "slurm_logs")
        for line in cluster.retried(os.getcwd(), RUN_STARTED, logs):
            cluster.say(line)
