# Every output's speed in llama.cpp (llama-bench): prompt processing and generation in tokens per second, measured
# where the file will run, like its validation: on the pair's partition, account, node features and GPUs, in its
# container. The sizes (pair fields BENCH_PROMPT, BENCH_GEN, BENCH_REPETITIONS, GPU_LAYERS) are a param, so that
# changing one reruns exactly the benchmarks of that pair. BENCHMARK: false leaves them out of the default target.


rule speed:
    input:
        gguf=pair_gguf,
        tool=lambda w: llama_tool("llama-bench"),
    output:
        f"{OUT}/{{pair}}/{{model}}-{{precision}}.speed.json",
    log:
        f"{LOGS}/speed/{{pair}}/{{model}}-{{precision}}.log",
    # not AUTO: that file is chosen among candidates (rules/auto.smk)
    wildcard_constraints:
        precision=FIXED_PRECISION_RE,
    conda:
        "../envs/llama-cpp.yaml"
    container:
        lambda w: PAIR_CONTAINERS[w.pair]
    threads: 2
    resources:
        # the pair's own hardware, as for validate (jobs.pair_resource)
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
        script=script_path("speed.py"),
        code=code_digest("speed.py"),
        bench=lambda w: jobs.bench_arguments(PAIRS[w.pair]),
    shell:
        "python {params.script:q} {input.gguf:q} --llama-bench {input.tool:q} {params.bench}"
        " --threads {threads} -o {output:q} > {log:q} 2>&1"
