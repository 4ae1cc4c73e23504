# Hugging Face folder -> one GGUF per model and type, with our pure-Python converter (scripts/hf2gguf).
# The full-precision one is the intermediate that every quantization starts from.


rule convert:
    input:
        model=model_inputs,
        converter=converter_sources(),
    output:
        f"{OUT}/intermediate/{{model}}-{{ftype}}.gguf",
    wildcard_constraints:
        ftype="|".join(pipeline.DIRECT_PRECISIONS),
    params:
        folder=lambda w: f"{MODELS}/{w.model}",
    log:
        f"{LOGS}/convert/{{model}}-{{ftype}}.log",
    shell:
        "{PYTHON:q} {SCRIPTS:q}/convert.py {params.folder:q} -o {output:q}"
        " --outtype {wildcards.ftype} 2>&1 | tee {log:q}"
