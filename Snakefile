# Hugging Face model folders -> GGUF files for llama.cpp, one per CECAIServe pair.
# Rules are split by stage under rules/; the logic they call lives in scripts/.
from snakemake.utils import min_version

min_version("9.0")


configfile: "configurations/converter_args.yaml"


report: "rules/report/workflow.rst"


include: "rules/common.smk"
include: "rules/cluster.smk"


# The first rule is the default target (not default_target: that would take over a workflow that uses
# this one as a module).
rule all:
    input:
        default_targets(),


include: "rules/download.smk"
include: "rules/toolchain.smk"
include: "rules/convert.smk"
include: "rules/quantize.smk"
include: "rules/validate.smk"
include: "rules/speed.smk"
include: "rules/budget.smk"
include: "rules/auto.smk"
include: "rules/publish.smk"


onstart:
    slurm_start()


onsuccess:
    slurm_retries()
    pipeline.print_summary(default_outputs())
    jobs.cancel_rescheduling_timers()  # or the process waits a second to exit


onerror:
    slurm_retries()
    pipeline.print_summary(default_outputs(), log)
    jobs.cancel_rescheduling_timers()
