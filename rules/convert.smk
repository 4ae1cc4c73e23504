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
    resources:
        # sized from the model folder (the input is only its fingerprint): the converter streams, its peak
        # memory is about 15% of the model (README, Performance), and it converts at 400 MB/s or more
        mem_mb=lambda w: 512 + model_size_mb(w) // 5,
        runtime=lambda w: 10 + model_size_mb(w) // 6000,
    params:
        folder=lambda w: f"{MODELS}/{w.model}",
        script=script("convert.py"),
        code=code_digest("convert.py", "hf2gguf"),
    shell:
        "python {params.script:q} {params.folder:q} -o {output:q} --outtype {wildcards.ftype} --threads {threads}"
        " --fingerprint {input:q}"
        " 2>&1 | tee {log:q}"
