# Configuration loading and validation, wildcard constraints and input functions. No rules here.
import hashlib
import os
import shlex
import sys

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

# This workflow's own folder, also when it is used as a module of another workflow (workflow.basedir is then
# the outer workflow's).
ROOT = os.path.dirname(str(workflow.current_basedir))
SCHEMAS = os.path.join(ROOT, "rules", "schemas")
SCRIPTS = os.path.join(ROOT, "scripts")
sys.path.insert(0, SCRIPTS)
import llama_toolchain
import pipeline
import reference_converter
from pipeline import ConfigError


def validated(data, schema, path):
    """snakemake.utils.validate, with the file named in the error."""
    try:
        validate(data, os.path.join(SCHEMAS, schema), set_default=True)
    except WorkflowError as e:
        raise WorkflowError(f"{path} is invalid:\n{e}") from None
    return data


CONFIG_DIR = config.get("CONFIGURATIONS_DIR", "configurations").rstrip("/")
CONFIG_FILE = f"{CONFIG_DIR}/converter_args.yaml"
validated(config, "converter_args.schema.yaml", CONFIG_FILE)
MODELS = config["MODELS_DIR"].rstrip("/")
OUT = config["OUTPUTS_DIR"].rstrip("/")
LOGS = f"{OUT}/logs"
HUB_SOURCE = ".hf2gguf-source.json"  # written by scripts/hub_download.py into the folders it made

# Jobs run `python`: make that this interpreter (say, an unactivated venv's), unless conda provides one.
if "conda" not in {str(m) for m in workflow.deployment_settings.deployment_method}:
    path = os.pathsep.join(
        [os.path.dirname(sys.executable), os.environ.get("PATH", "")]
    )
    os.environ.update(PATH=path)


def load_pairs():
    """{pair: validated YAML} for the llama.cpp pairs; the other frameworks' pairs are listed apart."""
    llama, direct = {}, []
    for pair in pipeline.list_pairs(CONFIG_DIR):
        fw = pipeline.framework(pair)
        if fw in pipeline.DIRECT_FRAMEWORKS:
            direct.append(pair)
            continue
        path = pipeline.pair_yaml(CONFIG_DIR, pair)
        if fw != pipeline.LLAMA_FRAMEWORK:
            raise WorkflowError(
                f"{CONFIG_DIR}/{pair}/: unknown framework {fw!r}. Pairs are <HARDWARE>_<TASK>_<FRAMEWORK>, "
                f"and this workflow builds GGUFs for *_LLAMA pairs"
            )
        try:
            data = validated(pipeline.load_yaml(path), "pair.schema.yaml", path)
            pipeline.check_pair(data, path)
        except ConfigError as e:
            raise WorkflowError(str(e)) from None
        llama[pair] = data
    return llama, direct


PAIRS, DIRECT_PAIRS = load_pairs()


# Pairs are upper case (so outputs/intermediate/ is never taken for one); model names cannot hold a slash
# or "..", so no target reaches outside OUTPUTS_DIR; a precision has no "-", which splits <model>-<PRECISION>.
PAIR_RE, MODEL_RE, PRECISION_RE = (
    r"[A-Z][A-Z0-9_]*",
    r"(?!.*\.\.)[A-Za-z0-9][A-Za-z0-9._-]*",
    r"[A-Za-z0-9_]+",
)


wildcard_constraints:
    pair=PAIR_RE,
    model=MODEL_RE,
    precision=PRECISION_RE,


def default_targets():
    """The default target (rule all), with a note for pairs that need no conversion."""
    model = config["MODEL_NAME"]
    for pair in DIRECT_PAIRS:
        print(pipeline.direct_framework_message(pair, MODELS, model), file=sys.stderr)
    return default_outputs()


def default_outputs():
    """Each llama.cpp pair's GGUF (or folder of shards) for MODEL_NAME, its .gguf.sha256 and, unless VALIDATE
    is off, its .json."""
    model = config["MODEL_NAME"]
    stems = [f"{OUT}/{pair}/{model}-{cfg['PRECISION']}" for pair, cfg in PAIRS.items()]
    ggufs = [pair_output(pair, stem) for pair, stem in zip(PAIRS, stems)]
    checks = [f"{stem}.gguf.sha256" for stem in stems]
    if config["VALIDATE"]:
        checks += [f"{stem}.json" for stem in stems]
        checks += [f"{OUT}/report/size_vs_kld.png"] if ggufs else []
    return ggufs + checks


