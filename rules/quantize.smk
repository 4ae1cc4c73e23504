# One pair's GGUF: llama-quantize from the model's intermediate, with the pair's options and, for the
# precisions that need one (or IMATRIX: true), an importance matrix computed once per model (rule imatrix);
# or a copy of the converter's output for the precisions it writes directly (F32, F16, BF16, Q8_0)
# (pair_output_inputs in rules/common.smk).


rule quantize:
    input:
        unpack(pair_output_inputs),
        ready=model_ready,
    output:
        f"{OUT}/{{pair}}/{{model}}-{{precision}}.gguf",
    log:
        f"{LOGS}/quantize/{{pair}}/{{model}}-{{precision}}.log",
    # not AUTO: that file is chosen among candidates (rules/auto.smk)
    wildcard_constraints:
        precision=FIXED_PRECISION_RE,
    # before another model's conversion: a model's outputs are made, and its intermediate freed (KEEP_INTERMEDIATE:
    # false), before the next model's intermediate is written (README: "Disk")
    priority: 1
    group:
        "quantize"
    conda:
        "../envs/llama-cpp.yaml"
    container:
        lambda w: PAIR_CONTAINERS[w.pair]
    threads: 2
    resources:
        cpus=lambda w, threads: threads,  # sizes group jobs on a cluster (rules/cluster.smk)
    params:
        type=lambda w: pipeline.canonical_precision(w.precision),
        # a param of its own (not derived from the inputs, which Snakemake leaves out of its params comparison),
        # so that changing an option reruns the job
        options=lambda w: jobs.quantize_arguments(PAIRS[w.pair], w.precision),
        tools=lambda w, input: jobs.tool_arguments(input),
        script=script_path("quantize.py"),
        code=code_digest("quantize.py", "hf2gguf/atomic.py", "hf2gguf/gguf_header.py"),
    shell:
        "python {params.script:q} {input.gguf:q} {output:q} {params.type} --threads {threads}"
        " {params.tools} {params.options} 2>&1 | tee {log:q}"


# The same GGUF split into shards by llama-gguf-split, for a pair that sets SPLIT_MAX_SIZE or SPLIT_MAX_TENSORS:
# the folder outputs/<PAIR>/<model>-<PRECISION>/ of <model>-<PRECISION>-0000N-of-0000M.gguf (llama.cpp loads
# them from the first). Made in one job, so the whole file is never kept beside its shards.
use rule quantize as quantize_split with:
    input:
        unpack(lambda w: pair_output_inputs(w, split=True)),
        ready=model_ready,
    output:
        directory(f"{OUT}/{{pair}}/{{model}}-{{precision}}"),
    log:
        f"{LOGS}/quantize/{{pair}}/{{model}}-{{precision}}.split.log",
    params:
        options=lambda w: jobs.quantize_arguments(
            PAIRS[w.pair], w.precision, split=True
        ),


rule imatrix:
    input:
        gguf=full_precision,
        tool=lambda w: llama_tool("llama-imatrix"),
        ready=model_ready,
    output:
        f"{OUT}/imatrix/{{model}}.gguf",
    log:
        f"{LOGS}/imatrix/{{model}}.log",
    priority: 1
    conda:
        "../envs/llama-cpp.yaml"
    container:
        DEFAULT_CONTAINER_IMAGE
    threads: 2
    params:
        text=script_path("data/calibration.txt"),
        text_sha256=code_digest("data/calibration.txt"),
        ctx=config["VALIDATION_CTX"],
    shell:
        "{input.tool:q} -m {input.gguf:q} -f {params.text:q} -c {params.ctx} -b {params.ctx} -t {threads}"
        " --no-ppl -o {output:q}.tmp.gguf > {log:q} 2>&1 && mv {output:q}.tmp.gguf {output:q}"
