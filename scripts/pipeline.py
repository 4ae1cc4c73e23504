"""Workflow logic that the rules call: precisions, pairs, configuration files and model folders.

Imported by rules/common.smk at parse time, so it uses the standard library and PyYAML only and does no
work beyond reading a few small files: a no-op rerun must stay fast.
"""
from __future__ import annotations

import json
import os
import re
from functools import lru_cache
from pathlib import Path

import yaml

from hf2gguf.atomic import atomic_path
from hf2gguf.peek import full_precision_type, ours_reads, quantization

# Written by our converter directly (no llama-quantize).
DIRECT_PRECISIONS = ("F32", "F16", "BF16", "Q8_0")
# Made by llama-quantize from the model's full-precision intermediate.
QUANTIZED_PRECISIONS = (
    "Q4_0", "Q4_1", "Q5_0", "Q5_1",
    "Q2_K", "Q2_K_S", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K",
    "IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ3_XXS", "IQ3_XS", "IQ3_S", "IQ3_M",
    "IQ4_NL", "IQ4_XS", "TQ1_0", "TQ2_0",
)
SYNONYMS = {"FP16": "F16"}  # the CECAIServe seed writes FP16
PRECISIONS = DIRECT_PRECISIONS + QUANTIZED_PRECISIONS + tuple(SYNONYMS)
# llama-quantize refuses these without an importance matrix, which the workflow then computes (llama-quant.cpp, tensor_requires_imatrix;
# checked against b11312 on tiny-gpt2).
NEEDS_IMATRIX = ("IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ3_XXS", "IQ3_XS", "Q2_K_S")
INTERMEDIATE_TYPES = ("F32", "F16", "BF16")

# Pairs are <HARDWARE>_<TASK>_<FRAMEWORK>. Only llama.cpp pairs are converted here.
LLAMA_FRAMEWORK = "LLAMA"
DIRECT_FRAMEWORKS = {"TRF": "Transformers", "VLLM": "vLLM", "TRT": "TensorRT-LLM"}


class ConfigError(ValueError):
    """A problem in the user's configuration; the message names the file and the fix."""


def canonical_precision(precision: str, where: str = "the target") -> str:
    """FP16 -> F16; anything llama-quantize cannot make is refused, listing the valid names."""
    if precision in SYNONYMS:
        return SYNONYMS[precision]
    if precision in PRECISIONS:
        return precision
    if precision.upper() in PRECISIONS:
        raise ConfigError(f"{where}: precision {precision!r} must be upper case: use {precision.upper()!r}")
    raise ConfigError(f"{where}: unknown precision {precision!r}. Valid precisions: {', '.join(PRECISIONS)}")


def quantize_options(pair_cfg: dict, precision: str, where: str = "the target") -> tuple[list[str], bool]:
    """The llama-quantize options a pair's YAML asks for, as arguments of scripts/quantize.py, and whether an
    importance matrix is used (IMATRIX: true, or auto and the precision requires one)."""
    canonical = canonical_precision(precision, where)
    setting = pair_cfg.get("IMATRIX", "auto")
    needed = canonical in NEEDS_IMATRIX
    if needed and setting is False:
        raise ConfigError(f"{where}: precision {canonical} requires an importance matrix, but the pair sets "
                          "IMATRIX: false; set it to auto")
    args = []
    for field, option in (("OUTPUT_TENSOR_TYPE", "--output-tensor-type"),
                          ("TOKEN_EMBEDDING_TYPE", "--token-embedding-type")):
        if pair_cfg.get(field):
            args += [option, pair_cfg[field].lower()]
    for override in pair_cfg.get("TENSOR_TYPES") or []:
        name, _, qtype = override.rpartition("=")
        args += ["--tensor-type", f"{name}={qtype.lower()}"]
    for field, option in (("LEAVE_OUTPUT_TENSOR", "--leave-output-tensor"), ("PURE", "--pure")):
        if pair_cfg.get(field):
            args.append(option)
    args += [f"--extra={flag}={value}" for flag, value in extra_quantize_args(pair_cfg, where)]
    return args, needed or setting is True