def pair_output(pair, stem):
    """A pair's output outputs/<PAIR>/<model>-<PRECISION>.gguf, or the folder outputs/<PAIR>/<model>-<PRECISION>
    of its shards when the pair sets SPLIT_MAX_SIZE or SPLIT_MAX_TENSORS."""
    split = pair in PAIRS and pipeline.split_arguments(PAIRS[pair])
    return stem if split else f"{stem}.gguf"


def pair_gguf(wildcards):
    """What validation and checksums read: the pair's GGUF, or the folder of its shards."""
    stem = f"{OUT}/{wildcards.pair}/{wildcards.model}-{wildcards.precision}"
    return pair_output(wildcards.pair, stem)


def full_precision(wildcards):
    """The model's full-precision intermediate: the reference of every validation."""
    ftype = pipeline.intermediate_type(
        MODELS, wildcards.model, config["INTERMEDIATE_TYPE"]
    )
    return intermediate(wildcards.model, ftype)


def print_summary():
    """One line per validated output of the default target, at the end of a successful run."""
    import json

    for path in default_outputs():
        if path.endswith(".json") and os.path.exists(path):
            with open(path) as f:
                print(pipeline.validation_summary(json.load(f)), file=sys.stderr)


# --- the llama.cpp toolchain ------------------------------------------------------------------------
LLAMA_QUANTIZE = os.environ.get("LLAMA_QUANTIZE") or config["LLAMA_QUANTIZE"]
TOOLCHAIN = (
    f"{OUT}/toolchain/llama.cpp-{llama_toolchain.build_key(config['LLAMA_CPP_NATIVE'])}"
)


def llama_tool(name):
    """llama-perplexity, llama-imatrix: beside a configured llama-quantize, else from the jobs' conda env or
    container (--sdm conda / apptainer), else built by the toolchain rule."""
    if LLAMA_QUANTIZE:
        return os.path.join(os.path.dirname(llama_quantize()), name)
    if TOOLS_FROM_ENV:
        return env_tool(name)
    return f"{TOOLCHAIN}/bin/{name}"


def llama_quantize():
    """An existing binary when configured, else the one the toolchain rule builds."""
    if LLAMA_QUANTIZE:
        if not (os.path.isfile(LLAMA_QUANTIZE) and os.access(LLAMA_QUANTIZE, os.X_OK)):
            raise WorkflowError(
                f"LLAMA_QUANTIZE={LLAMA_QUANTIZE} is not an executable file. Fix the path, or unset it "
                f"(environment and {CONFIG_FILE}) to build llama.cpp"
            )
        return LLAMA_QUANTIZE
    if TOOLS_FROM_ENV:
        return env_tool("llama-quantize")
    return f"{TOOLCHAIN}/bin/llama-quantize"


# --- software environments and cluster resources (README: "Running on a cluster") ---------------------
# With --sdm conda or apptainer, llama.cpp's tools come from the job's environment (conda-forge's llama.cpp,
# or llama.cpp's image) and nothing is built: the rules get envs/bin/<tool>, which runs the tool found there.
DEPLOYMENT = {str(m) for m in workflow.deployment_settings.deployment_method}
TOOLS_FROM_ENV = bool(DEPLOYMENT & {"conda", "apptainer"})


def env_tool(name):
    return os.path.relpath(os.path.join(ROOT, "envs", "bin", name))


def pair_schema_default(field):
    """A pair field's default, from the schema (the one place it is written)."""
    return pipeline.load_yaml(os.path.join(SCHEMAS, "pair.schema.yaml"))["properties"][
        field
    ]["default"]


# The image of the llama.cpp jobs that belong to no pair (imatrix, kld_base), and of pairs that name none.
DEFAULT_CONTAINER_IMAGE = pair_schema_default("CONTAINER_IMAGE")


def pair_container(wildcards):
    """The pair's CONTAINER_IMAGE: the container of its llama.cpp jobs (used with --sdm apptainer)."""
    return PAIRS[wildcards.pair].get("CONTAINER_IMAGE") or DEFAULT_CONTAINER_IMAGE


def target_resource(field, env=None):
    """A resource of the jobs that run on the pair's hardware (validate): the pair's YAML field, else the
    environment variable `env`, else None, which leaves the resource unset (the cluster's default).
    """

    def value(wildcards):
        setting = PAIRS[wildcards.pair].get(field) or os.environ.get(env or "", "")
        return setting or None

    return value


