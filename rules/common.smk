# Configuration: loading and validation, wildcard constraints, and the input functions of the rules. No rules
# here. Each stage's settings are in its own file (download, toolchain, convert, quantize, validate), and the
# decisions that are plain Python in scripts/pipeline.py and scripts/jobs.py, where they are unit-tested.
import functools
import json
import os
import sys

from snakemake.exceptions import WorkflowError

# This workflow's own folder, also when it is used as a module of another workflow (workflow.basedir is then
# the outer workflow's).
ROOT = os.path.dirname(str(workflow.current_basedir))
SCHEMAS = os.path.join(ROOT, "rules", "schemas")
SCRIPTS = os.path.join(ROOT, "scripts")
sys.path.insert(0, SCRIPTS)
import budget
import hub_download
import jobs
import llama_toolchain
import pipeline
from pipeline import ConfigError


def validated(data, schema, path):
    """data (the YAML at path) checked against the schema, with its defaults filled in (pipeline.validate_config,
    as snakemake.utils.validate); a module's skip_validation skips it, as it does Snakemake's.
    """
    if workflow.modifier.skip_validation:
        return data
    schema = os.path.relpath(os.path.join(SCHEMAS, schema))
    return stop_on_config_error(pipeline.validate_config, data, schema, path)


def stop_on_config_error(fn, *args):
    """fn(*args); a ConfigError (bad configuration or model folder) stops the workflow with its message."""
    try:
        return fn(*args)
    except ConfigError as e:
        raise WorkflowError(str(e)) from None


CONFIG_DIR = config.get("CONFIGURATIONS_DIR", "configurations").rstrip("/")
CONFIG_FILE = f"{CONFIG_DIR}/converter_args.yaml"
validated(config, "converter_args.schema.yaml", CONFIG_FILE)
MODELS = config["MODELS_DIR"].rstrip("/")
OUT = config["OUTPUTS_DIR"].rstrip("/")
LOGS = f"{OUT}/logs"
PAIRS, DIRECT_PAIRS = stop_on_config_error(
    pipeline.load_pairs,
    CONFIG_DIR,
    lambda data, path: validated(data, "pair.schema.yaml", path),
)

# Pairs are upper case (so outputs/intermediate/ is never taken for one); model names cannot hold a slash
# or "..", so no target reaches outside OUTPUTS_DIR; a precision has no "-", which splits <model>-<PRECISION>.
PAIR_RE, MODEL_RE, PRECISION_RE = (
    r"[A-Z][A-Z0-9_]*",
    r"(?!.*\.\.)[A-Za-z0-9][A-Za-z0-9._-]*",
    r"[A-Za-z0-9_]+",
)
# the precision of the rules that make and measure one fixed precision: not AUTO, whose file is chosen among
# candidates (rules/auto.smk)
FIXED_PRECISION_RE = r"(?!AUTO(?![A-Za-z0-9_]))[A-Za-z0-9_]+"


wildcard_constraints:
    pair=PAIR_RE,
    model=MODEL_RE,
    precision=PRECISION_RE,


MODEL_NAMES = pipeline.model_names(config["MODEL_NAME"])
# delete a model's intermediate once every output made from it is made, unless KEEP_INTERMEDIATE (rules/convert.smk)
KEEP_INTERMEDIATE = config["KEEP_INTERMEDIATE"]
HUB_UPLOAD = config["HUB_UPLOAD"]
for pair, cfg in PAIRS.items():  # a budget needs the measurements it is checked against
    message = pipeline.budget_error(
        cfg, config["VALIDATE"], config["BENCHMARK"], budget.needs
    )
    if message:
        raise WorkflowError(f"{pipeline.pair_yaml(CONFIG_DIR, pair)}: {message}")
if HUB_UPLOAD and not config["VALIDATE"]:
    raise WorkflowError(
        f"{CONFIG_FILE}: HUB_UPLOAD publishes only validated outputs, and VALIDATE is false."
        " Set VALIDATE: true, or remove HUB_UPLOAD"
    )


def default_targets():
    """The default target (rule all), with a note for pairs that need no conversion."""
    for pair in DIRECT_PAIRS:
        for model in MODEL_NAMES:
            message = pipeline.direct_framework_message(pair, MODELS, model)
            print(message, file=sys.stderr)
    return default_outputs()


def default_outputs():
    """Each pair's GGUF for every model of MODEL_NAME, its checksum, validation and benchmark
    (pipeline.default_outputs), and, with HUB_UPLOAD, each model's publication record (rules/publish.smk).
    """
    validate, benchmark = config["VALIDATE"], config["BENCHMARK"]
    outputs = pipeline.default_outputs(PAIRS, MODEL_NAMES, OUT, validate, benchmark)
    if HUB_UPLOAD and PAIRS:
        outputs += [published(model) for model in MODEL_NAMES]
    return outputs