def extra_quantize_args(pair_cfg: dict, where: str) -> list[tuple[str, str]]:
    """EXTRA_QUANTIZE_ARGS as checked (flag, value) pairs; see quantize.EXTRA_OPTIONS for what is allowed."""
    from quantize import extra_arguments

    try:
        return extra_arguments(pair_cfg.get("EXTRA_QUANTIZE_ARGS") or [])
    except ValueError as e:
        raise ConfigError(f"{where}: field EXTRA_QUANTIZE_ARGS: {e}") from None


def split_arguments(pair_cfg: dict, where: str = "the pair") -> list[str]:
    """llama-gguf-split's size option for a pair whose output is split into shards; [] for one file."""
    size, tensors = pair_cfg.get("SPLIT_MAX_SIZE"), pair_cfg.get("SPLIT_MAX_TENSORS")
    if size and tensors:
        raise ConfigError(f"{where}: SPLIT_MAX_SIZE and SPLIT_MAX_TENSORS are both set; keep one of them")
    if size:
        return ["--split-max-size", str(size)]
    return ["--split-max-tensors", str(tensors)] if tensors else []


# PRECISION: AUTO (scripts/choose.py): the workflow makes each precision of the pair's AUTO_CANDIDATES, measures it on
# the pair's hardware and keeps the one that its budget chooses, as outputs/<PAIR>/<model>-AUTO.gguf
AUTO = "AUTO"
# what a pair of PRECISION: AUTO cannot set: its candidates are made once per model and precision, with llama-quantize's
# default options, for every pair that considers them
AUTO_REFUSED = ("OUTPUT_TENSOR_TYPE", "TOKEN_EMBEDDING_TYPE", "TENSOR_TYPES", "LEAVE_OUTPUT_TENSOR", "PURE",
                "EXTRA_QUANTIZE_ARGS", "SPLIT_MAX_SIZE", "SPLIT_MAX_TENSORS")


def is_auto(pair_cfg: dict | None) -> bool:
    return bool(pair_cfg) and pair_cfg.get("PRECISION") == AUTO


def auto_candidates(pair_cfg: dict) -> list[str]:
    """The precisions an AUTO pair considers, canonical (FP16 -> F16), without repeats, in its order."""
    return list(dict.fromkeys(canonical_precision(p) for p in pair_cfg["AUTO_CANDIDATES"]))


def check_auto(pair_cfg: dict, path: Path) -> None:
    """An AUTO pair's candidates are known precisions, and it sets no option that would make them its own."""
    candidates = pair_cfg.get("AUTO_CANDIDATES")
    if not candidates:
        raise ConfigError(f"{path}: field AUTO_CANDIDATES: PRECISION: AUTO needs at least one candidate")
    for precision in candidates:
        canonical_precision(precision, f"{path}: field AUTO_CANDIDATES")
    refused = [field for field in AUTO_REFUSED if pair_cfg.get(field)]
    if pair_cfg.get("IMATRIX", "auto") != "auto":
        refused.append("IMATRIX")
    if refused:
        raise ConfigError(f"{path}: PRECISION: AUTO makes its candidates once per model with llama-quantize's default "
                          f"options, for every pair that considers them, so it cannot set {', '.join(refused)}. "
                          "Remove them, or give the pair a fixed PRECISION")


def candidate_precisions(pairs: dict[str, dict]) -> set[str]:
    """Every precision some AUTO pair considers: each is made once per model, outputs/candidates/<model>-<P>.gguf."""
    return {p for cfg in pairs.values() if is_auto(cfg) for p in auto_candidates(cfg)}


def shares_candidate(pairs: dict[str, dict], pair_cfg: dict, precision: str) -> bool:
    """Whether a fixed pair's output is the same file as an AUTO pair's candidate (the precision is a candidate,
    and the pair sets no llama-quantize option and no importance matrix a candidate would not use): it is then a
    copy of the candidate, not made twice."""
    if is_auto(pair_cfg):
        return False
    canonical = canonical_precision(precision)
    options, imatrix = quantize_options(pair_cfg, precision)
    return canonical in candidate_precisions(pairs) and not options and imatrix == (canonical in NEEDS_IMATRIX)