def model_size_mb(wildcards):
    """The model folder's size: what the converter's memory and time grow with."""
    if hub_pending(wildcards.model):
        return 0
    files = check(pipeline.model_files, MODELS, wildcards.model)
    return sum(os.path.getsize(f) for f in files) // 2**20


# --- input functions --------------------------------------------------------------------------------
def check(fn, *args):
    try:
        return fn(*args)
    except ConfigError as e:
        raise WorkflowError(str(e)) from None


def hub_source(model):
    """(repo, revision) when HUB_MODELS maps the model, else None."""
    entry = config["HUB_MODELS"].get(model)
    if isinstance(entry, str):
        return entry, "main"
    return (entry["repo"], entry.get("revision", "main")) if entry else None


def ensure_model(model):
    """A model folder that is missing but mapped in HUB_MODELS is downloaded first (the download checkpoint);
    a folder placed by hand (no .hf2gguf-source.json) is used as it is, never re-downloaded.
    """
    folder = f"{MODELS}/{model}"
    if hub_source(model) and (
        not os.path.isdir(folder) or os.path.exists(f"{folder}/{HUB_SOURCE}")
    ):
        checkpoints.download.get(model=model)


def has_folder(model):
    folder = f"{MODELS}/{model}"
    return os.path.isdir(folder) and any(os.scandir(folder))


def hub_pending(model):
    return hub_source(model) is not None and not has_folder(model)


def model_ready(wildcards):
    """Nothing, once the model folder is there: a separate input so that the rest of the job's inputs are
    computed again when the download checkpoint completes."""
    ensure_model(wildcards.model)
    return []


def model_fingerprint(wildcards):
    """The model folder's content fingerprint (see pipeline.fingerprint): what conversion depends on."""
    ensure_model(wildcards.model)
    return check(pipeline.fingerprint, MODELS, wildcards.model, f"{OUT}/fingerprints")


def intermediate(model, ftype):
    return f"{OUT}/intermediate/{model}-{ftype}.gguf"


def pair_output_inputs(wildcards):
    """The converted GGUF a pair's output is made from, plus llama-quantize when it must quantize."""
    pair, target = (
        wildcards.pair,
        f"{OUT}/{wildcards.pair}/{wildcards.model}-{wildcards.precision}.gguf",
    )
    if pair in DIRECT_PAIRS:
        raise WorkflowError(
            pipeline.direct_framework_message(pair, MODELS, wildcards.model)
        )
    if pair not in PAIRS:
        raise WorkflowError(
            f"{target}: there is no pair {pair} ({CONFIG_DIR}/{pair}/ does not exist). "
            f"Configured pairs: {', '.join(PAIRS) or '(none)'}"
        )
    options, use_imatrix = check(
        pipeline.quantize_options, PAIRS[pair], wildcards.precision, target
    )
    precision = pipeline.canonical_precision(wildcards.precision)
    if not hub_pending(wildcards.model):  # else: checked once downloaded (model_ready)
        check(pipeline.model_files, MODELS, wildcards.model)
    if precision in pipeline.DIRECT_PRECISIONS and not options and not use_imatrix:
        return {"gguf": intermediate(wildcards.model, precision)}
    ftype = pipeline.intermediate_type(
        MODELS, wildcards.model, config["INTERMEDIATE_TYPE"]
    )
    inputs = {"gguf": intermediate(wildcards.model, ftype), "tool": llama_quantize()}
    if use_imatrix:
        inputs["imatrix"] = f"{OUT}/imatrix/{wildcards.model}.gguf"
    return inputs


def quantize_arguments(wildcards):
    """The pair's llama-quantize options, as arguments of scripts/quantize.py. A param of its own (not derived
    from the inputs, which Snakemake leaves out of its params comparison), so changing one reruns the job.
    """
    options, _ = pipeline.quantize_options(PAIRS[wildcards.pair], wildcards.precision)
    return " ".join(shlex.quote(o) for o in options)


def split_inputs(wildcards):
    """A split output's inputs: those of the whole file, plus llama-gguf-split."""
    folder = f"{OUT}/{wildcards.pair}/{wildcards.model}-{wildcards.precision}"
    inputs = pair_output_inputs(wildcards)
    if not pipeline.split_arguments(PAIRS[wildcards.pair]):
        raise WorkflowError(
            f"{folder}/: pair {wildcards.pair} is not split (its YAML sets no SPLIT_MAX_SIZE or "
            f"SPLIT_MAX_TENSORS); its output is {folder}.gguf"
        )
    return {**inputs, "gguf_split": llama_tool("llama-gguf-split")}


