# Hugging Face folder -> one GGUF per model and type: our pure-Python converter (scripts/hf2gguf), or, for the
# architectures it does not support (CONVERTER: auto) or for every model (CONVERTER: llama.cpp), llama.cpp's own
# convert_hf_to_gguf.py from the pinned sdist (scripts/reference_converter.py), which runs in an environment
# built once per machine (rule reference_converter) or, with --sdm conda, in envs/reference-converter.yaml
# (converter_of and by_converter in rules/common.smk).
# The full-precision one is the intermediate that every quantization starts from. The input is the model
# folder's content fingerprint, not its files, so a fresh checkout (new mtimes) reconverts nothing; the converter
# is a param, so switching it reconverts exactly the models it changes for.
rule convert:
    input:
        fingerprint=model_fingerprint,
        env=reference_env,
    output:
        # KEEP_INTERMEDIATE: false = deleted once every job that reads it is done (README: "Disk")
        keep_if(KEEP_INTERMEDIATE, f"{OUT}/intermediate/{{model}}-{{ftype}}.gguf"),
    log:
        f"{LOGS}/convert/{{model}}-{{ftype}}.log",
    wildcard_constraints:
        ftype="|".join(pipeline.DIRECT_PRECISIONS),
    conda:
        by_converter(
            hf2gguf="../envs/converter.yaml",
            llama_cpp="../envs/reference-converter.yaml",
        )
    threads: 4
    resources:
        # from the model folder's size (the input is only its fingerprint) and the converter
        mem_mb=lambda w, attempt: jobs.convert_mem_mb(
            model_size_mb(w), converter_of(w.model), attempt
        ),
        runtime=lambda w, attempt: jobs.convert_runtime(
            model_size_mb(w), converter_of(w.model), attempt
        ),
    params:
        converter=lambda w: converter_of(w.model),
        script=by_converter(
            hf2gguf=script_path("convert.py"),
            llama_cpp=script_path("reference_converter.py"),
        ),
        code=by_converter(
            hf2gguf=code_digest("convert.py", "hf2gguf"),
            llama_cpp=code_digest("reference_converter.py", "reference_driver.py"),
        ),
        folder=lambda w: f"{MODELS}/{w.model}",
        reference=lambda w, input: jobs.reference_arguments(
            converter_of(w.model), input.env, f"{LOGS}/convert/{w.model}-{w.ftype}.log"
        ),
    shell:
        "python {params.script:q} {params.folder:q} -o {output:q} --outtype {wildcards.ftype} --threads {threads}"
        " --fingerprint {input.fingerprint:q} {params.reference} 2>&1 | tee {log:q}"