def check_pair(pair_cfg: dict, path: Path) -> None:
    """What the schema cannot say about a pair's YAML, checked when the workflow starts."""
    if is_auto(pair_cfg):
        check_auto(pair_cfg, path)
        return
    canonical_precision(pair_cfg["PRECISION"], f"{path}: field PRECISION")
    extra_quantize_args(pair_cfg, str(path))
    split_arguments(pair_cfg, str(path))


def gguf_files(path: str | Path) -> list[Path]:
    """A pair's output as files: [path] for one GGUF; for a split output's folder, its shards in order
    (NAME-00001-of-0000M.gguf ..., NAME being the folder's name). An incomplete set raises ValueError."""
    path = Path(path)
    if not path.is_dir():
        return [path]
    shards = sorted(path.glob(f"{path.name}-[0-9][0-9][0-9][0-9][0-9]-of-[0-9][0-9][0-9][0-9][0-9].gguf"))
    expected = [path / f"{path.name}-{i:05d}-of-{len(shards):05d}.gguf" for i in range(1, len(shards) + 1)]
    if not shards or shards != expected:
        raise ValueError(f"{path}/ does not hold a complete set of shards {path.name}-0000N-of-0000M.gguf; "
                         "delete it and build it again")
    return shards


def pair_yaml(config_dir: Path, pair: str) -> Path:
    return Path(config_dir) / pair / f"converter_args_{pair.lower()}.yaml"


def framework(pair: str) -> str:
    return pair.rsplit("_", 1)[-1]


def list_pairs(config_dir: Path) -> list[str]:
    """Pair folders under configurations/, sorted."""
    return sorted(e.name for e in os.scandir(config_dir) if e.is_dir() and not e.name.startswith("."))


def direct_framework_message(pair: str, models_dir: str, model: str) -> str:
    fw = DIRECT_FRAMEWORKS[framework(pair)]
    return (f"{pair}: {fw} loads the Hugging Face folder {models_dir}/{model}/ directly; there is no GGUF to build "
            f"for this pair. GGUF targets exist for the *_{LLAMA_FRAMEWORK} pairs only.")


def schema_default(schema: str, field: str):
    """A field's default in a JSON schema written in YAML (rules/schemas/): the one place it is written."""
    return _schema(schema)["properties"][field]["default"]