def split_arguments(wildcards):
    """--split-max-size or --split-max-tensors, as arguments of scripts/quantize.py."""
    return " ".join(pipeline.split_arguments(PAIRS[wildcards.pair]))


def quantize_tools(wildcards, input):
    """--llama-quantize and --imatrix, when the job uses them."""
    tools = [("--llama-quantize", "tool"), ("--imatrix", "imatrix")]
    return " ".join(
        f"{flag} {shlex.quote(input[name])}"
        for flag, name in tools
        if name in input.keys()
    )


def script(name):
    """A script's path relative to the working directory: stable across clones, so not a params change."""
    return os.path.relpath(os.path.join(SCRIPTS, name))


def code_digest(*names):
    """sha256 of scripts and packages under scripts/, a param of the rules that run them: editing the code
    reruns them. (Snakemake's code trigger sees only a rule's own text; and scripts given to `script:` are
    compared by mtime, which a fresh checkout resets.)"""
    h = hashlib.sha256()
    for name in names:
        root = os.path.join(SCRIPTS, name)
        paths = (
            [root]
            if os.path.isfile(root)
            else [
                os.path.join(d, f)
                for d, _, files in os.walk(root)
                for f in files
                if f.endswith(".py")
            ]
        )
        for path in sorted(paths):
            h.update(os.path.relpath(path, SCRIPTS).encode() + b"\0")
            with open(path, "rb") as fh:
                h.update(fh.read())
    return h.hexdigest()


# --- the converter of each model (README: "Choosing the converter") -------------------------------------
# CONVERTER auto: ours where it supports the architecture, else llama.cpp's convert_hf_to_gguf.py (from the
# pinned sdist), which runs in an environment built once per machine (rule reference_converter) or, with
# --sdm conda, in envs/reference-converter.yaml.
REFERENCE_KEY = reference_converter.env_key()
REFERENCE_ENV = f"{OUT}/toolchain/reference-converter-{REFERENCE_KEY}.json"
_converter_of = {}


def converter_of(model):
    """hf2gguf or llama.cpp, from CONVERTER and the model's config.json: an architecture that neither may
    convert stops the workflow here, while the job graph is built, before any job runs.
    """
    # provisional for a Hub model not yet downloaded: the job is made again once the download checkpoint is done
    if hub_pending(model):
        return "hf2gguf"
    if model not in _converter_of:
        _converter_of[model] = check(
            pipeline.choose_converter, config["CONVERTER"], MODELS, model
        )
    return _converter_of[model]


def by_converter(**settings):
    """A rule's setting for the model's converter: by_converter(hf2gguf=..., llama_cpp=...)."""
    return lambda wildcards: settings[converter_of(wildcards.model).replace(".", "_")]


def reference_env(wildcards):
    """The record of llama.cpp's converter environment, for the models it converts (none under --sdm conda,
    where the job's conda env is that environment)."""
    ensure_model(wildcards.model)
    if converter_of(wildcards.model) != "llama.cpp" or "conda" in DEPLOYMENT:
        return []
    return REFERENCE_ENV


def reference_arguments(wildcards, input):
    """scripts/reference_converter.py's --env (the environment's record) and --log (named in its errors)."""
    if converter_of(wildcards.model) != "llama.cpp":
        return ""
    log = f"{LOGS}/convert/{wildcards.model}-{wildcards.ftype}.log"
    env = f"--env {shlex.quote(input.env)} " if input.env else ""
    return f"{env}--log {shlex.quote(log)}"


def convert_mem_mb(wildcards, attempt):
    """Our converter streams: about 15% of the model (README, Performance). llama.cpp's loads lazily; torch
    and transformers take about 300 MB, and its peak was 664 MiB for a 424 MiB model and 887 MiB for 2.3 GiB
    (README, Choosing the converter). A retry (Slurm killed the job for memory or time) asks for more.
    """
    size = model_size_mb(wildcards)
    if converter_of(wildcards.model) == "llama.cpp":
        return (1024 + size // 2) * attempt
    return (512 + size // 5) * attempt


def convert_runtime(wildcards, attempt):
    """Minutes: ours converts at 400 MB/s or more, llama.cpp's at about 80 MB/s after 8 s of start-up
    (README, Performance)."""
    size = model_size_mb(wildcards)
    if converter_of(wildcards.model) == "llama.cpp":
        return (10 + size // 1500) * attempt
    return (10 + size // 6000) * attempt
