# llama.cpp's tools, built once per machine from the pinned, checksummed sdist and cached outside the
# working tree (scripts/llama_toolchain.py), then copied here. The folder name is the build key (pin and
# flags), so a new pin or new flags make every quantized output stale.


rule llama_cpp:
    output:
        quantize=f"{TOOLCHAIN}/bin/llama-quantize",
        perplexity=f"{TOOLCHAIN}/bin/llama-perplexity",
        imatrix=f"{TOOLCHAIN}/bin/llama-imatrix",
        gguf_split=f"{TOOLCHAIN}/bin/llama-gguf-split",
    log:
        f"{LOGS}/toolchain/{os.path.basename(TOOLCHAIN)}.log",
    conda:
        "../envs/toolchain.yaml"
    threads: os.cpu_count() or 1
    params:
        flags="--native" if config["LLAMA_CPP_NATIVE"] else "",
        script=script("llama_toolchain.py"),
    shell:
        "python {params.script:q} {params.flags} --jobs {threads} --dest $(dirname {output.quantize:q})"
        " llama-quantize llama-perplexity llama-imatrix llama-gguf-split 2>&1 | tee {log:q}"


# The environment of llama.cpp's converter (torch CPU, transformers; scripts/reference_converter.py), built only
# when a model needs it, once per machine, into the cache beside llama.cpp's build; the file here records which
# python runs it. Local, because cluster nodes often have no network.
localrules:
    reference_converter,


rule reference_converter:
    output:
        REFERENCE_ENV,
    log:
        f"{LOGS}/toolchain/reference-converter-{REFERENCE_KEY}.log",
    conda:
        "../envs/toolchain.yaml"
    params:
        script=script("reference_converter.py"),
        python=os.environ.get(reference_converter.ENV_VARIABLE, ""),
    shell:
        "python {params.script:q} --build-env {output:q} 2>&1 | tee {log:q}"