@lru_cache(maxsize=None)
def _schema(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


@lru_cache(maxsize=None)
def _validator(schema: str):
    """A jsonschema validator of the schema (its $schema's draft) that also fills in each absent field's default,
    as Snakemake's validate(set_default=True) does; built once per schema and run. Snakemake's reloads the schema
    with its pure-Python YAML reader on each call: 0.18 s of every start-up for our five configuration files."""
    import jsonschema

    document = _schema(schema)
    cls = jsonschema.validators.validator_for(document)
    properties = cls.VALIDATORS["properties"]

    def properties_with_defaults(validator, props, instance, subschema):
        if validator.is_type(instance, "object"):
            for name, sub in props.items():
                if isinstance(sub, dict) and "default" in sub:
                    instance.setdefault(name, sub["default"])
        yield from properties(validator, props, instance, subschema)

    return jsonschema.validators.extend(cls, {"properties": properties_with_defaults})(document)


def validate_config(data: dict, schema: str, path) -> dict:
    """Checks data (the YAML at path) against the schema and fills in the defaults; a ConfigError names the file,
    the field and what is wrong."""
    import jsonschema

    error = jsonschema.exceptions.best_match(_validator(schema).iter_errors(data))
    if error is not None:
        field = "/".join(str(p) for p in error.absolute_path)
        about = error.schema.get("description") if isinstance(error.schema, dict) else None
        raise ConfigError(f"{path} is invalid: {field + ': ' if field else ''}{error.message} (schema: {schema})"
                          + (f"\n{field}: {' '.join(about.split())}" if field and about else ""))
    return data


def load_pairs(config_dir: str, validate) -> tuple[dict[str, dict], list[str]]:
    """{pair: YAML} of the llama.cpp pairs under config_dir, each checked by validate(data, path) (the schema)
    and check_pair; and, apart, the pairs of the frameworks that load Hugging Face folders directly."""
    llama, direct = {}, []
    for pair in list_pairs(config_dir):
        fw = framework(pair)
        if fw in DIRECT_FRAMEWORKS:
            direct.append(pair)
            continue
        if fw != LLAMA_FRAMEWORK:
            raise ConfigError(f"{config_dir}/{pair}/: unknown framework {fw!r}. Pairs are "
                              f"<HARDWARE>_<TASK>_<FRAMEWORK>, and this workflow builds GGUFs for *_LLAMA pairs")
        path = pair_yaml(config_dir, pair)
        data = load_yaml(path)
        validate(data, path)
        check_pair(data, path)
        llama[pair] = data
    return llama, direct


def pair_settings(pairs: dict[str, dict], direct_pairs: list[str], pair: str, where: str, config_dir: str,
                  models_dir: str, model: str) -> dict:
    """pairs[pair]; for a pair of a framework that needs no GGUF, or one that is not configured, a ConfigError
    that says why (where: the target)."""
    if pair in direct_pairs:
        raise ConfigError(direct_framework_message(pair, models_dir, model))
    if pair not in pairs:
        raise ConfigError(f"{where}: there is no pair {pair} ({config_dir}/{pair}/ does not exist). "
                          f"Configured pairs: {', '.join(pairs) or '(none)'}")
    return pairs[pair]


def pair_output(pair_cfg: dict | None, stem: str, where: str = "the pair") -> str:
    """A pair's output: stem.gguf, or the folder `stem` of its shards when the pair sets SPLIT_MAX_SIZE or
    SPLIT_MAX_TENSORS."""
    return stem if pair_cfg and split_arguments(pair_cfg, where) else f"{stem}.gguf"


def model_names(value) -> list[str]:
    """MODEL_NAME as a list: one name, or the batch's names."""
    return [value] if isinstance(value, str) else list(value)


# a pair's device budget (scripts/budget.py): an output of a pair that sets one is checked against it
BUDGETS = ("MAX_FILE_SIZE", "MAX_KLD", "MIN_TOP1", "MIN_PROMPT_TPS", "MIN_GENERATION_TPS")


def has_budget(pair_cfg: dict) -> bool:
    return any(pair_cfg.get(field) is not None for field in BUDGETS)


def budget_error(pair_cfg: dict, validate: bool, benchmark: bool, needs) -> str | None:
    """Why a pair's budget cannot be checked (it needs the validation, or the benchmark, which is off), or None.
    needs(budget) says what it reads (scripts/budget.py)."""
    if is_auto(pair_cfg) and not validate:
        return ("PRECISION: AUTO chooses among its candidates by their validation, and VALIDATE is false in "
                "converter_args.yaml. Set VALIDATE: true, or give the pair a fixed PRECISION")
    reads = needs({k: pair_cfg[k] for k in BUDGETS if pair_cfg.get(k) is not None})
    if "report" in reads and not validate:
        return ("MAX_KLD and MIN_TOP1 are checked against the validation, and VALIDATE is false in "
                "converter_args.yaml. Set VALIDATE: true, or remove them")
    if "speed" in reads and not benchmark:
        return ("MIN_PROMPT_TPS and MIN_GENERATION_TPS are checked against the benchmark, and BENCHMARK is false in "
                "converter_args.yaml. Set BENCHMARK: true, or remove them")
    return None


def default_outputs(pairs: dict[str, dict], models: list[str], out: str, validate: bool,
                    benchmark: bool = False) -> list[str]:
    """The default target: for each model, each pair's output, its .gguf.sha256, when validating its .json,
    when benchmarking its .speed.json and, for a pair with a budget, its .budget.json; then the report's plot (one
    for the batch). For a pair of PRECISION: AUTO: <model>-AUTO.gguf, its .gguf.sha256 and the decision,
    <model>-AUTO.json, which holds the chosen candidate's measurements (its budget was applied by the choice)."""
    stems = [f"{out}/{pair}/{model}-{cfg['PRECISION']}" for model in models for pair, cfg in pairs.items()]
    outputs = []
    for model in models:
        mine = {pair: f"{out}/{pair}/{model}-{cfg['PRECISION']}" for pair, cfg in pairs.items()}
        fixed = {pair: stem for pair, stem in mine.items() if not is_auto(pairs[pair])}
        outputs += [pair_output(pairs[pair], stem) for pair, stem in mine.items()]
        outputs += [f"{stem}.gguf.sha256" for stem in mine.values()]
        outputs += [f"{stem}.json" for pair, stem in mine.items() if validate or pair not in fixed]
        outputs += [f"{stem}.speed.json" for stem in fixed.values()] if benchmark else []
        outputs += [f"{stem}.budget.json" for pair, stem in fixed.items() if has_budget(pairs[pair])]
    if validate and stems:
        outputs.append(f"{out}/report/size_vs_kld.png")
    return outputs


def load_yaml(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: missing. Create it with at least a PRECISION: line") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e}). Fix the syntax") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: must be a mapping of FIELD: value, not a {type(data).__name__}")
    return data


def model_files(models_dir: str, model: str) -> list[str]:
    """The files of a model folder that conversion reads (its inputs), sorted."""
    folder = Path(models_dir) / model
    if not folder.is_dir():
        found = sorted(p.name for p in Path(models_dir).iterdir() if p.is_dir()) if Path(models_dir).is_dir() else []
        raise ConfigError(
            f"{folder}/: no such model folder. Place the Hugging Face model folder there. Existing model folders: "
            f"{', '.join(found) or '(none: ' + models_dir + '/ is empty)'}")
    keep = (".json", ".safetensors", ".txt", ".model", ".tiktoken")
    return sorted(str(p) for p in folder.iterdir() if p.is_file() and p.name.endswith(keep))


def fingerprint(models_dir: str, model: str, out_dir: str) -> str:
    """Writes <out_dir>/<model>.json, the sha256 of every file conversion reads, and returns its path.

    Conversion depends on this small file instead of the raw shards, so staleness follows content, not mtimes:
    after a fresh checkout (new mtimes everywhere) the file is rewritten only if some content changed, and
    otherwise keeps its old mtime. Hashes are cached by (size, mtime, inode) in .<model>.stat.json beside
    it, so an unchanged folder costs a stat per file; new or changed files are hashed in parallel, a core each."""
    import hashlib
    import sys
    from concurrent.futures import ThreadPoolExecutor

    files = model_files(models_dir, model)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    target, cache_path = out / f"{model}.json", out / f".{model}.stat.json"
    try:
        cache = json.loads(cache_path.read_text())
    except (OSError, ValueError):
        cache = {}

    def sha256(f: str, size: int) -> str:
        if size > 100 * 2**20:
            print(f"fingerprinting {f} ({size / 2**30:.1f} GiB)", file=sys.stderr, flush=True)
        with open(f, "rb") as fh:
            return hashlib.file_digest(fh, "sha256").hexdigest()

    stats = {f: os.stat(f) for f in files}
    keys = {f: [st.st_size, st.st_mtime_ns, st.st_ino] for f, st in stats.items()}
    known = {f: cache[f]["sha256"] for f in files
             if isinstance(cache.get(f), dict) and cache[f].get("stat") == keys[f]}
    stale = [f for f in files if f not in known]
    if stale:  # the shards of a model in parallel: hashlib releases the GIL, so each core hashes one
        with ThreadPoolExecutor(max_workers=min(len(stale), os.cpu_count() or 1, 8)) as pool:
            known.update(zip(stale, pool.map(lambda f: sha256(f, stats[f].st_size), stale)))
    digests = {Path(f).name: known[f] for f in files}
    fresh = {f: {"stat": keys[f], "sha256": known[f]} for f in files}
    text = json.dumps({"model": model, "files": digests}, indent=1, sort_keys=True) + "\n"
    for path, content in ((target, text), (cache_path, json.dumps(fresh) + "\n")):
        if not path.exists() or path.read_text() != content:
            with atomic_path(path) as tmp:
                tmp.write_text(content)
    return str(target)


# --- which converter makes a model's intermediate (README: "Choosing the converter") ----------------------
CONVERTERS = ("auto", "hf2gguf", "llama.cpp")  # CONVERTER in converter_args.yaml
REFERENCE = "llama.cpp's convert_hf_to_gguf.py"


@lru_cache(maxsize=1)
def our_architectures() -> tuple[str, ...]:
    """config.json architectures our converter supports: the names of the @register(...) decorators in
    scripts/hf2gguf/architectures/, read without importing the package (numpy and gguf: a second at start-up).
    tests/test_fallback.py checks them against hf2gguf.architectures.REGISTRY."""
    names = []
    for path in sorted((Path(__file__).resolve().parent / "hf2gguf" / "architectures").glob("*.py")):
        for args in re.findall(r"^@register\(([^)]*)\)", path.read_text(encoding="utf-8"), re.M):
            names += re.findall(r"[\"']([^\"']+)[\"']", args)
    return tuple(sorted(names))


def model_config(models_dir: str, model: str) -> dict:
    path = Path(models_dir) / model / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: missing. A Hugging Face model folder has a config.json naming its "
                          "architectures") from None
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: unreadable ({e}). Download it again") from None
    return config if isinstance(config, dict) else {}