def keep_if(keep, path):
    """path, or temp(path): Snakemake deletes it once every job that needs it is done."""
    return path if keep else temp(path)


def published(model):
    """The record of what was published for the model (rules/publish.smk), with the Hub repository, commit and
    files."""
    return f"{OUT}/published/{model}.json"


# --- input functions --------------------------------------------------------------------------------------------
def pair_gguf(wildcards):
    """What validation and checksums read: the pair's GGUF, or the folder of its shards."""
    stem = f"{OUT}/{wildcards.pair}/{wildcards.model}-{wildcards.precision}"
    return pipeline.pair_output(PAIRS.get(wildcards.pair), stem)


def intermediate(model, ftype):
    return f"{OUT}/intermediate/{model}-{ftype}.gguf"


def full_precision(wildcards):
    """The model's full-precision intermediate: the reference of every validation."""
    model = wildcards.model
    return intermediate(model, intermediate_type(model, hub_pending(model)))


# Once per model and run (a batch of 200 models has thousands of jobs): the type from the safetensors headers
# (provisional for a Hub model not downloaded yet, hence the key), and the check that the model folder holds what
# conversion reads.
@functools.cache
def intermediate_type(model, pending):
    return pipeline.intermediate_type(MODELS, model, config["INTERMEDIATE_TYPE"])


@functools.cache
def checked_model(model):
    return stop_on_config_error(pipeline.model_files, MODELS, model)


def pair_output_inputs(wildcards, split=False):
    """What a pair's output is made from (jobs.output_source): the converter's output at that precision, or the
    intermediate with llama-quantize and, when used, the model's importance matrix; llama-gguf-split for the
    folder of shards of a split pair."""
    pair, model = wildcards.pair, wildcards.model
    stem = f"{OUT}/{pair}/{model}-{wildcards.precision}"
    where = f"{stem}.gguf"
    pairs = (PAIRS, DIRECT_PAIRS, pair, where, CONFIG_DIR, MODELS, model)
    cfg = stop_on_config_error(pipeline.pair_settings, *pairs)
    source = stop_on_config_error(jobs.output_source, cfg, wildcards.precision, where)
    if pipeline.shares_candidate(PAIRS, cfg, wildcards.precision):
        precision = pipeline.canonical_precision(wildcards.precision)
        inputs = {
            "gguf": candidate(model, precision)
        }  # made once (rules/auto.smk), copied
    else:
        inputs = source_inputs(wildcards, source)
    if split and not pipeline.split_arguments(cfg):
        raise WorkflowError(
            f"{stem}/: pair {pair} is not split (its YAML sets no SPLIT_MAX_SIZE or "
            f"SPLIT_MAX_TENSORS); its output is {stem}.gguf"
        )
    return inputs | ({"gguf_split": llama_tool("llama-gguf-split")} if split else {})


def candidate(model, precision):
    """A candidate of the PRECISION: AUTO pairs: made once per model and precision (rules/auto.smk)."""
    return f"{OUT}/candidates/{model}-{precision}.gguf"


def candidate_inputs(wildcards):
    """What a candidate is made from: as a pair's output with no llama-quantize option (jobs.output_source)."""
    where = candidate(wildcards.model, wildcards.precision)
    source = stop_on_config_error(jobs.output_source, {}, wildcards.precision, where)
    return source_inputs(wildcards, source)


def source_inputs(wildcards, source):
    """The inputs of a GGUF made from the model as jobs.output_source says: the converter's output at that
    precision, or the intermediate with llama-quantize and, when used, the model's importance matrix.
    """
    model = wildcards.model
    if not hub_pending(model):  # else: checked once downloaded (model_ready)
        checked_model(model)
    if source.copy_of:
        inputs = {"gguf": intermediate(model, source.copy_of)}
    else:
        tool = llama_tool("llama-quantize")
        inputs = {"gguf": full_precision(wildcards), "tool": tool}
    imatrix = {"imatrix": f"{OUT}/imatrix/{model}.gguf"} if source.imatrix else {}
    return inputs | imatrix


def auto_candidates(wildcards):
    """An AUTO pair's candidates, in its order; an error for a pair that is not AUTO."""
    cfg = PAIRS.get(wildcards.pair)
    if not pipeline.is_auto(cfg):
        stem = f"{OUT}/{wildcards.pair}/{wildcards.model}-AUTO"
        raise WorkflowError(
            f"{stem}: pair {wildcards.pair} is not configured with PRECISION: AUTO"
        )
    return pipeline.auto_candidates(cfg)


def auto_measurements(wildcards):
    """What the choice of an AUTO pair reads: each candidate's validation and, when BENCHMARK, its benchmark,
    measured on the pair's hardware."""
    stems = [
        f"{OUT}/{wildcards.pair}/auto/{wildcards.model}-{p}"
        for p in auto_candidates(wildcards)
    ]
    speeds = [f"{stem}.speed.json" for stem in stems] if config["BENCHMARK"] else []
    return {"reports": [f"{stem}.json" for stem in stems], "speeds": speeds}


