# llama.cpp's tools, built once per machine from the pinned, checksummed sdist and cached outside the
# working tree (scripts/llama_toolchain.py), then copied here. The folder name is the build key (pin and
# flags), so a new pin or new flags make every quantized output stale.
import reference_converter

# With --sdm conda or apptainer the jobs' software comes from their conda env or container (README: "Running on
# a cluster"): the rules then get envs/bin/<tool>, which runs the llama.cpp tool found there (conda-forge's
# llama.cpp, or llama.cpp's image), and nothing is built. Without conda, jobs run `python`: make that this
# interpreter (say, an unactivated venv's).
DEPLOYMENT = {str(m) for m in workflow.deployment_settings.deployment_method}
if "conda" not in DEPLOYMENT:
    os.environ.update(
        PATH=os.pathsep.join(
            [os.path.dirname(sys.executable), os.environ.get("PATH", "")]
        )
    )

# The container of each pair's llama.cpp jobs (--sdm apptainer): its CONTAINER_IMAGE, else the schema's default,
# which is also the image of the jobs that belong to no pair (imatrix, kld_base).
DEFAULT_CONTAINER_IMAGE = pipeline.schema_default(
    os.path.join(SCHEMAS, "pair.schema.yaml"), "CONTAINER_IMAGE"
)
PAIR_CONTAINERS = {
    pair: cfg.get("CONTAINER_IMAGE") or DEFAULT_CONTAINER_IMAGE
    for pair, cfg in PAIRS.items()
}

# Where the jobs find llama.cpp's tools (llama_tool in rules/common.smk, llama_toolchain.tool_path).
LLAMA_QUANTIZE = os.environ.get("LLAMA_QUANTIZE") or config["LLAMA_QUANTIZE"]
TOOLS_FROM_ENV = bool(DEPLOYMENT & {"conda", "apptainer"})
ENV_BIN = os.path.relpath(os.path.join(ROOT, "envs", "bin"))
TOOLCHAIN = (
    f"{OUT}/toolchain/llama.cpp-{llama_toolchain.build_key(config['LLAMA_CPP_NATIVE'])}"
)
TOOLCHAIN_BIN = f"{TOOLCHAIN}/bin"


rule llama_cpp:
    output:
        quantize=f"{TOOLCHAIN_BIN}/llama-quantize",
        perplexity=f"{TOOLCHAIN_BIN}/llama-perplexity",
        imatrix=f"{TOOLCHAIN_BIN}/llama-imatrix",
        gguf_split=f"{TOOLCHAIN_BIN}/llama-gguf-split",
        bench=f"{TOOLCHAIN_BIN}/llama-bench",
    log:
        f"{LOGS}/toolchain/{os.path.basename(TOOLCHAIN)}.log",
    # first: every quantization waits on it, and until then conversions of a whole batch would pile up
    priority: 2
    conda:
        "../envs/toolchain.yaml"
    threads: os.cpu_count() or 1
    params:
        flags="--native" if config["LLAMA_CPP_NATIVE"] else "",
        script=script_path("llama_toolchain.py"),
    shell:
        "python {params.script:q} {params.flags} --jobs {threads} --dest $(dirname {output.quantize:q})"
        " llama-quantize llama-perplexity llama-imatrix llama-gguf-split llama-bench 2>&1 | tee {log:q}"


# The environment of llama.cpp's converter (torch CPU, transformers; scripts/reference_converter.py), built only
# when a model needs it (rules/convert.smk), once per machine, into the cache beside llama.cpp's build; the file
# here records which python runs it. Local, because cluster nodes often have no network.
REFERENCE_KEY = reference_converter.env_key()
REFERENCE_ENV = f"{OUT}/toolchain/reference-converter-{REFERENCE_KEY}.json"


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
        script=script_path("reference_converter.py"),
        python=os.environ.get(reference_converter.ENV_VARIABLE, ""),
    shell:
        "python {params.script:q} --build-env {output:q} 2>&1 | tee {log:q}"