def model_architectures(models_dir: str, model: str) -> list[str]:
    """config.json's architectures, then those of its text_config (where llama.cpp's converter looks too)."""
    config = model_config(models_dir, model)
    names = config.get("architectures")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"{Path(models_dir) / model / 'config.json'}: has no \"architectures\" list. Add the one of "
                          f"the model, e.g. \"architectures\": [\"{our_architectures()[0]}\"]")
    text = (config.get("text_config") or {}).get("architectures") or []
    return names + [n for n in text if isinstance(n, str)]


# quantization_config.quant_method of the pre-quantized releases llama.cpp's converter (b11312) dequantizes in
# dequant_model; which of them ours reads is hf2gguf.peek.weight_scaling's to say
THEIR_QUANT_METHODS = ("bitnet", "compressed-tensors", "fp8", "gptq", "modelopt", "mxfp4")


def describe_quantization(q: dict) -> str:
    """A quantization_config in short: its quant_method, with compressed-tensors' format."""
    return f"{q['quant_method']} {q['format']}" if q.get("format") else str(q["quant_method"])


def _nearest(name: str, known) -> str:
    import difflib

    close = difflib.get_close_matches(name, known, n=4, cutoff=0.5)
    return f"{len(known)} architectures, the nearest: {', '.join(close)}" if close else f"{len(known)} architectures"


