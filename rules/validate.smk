# Every output checked in llama.cpp: the logits of the model's full-precision intermediate on the
# evaluation text are saved once per model (kld_base), then each output is compared with them (validate).
# The text's sha256 is a param, not an input, so a fresh checkout (new mtimes) revalidates nothing.


rule kld_base:
    input:
        gguf=full_precision,
        tool=lambda w: llama_tool("llama-perplexity"),
        ready=model_ready,
    output:
        f"{OUT}/validation/{{model}}.kld",
    log:
        f"{LOGS}/validation/{{model}}.kld.log",
    priority: 1
    conda:
        "../envs/llama-cpp.yaml"
    container:
        DEFAULT_CONTAINER_IMAGE
    threads: 2
    params:
        text=script_path("data/evaluation.txt"),
        text_sha256=code_digest("data/evaluation.txt"),
        ctx=config["VALIDATION_CTX"],
    shell:
        "{input.tool:q} -m {input.gguf:q} -f {params.text:q} -c {params.ctx} -b {params.ctx} -t {threads}"
        " --kl-divergence-base {output:q}.tmp > {log:q} 2>&1 && mv {output:q}.tmp {output:q}"


rule validate:
    input:
        gguf=pair_gguf,
        base=f"{OUT}/validation/{{model}}.kld",
        tool=lambda w: llama_tool("llama-perplexity"),
    output:
        f"{OUT}/{{pair}}/{{model}}-{{precision}}.json",
    log:
        f"{LOGS}/validation/{{pair}}/{{model}}-{{precision}}.log",
    # not AUTO: that file is chosen among candidates (rules/auto.smk)
    wildcard_constraints:
        precision=FIXED_PRECISION_RE,
    conda:
        "../envs/llama-cpp.yaml"
    container:
        lambda w: PAIR_CONTAINERS[w.pair]
    threads: 2
    resources:
        # it runs the GGUF on the pair's own hardware: the pair's partition, account, node features and GPUs
        # (jobs.pair_resource: the pair's field, else the environment variable, else the cluster's default)
        slurm_partition=lambda w: jobs.pair_resource(
            PAIRS[w.pair], "SLURM_PARTITION", "SBATCH_PARTITION"
        ),
        slurm_account=lambda w: jobs.pair_resource(
            PAIRS[w.pair], "SLURM_ACCOUNT", "SBATCH_ACCOUNT"
        ),
        constraint=lambda w: jobs.pair_resource(PAIRS[w.pair], "SLURM_CONSTRAINT"),
        gpu=lambda w: jobs.pair_resource(PAIRS[w.pair], "GPUS"),
        gpu_model=lambda w: jobs.pair_resource(PAIRS[w.pair], "GPU_MODEL"),
    params:
        script=script_path("validate.py"),
        code=code_digest("validate.py", "hf2gguf/gguf_header.py"),
        text=script_path("data/evaluation.txt"),
        ctx=config["VALIDATION_CTX"],
    shell:
        "python {params.script:q} {input.gguf:q} --kld-base {input.base:q} --perplexity {input.tool:q}"
        " --text {params.text:q} --ctx {params.ctx} --threads {threads} -o {output:q} > {log:q} 2>&1"


rule checksum:
    input:
        pair_gguf,
    output:
        f"{OUT}/{{pair}}/{{model}}-{{precision}}.gguf.sha256",
    log:
        f"{LOGS}/checksum/{{pair}}/{{model}}-{{precision}}.log",
    group:
        "quantize"
    conda:
        "../envs/converter.yaml"
    resources:
        cpus=1,
    params:
        script=script_path("checksum.py"),
        code=code_digest("checksum.py", "hf2gguf/atomic.py"),
    shell:
        "python {params.script:q} {input:q} {output:q} > {log:q} 2>&1"


rule plot:
    input:
        reports=lambda w: [
            p for p in default_outputs() if pipeline.is_validation_report(p)
        ],
        speed=lambda w: [p for p in default_outputs() if p.endswith(".speed.json")],
        budget=lambda w: [p for p in default_outputs() if p.endswith(".budget.json")],
    output:
        plot=report(
            f"{OUT}/report/size_vs_kld.png",
            caption="report/size_vs_kld.rst",
            category="Quality",
        ),
        speed_plot=report(
            f"{OUT}/report/kld_vs_speed.png",
            caption="report/kld_vs_speed.rst",
            category="Speed",
        ),
        table=report(
            f"{OUT}/report/validation.html",
            caption="report/validation.rst",
            category="Quality",
        ),
    log:
        f"{LOGS}/report/plot.log",
    conda:
        "../envs/converter.yaml"
    params:
        script=script_path("plot.py"),
        code=code_digest("plot.py"),
    shell:
        "python {params.script:q} {input.reports:q} --speed {input.speed:q} --plot {output.plot:q}"
        " --speed-plot {output.speed_plot:q} --budget {input.budget:q} --table {output.table:q} > {log:q} 2>&1"
