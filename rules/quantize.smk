# One pair's GGUF: llama-quantize from the model's intermediate, or a copy of the converter's output for
# the precisions it writes directly (F32, F16, BF16, Q8_0).


rule quantize:
    input:
        unpack(pair_output_inputs),
    output:
        f"{OUT}/{{pair}}/{{model}}-{{precision}}.gguf",
    log:
        f"{LOGS}/quantize/{{pair}}/{{model}}-{{precision}}.log",
    conda:
        "../envs/llama-cpp.yaml"
    threads: 2
    params:
        type=lambda w: pipeline.canonical_precision(w.precision),
    script:
        "../scripts/quantize.py"