def choose_converter(setting: str, models_dir: str, model: str, theirs=None) -> str:
    """'hf2gguf' or 'llama.cpp' for a model: CONVERTER (auto: ours when it supports the architecture, else
    llama.cpp's) and config.json. theirs() gives llama.cpp's list; it is called only when ours does not apply,
    because it reads the sdist. An architecture that the chosen converter(s) do not know is a ConfigError."""
    names = model_architectures(models_dir, model)
    ours = our_architectures()
    q = quantization(model_config(models_dir, model))
    method = None if q is None else describe_quantization(q)
    where = f"{models_dir}/{model}/config.json"
    try:
        ours_read = ours_reads(q)
    except ValueError as e:
        raise ConfigError(f"{where}: {e}. Re-download config.json") from None
    if not ours_read and q["quant_method"] not in THEIR_QUANT_METHODS:
        raise ConfigError(f"{where}: its weights are pre-quantized ({method}, quantization_config), which neither "
                          f"our converter nor {REFERENCE} reads. Use the model's unquantized (bf16/f16) release")
    if setting != "llama.cpp" and any(n in ours for n in names):
        if ours_read:
            return "hf2gguf"
        if setting == "hf2gguf":
            raise ConfigError(f"{where}: its weights are pre-quantized ({method}, quantization_config), which our "
                              f"converter does not read, and CONVERTER is hf2gguf in converter_args.yaml. "
                              f"CONVERTER: auto (the default) converts it with {REFERENCE}, which dequantizes them; "
                              "or use the model's unquantized (bf16) release")
        return "llama.cpp"  # auto: theirs dequantizes what ours does not read (it knows every architecture of ours)
    if theirs is None:
        from reference_converter import architectures as theirs
    try:
        known = theirs()
    except Exception as e:  # no sdist and no network: only the error message needs the list now
        if setting != "hf2gguf":
            raise ConfigError(f"{model}: its architecture {names[0]} needs {REFERENCE}, whose list of "
                              f"architectures could not be read: {e}") from None
        known = None
    theirs_ok = known is not None and any(n in known for n in names)
    where = f"{where}: architecture {', '.join(names)}"
    ours_list = f"our converter supports {', '.join(ours)}"
    all_theirs = "(all: python scripts/reference_converter.py --architectures)"
    if setting == "hf2gguf":
        if theirs_ok:
            auto = f"CONVERTER: auto (the default) would convert it with {REFERENCE}"
        elif known is None:
            auto = f"CONVERTER: auto (the default) would convert it with {REFERENCE} if that knows it"
        else:
            auto = f"{REFERENCE} does not know it either"
        raise ConfigError(f"{where} is not supported by our converter, and CONVERTER is hf2gguf in "
                          f"converter_args.yaml: {ours_list}. {auto}")
    if theirs_ok:
        return "llama.cpp"
    if setting == "llama.cpp":
        hint = "; our converter does: set CONVERTER: auto" if any(n in ours for n in names) else ""
        raise ConfigError(f"{where} is not supported by {REFERENCE}, and CONVERTER is llama.cpp in "
                          f"converter_args.yaml{hint}. It converts {_nearest(names[0], known)} {all_theirs}")
    raise ConfigError(f"{where} is supported neither by our converter nor by {REFERENCE}: {ours_list}; "
                      f"llama.cpp's converts {_nearest(names[0], known)} {all_theirs}. Check the name in "
                      "config.json; a newer llama.cpp may know it, outside this workflow")


