# One pair's GGUF: llama-quantize from the model's intermediate, or a copy of the converter's output for
# the precisions it writes directly (F32, F16, BF16, Q8_0).


rule quantize:
    input:
        unpack(pair_output_inputs),
    output:
        f"{OUT}/{{pair}}/{{model}}-{{precision}}.gguf",
    params:
        type=lambda w: pipeline.canonical_precision(w.precision),
        tool=lambda w, input: input.get("tool", ""),
    log:
        f"{LOGS}/quantize/{{pair}}/{{model}}-{{precision}}.log",
    threads: 2
    shell:
        "{PYTHON:q} {SCRIPTS:q}/quantize.py {input.gguf:q} {output:q} {params.type}"
        " --threads {threads} --llama-quantize '{params.tool}' 2>&1 | tee {log:q}"
