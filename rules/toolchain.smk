# llama.cpp's tools, built once per machine from the pinned, checksummed sdist and cached outside the
# working tree (scripts/llama_toolchain.py); copied here so that a new key (pin or flags) makes every
# quantized output stale.


rule llama_cpp:
    output:
        f"{TOOLCHAIN}/bin/llama-quantize",
    params:
        flags="--native" if config["LLAMA_CPP_NATIVE"] else "",
    log:
        f"{LOGS}/toolchain/{os.path.basename(TOOLCHAIN)}.log",
    threads: workflow.cores
    shell:
        "{PYTHON:q} {SCRIPTS:q}/llama_toolchain.py {params.flags} --jobs {threads}"
        " --dest $(dirname {output:q}) llama-quantize 2>&1 | tee {log:q}"