def converter_of_gguf(kv: dict) -> str:
    """Which converter made a GGUF, from its provenance keys: llama.cpp's writes hf2gguf.converter."""
    return kv.get("hf2gguf.converter") or "hf2gguf"


def validation_summary(report: dict) -> str:
    return (f"{report['gguf']}: {report['file_bytes'] / 1e6:.1f} MB, {report['bits_per_weight']:.2f} bpw, "
            f"KLD {report['kl_divergence']:.4f}, top-1 {100 * report['top1_agreement']:.1f}%, "
            f"PPL {report['perplexity']:.2f}, converted by {report.get('converter', 'hf2gguf')}")


def speed_summary(speed: dict) -> str:
    """A benchmark's figures (scripts/speed.py) in a few words."""
    return f"pp {speed['prompt_tps']:.1f} t/s, tg {speed['generation_tps']:.1f} t/s"


def speed_path(report_path: str) -> str:
    """The benchmark (.speed.json) beside an output's validation report (.json)."""
    return report_path[:-len(".json")] + ".speed.json"


def is_validation_report(path: str) -> bool:
    """A validation report (<model>-<PRECISION>.json) among the targets: not a benchmark, a budget check or a
    publication record."""
    return path.endswith(".json") and not path.endswith((".speed.json", ".budget.json")) and "/published/" not in path


def budget_summary(check: dict) -> str:
    """A budget check (scripts/budget.py) in a few words."""
    return "within budget" if check["budget_ok"] else "BUDGET BROKEN: " + "; ".join(check["broken"])


def failed_jobs(snakemake_log: str | None) -> list[tuple[str, str, str]]:
    """(rule, output, log) of each "Error in rule" block of a Snakemake log file."""
    try:
        text = Path(snakemake_log).read_text(errors="replace") if snakemake_log else ""
    except OSError:
        text = ""
    failed = []
    for block in re.findall(r"^Error in rule (\S+):\n((?:[ \t]+.*\n?)*)", text, re.M):
        rule, body = block
        field = {k: v.strip() for k, v in re.findall(r"^\s{4}(\w+): (.*)$", body, re.M)}
        log = re.sub(r" \(check log file.*", "", field.get("log", "")) or "(none)"
        failed.append((rule.rstrip(":"), field.get("output", ""), log))
    return list(dict.fromkeys(failed))


