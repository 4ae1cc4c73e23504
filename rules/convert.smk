# Hugging Face folder -> one GGUF per model and type, with our pure-Python converter (scripts/hf2gguf).
# The full-precision one is the intermediate that every quantization starts from.


rule convert:
    input:
        model_inputs,
    output:
        f"{OUT}/intermediate/{{model}}-{{ftype}}.gguf",
    log:
        f"{LOGS}/convert/{{model}}-{{ftype}}.log",
    wildcard_constraints:
        ftype="|".join(pipeline.DIRECT_PRECISIONS),
    conda:
        "../envs/converter.yaml"
    params:
        folder=lambda w: f"{MODELS}/{w.model}",
        converter=converter_digest(),
    script:
        "../scripts/convert.py"
