# Hugging Face folder -> one GGUF per model and type, with our pure-Python converter (scripts/hf2gguf).
# The full-precision one is the intermediate that every quantization starts from. The input is the model
# folder's content fingerprint, not its files, so a fresh checkout (new mtimes) reconverts nothing.


rule convert:
    input:
        model_fingerprint,
    output:
        f"{OUT}/intermediate/{{model}}-{{ftype}}.gguf",
    log:
        f"{LOGS}/convert/{{model}}-{{ftype}}.log",
    wildcard_constraints:
        ftype="|".join(pipeline.DIRECT_PRECISIONS),
    conda:
        "../envs/converter.yaml"
    threads: 4
    params:
        folder=lambda w: f"{MODELS}/{w.model}",
        script=script("convert.py"),
        code=code_digest("convert.py", "hf2gguf"),
    shell:
        "python {params.script:q} {params.folder:q} -o {output:q} --outtype {wildcards.ftype} --threads {threads}"
        " --fingerprint {input:q}"
        " 2>&1 | tee {log:q}"