def print_summary(paths: list[str], snakemake_log: str | None = None) -> None:
    """The end of a run, on stderr: one line per validation report (.json) among paths that exists, with its
    benchmark's figures (.speed.json) when there are; then, after a
    failure (snakemake_log given: onerror, e.g. with --keep-going), the jobs that failed with their logs, and the
    outputs that were not made."""
    import sys

    def say(line=""):
        print(line, file=sys.stderr)

    targets = set(paths)
    for path in paths:
        if is_validation_report(path) and os.path.exists(path):
            with open(path) as f:
                report = json.load(f)
            line = validation_summary(report)
            if "chosen_precision" in report:  # PRECISION: AUTO (scripts/choose.py): its candidate's figures
                speed = ", " + speed_summary(report) if "generation_tps" in report else ""
                say(f"{line}{speed}; AUTO chose {report['chosen_precision']}: {report['why']}")
                continue
            if os.path.exists(speed_path(path)):
                with open(speed_path(path)) as f:
                    line += ", " + speed_summary(json.load(f))
            budget = path[:-len(".json")] + ".budget.json"
            if os.path.exists(budget):
                with open(budget) as f:
                    line += "; " + budget_summary(json.load(f))
            say(line)
        elif path.endswith(".speed.json") and os.path.exists(path):
            report = path[:-len(".speed.json")] + ".json"
            if report not in targets or not os.path.exists(report):  # benchmarked, not validated: on its own
                with open(path) as f:
                    speed = json.load(f)
                say(f"{speed['gguf']}: {speed_summary(speed)}")
    if snakemake_log is None:
        return
    if not isinstance(snakemake_log, str):  # onerror's log: Snakemake 9 gives a list of its log files
        snakemake_log = next((str(p) for p in snakemake_log if str(p).endswith(".snakemake.log")), None)
    failed = failed_jobs(snakemake_log)
    missing = [p for p in paths if not os.path.exists(p)]
    made = [p for p in paths if is_validation_report(p) and p not in missing]
    say(f"\n{len(paths) - len(missing)} of {len(paths)} targets made ({len(made)} outputs validated); "
        f"{len(failed)} job(s) failed:")
    for rule, output, log in failed:
        say(f"  FAILED rule {rule}: {output or '(no output)'}\n    log: {log}")
    shown = [p for p in missing if not p.endswith((".sha256", ".json"))]
    for path in shown[:20]:
        say(f"  not made: {path}" + (" (nor its .sha256 and .json)" if path.endswith(".gguf") else ""))
    if len(shown) > 20:
        say(f"  ... and {len(shown) - 20} more not made")
    say(f"Snakemake's log of this run: {snakemake_log}")


def intermediate_type(models_dir: str, model: str, setting: str = "auto") -> str:
    """INTERMEDIATE_TYPE, with auto resolved from the safetensors headers."""
    return full_precision_type(Path(models_dir) / model) if setting == "auto" else setting


def pair_targets(converter_dir: str | Path, pair: str) -> list[str]:
    """outputs/<PAIR>/<MODEL_NAME>-<PRECISION>.gguf for a CECAIServe Converter directory, one per model when
    MODEL_NAME is a list; the folder of its shards, outputs/<PAIR>/<MODEL_NAME>-<PRECISION>, when the pair is
    split."""
    root = Path(converter_dir)
    general = load_yaml(root / "configurations" / "converter_args.yaml")
    names = general.get("MODEL_NAME")
    if not names or not isinstance(names, (str, list)) or not all(isinstance(n, str) and n for n in model_names(names)):
        raise ConfigError(f"{root}/configurations/converter_args.yaml: MODEL_NAME must be a model folder's name or a "
                          "list of them")
    path = pair_yaml(root / "configurations", pair)
    pair_cfg = load_yaml(path)
    precision = pair_cfg.get("PRECISION")
    if not precision:
        raise ConfigError(f"{path}: PRECISION is missing or empty")
    outputs = str(general.get("OUTPUTS_DIR") or "outputs").rstrip("/")
    return [pair_output(pair_cfg, f"{outputs}/{pair}/{model}-{precision}", str(path)) for model in model_names(names)]


if __name__ == "__main__":  # python scripts/pipeline.py target CONVERTER_DIR PAIR
    import sys

    if len(sys.argv) != 4 or sys.argv[1] != "target":
        sys.exit("usage: python scripts/pipeline.py target CONVERTER_DIR PAIR")
    try:
        print("\n".join(pair_targets(sys.argv[2], sys.argv[3])))
    except ConfigError as e:
        sys.exit(f"error: {e}")