def chosen_precision(wildcards):
    """The precision the choose checkpoint picked for the pair and model."""
    decision = checkpoints.choose.get(pair=wildcards.pair, model=wildcards.model)
    with open(decision.output[0], encoding="utf-8") as f:
        return json.load(f)["chosen_precision"]


def llama_tool(name):
    """llama-quantize, llama-perplexity, ...: where the jobs find it (rules/toolchain.smk). Its mtime matters only
    for a configured LLAMA_QUANTIZE (a binary rebuilt in place): the toolchain's folder is named by its build key,
    and a conda env or image is the software-env trigger's, so copying the same build again (a tool added to
    rule llama_cpp) or a fresh checkout of envs/bin/ remakes nothing."""
    try:
        path = llama_toolchain.tool_path(
            name, LLAMA_QUANTIZE, TOOLS_FROM_ENV, TOOLCHAIN_BIN, ENV_BIN
        )
    except FileNotFoundError as e:
        raise WorkflowError(
            f"{e}. Fix the path, or unset it (environment and {CONFIG_FILE}) to build llama.cpp"
        ) from None
    return path if LLAMA_QUANTIZE else ancient(path)


def hub_pending(model):
    """A HUB_MODELS model not downloaded yet (rules/download.smk)."""
    return hub_download.pending(MODELS, config["HUB_MODELS"], model)


def model_ready(wildcards):
    """Nothing, once the model folder is there: a separate input so that the rest of the job's inputs are
    computed again when the download checkpoint (rules/download.smk) completes."""
    if hub_download.downloads(MODELS, config["HUB_MODELS"], wildcards.model):
        checkpoints.download.get(model=wildcards.model)
    return []


def model_fingerprint(wildcards):
    """The model folder's content fingerprint (pipeline.fingerprint): what conversion depends on."""
    model_ready(wildcards)
    folder = f"{OUT}/fingerprints"
    return stop_on_config_error(pipeline.fingerprint, MODELS, wildcards.model, folder)


def converter_of(model):
    """hf2gguf or llama.cpp, from CONVERTER and the model's config.json (once per model): an architecture
    that neither converts stops the workflow here, while the job graph is built."""
    # provisional for a Hub model not yet downloaded: the job is made again once it is
    return "hf2gguf" if hub_pending(model) else chosen_converter(model)


@functools.cache
def chosen_converter(model):
    setting = config["CONVERTER"]
    return stop_on_config_error(pipeline.choose_converter, setting, MODELS, model)


def by_converter(**settings):
    """A rule's setting for the model's converter: by_converter(hf2gguf=..., llama_cpp=...)."""
    return lambda wildcards: settings[converter_of(wildcards.model).replace(".", "_")]


def reference_env(wildcards):
    """The record of llama.cpp's converter environment (rules/toolchain.smk), for the models it converts; none
    under --sdm conda, where the job's conda env is that environment."""
    model_ready(wildcards)
    if converter_of(wildcards.model) != "llama.cpp" or "conda" in DEPLOYMENT:
        return []
    return REFERENCE_ENV


def model_size_mb(wildcards):
    """The model folder's size, which the converter's memory and time grow with (jobs.convert_mem_mb)."""
    if hub_pending(wildcards.model):
        return 0
    return stop_on_config_error(jobs.model_size_mb, MODELS, wildcards.model)


def budget_inputs(wildcards):
    """What an output's budget check reads (rules/budget.smk): the output, and its validation report and benchmark
    when the pair's budget has fields they measure."""
    stem = f"{OUT}/{wildcards.pair}/{wildcards.model}-{wildcards.precision}"
    reads = budget.needs(budget.budget_of(PAIRS[wildcards.pair]))
    inputs = {"gguf": pair_gguf(wildcards)}
    inputs |= {"report": f"{stem}.json"} if "report" in reads else {}
    return inputs | ({"speed": f"{stem}.speed.json"} if "speed" in reads else {})


def publish_inputs(wildcards):
    """What is published for a model (rules/publish.smk), every pair's validated output with its .sha256 and
    .json, and its .speed.json when BENCHMARK (the model card's speed columns)."""
    benchmark = config["BENCHMARK"]
    outputs = pipeline.default_outputs(PAIRS, [wildcards.model], OUT, True, benchmark)
    return [p for p in outputs if not p.startswith(f"{OUT}/report/")]


def script_path(name):
    """A path under scripts/, relative to the working directory: stable across clones, so not a params change."""
    return os.path.relpath(os.path.join(SCRIPTS, name))


def code_digest(*names):
    """The digest of files and packages under scripts/ (jobs.code_digest): a param of the rules that run them."""
    return jobs.code_digest(SCRIPTS, *names)
