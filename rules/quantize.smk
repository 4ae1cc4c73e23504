# One pair's GGUF: llama-quantize from the model's intermediate, or a copy of the converter's output for
# the precisions it writes directly (F32, F16, BF16, Q8_0).


rule quantize:
    input:
        unpack(pair_output_inputs),
        ready=model_ready,
    output:
        f"{OUT}/{{pair}}/{{model}}-{{precision}}.gguf",
    log:
        f"{LOGS}/quantize/{{pair}}/{{model}}-{{precision}}.log",
    conda:
        "../envs/llama-cpp.yaml"
    threads: 2
    params:
        type=lambda w: pipeline.canonical_precision(w.precision),
        tool=lambda w, input: (
            f"--llama-quantize {input.tool}" if "tool" in input.keys() else ""
        ),
        script=script("quantize.py"),
        code=code_digest("quantize.py", "hf2gguf/atomic.py"),
    shell:
        "python {params.script:q} {input.gguf:q} {output:q} {params.type} --threads {threads}"
        " {params.tool} 2>&1 | tee {log:q}"
