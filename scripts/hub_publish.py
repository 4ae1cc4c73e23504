#!/usr/bin/env python3
"""Publish a model's validated outputs to a Hugging Face Hub model repository, with a generated model card.

    python scripts/hub_publish.py OWNER/REPO INPUTS... --model NAME --model-dir models/NAME -o RECORD.json
        [--visibility private|public] [--quantized-by NAME]

INPUTS are rule publish's: every pair's GGUF (or folder of shards), its .gguf.sha256, its validation .json and,
when benchmarked, its .speed.json (the card's speed columns); a pair is published only with its validation
report, and only when its files still match their .sha256. The
repository (created when missing, private unless --visibility public) gets <PAIR>/<model>-<PRECISION>.gguf (or
the folder <PAIR>/<model>-<PRECISION>/ of its shards) with its .sha256, a model card (README.md) and
.hf2gguf-published.json, the list of the files this script put there. A pair of PRECISION: AUTO is published under
the precision it chose (<PAIR>/<model>-Q4_K_M.gguf, not <model>-AUTO.gguf), with a .sha256 that names that file.

One commit per run, holding only what changed: a file whose sha256 (LFS) or git blob id (regular files) is already
the repository's is not sent again, and when nothing changed no commit is made. Files that an earlier publish put
there (listed in .hf2gguf-published.json) and that are no longer outputs, e.g. after a pair's precision changed,
are deleted in the same commit; files added to the repository by anyone else are never touched. RECORD.json
(repository, commit, each file's sha256) is written only once the commit succeeded.

Honours HF_TOKEN (a write token), HF_ENDPOINT and HF_HOME. Uploads go over git LFS: huggingface_hub would use Xet
when hf_xet is installed, which this script turns off (HF_HUB_DISABLE_XET=1) unless HF_HUB_DISABLE_XET is set.
"""

import argparse
import hashlib
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from hf2gguf import __version__ as CONVERTER_VERSION
from hf2gguf.atomic import write_json
from llama_toolchain import LLAMA_BUILD, LLAMA_BUILD_COMMIT
from pipeline import gguf_files

MANIFEST = ".hf2gguf-published.json"
SOURCE_FILE = ".hf2gguf-source.json"  # written by scripts/hub_download.py
# speed figures a validation report may hold: the card shows a column for each one that some report has
SPEED_COLUMNS = {"prompt_tps": "Prompt tokens/s", "generation_tps": "Generation tokens/s"}
LICENSE_KEYS = ("license", "license_name", "license_link")


class PublishError(Exception):
    pass


# --- settings (rules/publish.smk) -------------------------------------------------------------------------------
def repo_id(hub_upload: dict | None, model: str) -> str:
    """HUB_UPLOAD's repo for a model: "{model}" replaced by its name."""
    if not hub_upload:
        raise ValueError("HUB_UPLOAD is not set in converter_args.yaml, so nothing is published. Set HUB_UPLOAD: "
                         "{repo: owner/{model}-GGUF} to publish")
    return hub_upload["repo"].replace("{model}", model)


def visibility(hub_upload: dict | None) -> str:
    return "private" if (hub_upload or {}).get("private", True) else "public"


def quantized_by(hub_upload: dict | None, model: str) -> str:
    """The model card's quantized_by: HUB_UPLOAD's, else the repository's owner."""
    return (hub_upload or {}).get("quantized_by") or repo_id(hub_upload, model).split("/")[0]


# --- what is published --------------------------------------------------------------------------------------------
@dataclass
class PairOutput:
    pair: str
    precision: str
    gguf: Path  # the GGUF, or the folder of its shards
    checksum: Path  # its .gguf.sha256
    report: dict  # its validation report (an AUTO pair's: its decision, which holds the chosen file's figures)
    auto: bool = False  # PRECISION: AUTO, and precision is the one it chose

    @property
    def name(self) -> str:
        """The GGUF's (or its folder's) name in the repository: an AUTO pair's is named for the precision it chose,
        since "AUTO" says nothing once the file has left the workflow."""
        return self.gguf.name.replace("-AUTO.gguf", f"-{self.precision}.gguf") if self.auto else self.gguf.name


def pair_outputs(inputs: list[str], model: str) -> list[PairOutput]:
    """The pairs among rule publish's inputs, each found by its validation report <OUT>/<PAIR>/<model>-<PRECISION>.json
    beside its .gguf (or folder of shards) and .gguf.sha256."""
    outputs = []
    for report in sorted(p for p in inputs if p.endswith(".json") and not p.endswith(".speed.json")):
        stem = report[: -len(".json")]
        gguf = f"{stem}.gguf" if f"{stem}.gguf" in inputs else stem
        checksum = Path(f"{stem}.gguf.sha256")
        for path in (gguf, checksum):
            if not Path(path).exists():
                raise PublishError(f"{path} is missing: run snakemake again to make it")
        data = json.loads(Path(report).read_text(encoding="utf-8"))
        if f"{stem}.speed.json" in inputs:  # rule speed's figures, measured on the pair's hardware
            speed = json.loads(Path(f"{stem}.speed.json").read_text(encoding="utf-8"))
            data |= {k: speed[k] for k in SPEED_COLUMNS if k in speed}
        if not data.get("loaded"):
            raise PublishError(f"{report}: llama.cpp did not load {gguf}, which is not published. Fix the pair")
        name = Path(stem).name
        if not name.startswith(f"{model}-"):
            raise PublishError(f"{report} is not an output of {model}")
        precision = name[len(model) + 1:]
        auto = precision == "AUTO"
        if auto and not data.get("chosen_precision"):
            raise PublishError(f"{report} is not the decision of a PRECISION: AUTO pair (no chosen_precision): "
                               "run snakemake again to remake it")
        outputs.append(PairOutput(Path(stem).parent.name, data["chosen_precision"] if auto else precision, Path(gguf),
                                  checksum, data, auto))
    return outputs


@dataclass
class Local:
    """A file to publish: a path on disk or the bytes of a generated one, with its sha256."""
    source: Path | bytes
    sha256: str
    size: int

    @classmethod
    def of_bytes(cls, data: bytes) -> "Local":
        return cls(data, hashlib.sha256(data).hexdigest(), len(data))

    def read(self) -> bytes:
        return self.source if isinstance(self.source, bytes) else self.source.read_bytes()


@dataclass(frozen=True)
class Remote:
    """A file as the Hub lists it: its size, git blob id and, when stored with LFS, its sha256."""
    size: int | None
    blob_id: str | None
    sha256: str | None = None


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def checksums(path: Path) -> dict[str, str]:
    """A sha256sum file: {file name as listed: sha256}."""
    sums = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            digest, name = line.split(maxsplit=1)
            sums[name.lstrip("*")] = digest
    return sums


def pair_files(output: PairOutput) -> dict[str, Local]:
    """{path in the repository: file} of one pair: <PAIR>/<model>-<PRECISION>.gguf, or its shards under
    <PAIR>/<model>-<PRECISION>/, and the .gguf.sha256, whose lines name the files relative to <PAIR>/. Each GGUF
    must still have the sha256 its .sha256 file recorded when it was validated. An AUTO pair's file goes up under
    the chosen precision's name, with a .sha256 written for that name."""
    listed = checksums(output.checksum)
    files = {}
    try:
        ggufs = gguf_files(output.gguf)
    except ValueError as e:
        raise PublishError(str(e)) from None
    for f in ggufs:
        name = f.relative_to(output.gguf.parent).as_posix()
        digest = sha256_of(f)
        if listed.get(name) != digest:
            raise PublishError(f"{f} does not match its checksum in {output.checksum}: it changed after it was "
                               "validated. Run snakemake again to rebuild and validate it")
        files[f"{output.pair}/{output.name if output.auto else name}"] = Local(f, digest, f.stat().st_size)
    if output.auto:  # one file (an AUTO pair is never split); its checksum in scripts/checksum.py's format
        files[f"{output.pair}/{output.name}.sha256"] = Local.of_bytes(f"{digest}  {output.name}\n".encode())
        return files
    data = output.checksum.read_bytes()
    files[f"{output.pair}/{output.checksum.name}"] = Local(output.checksum, hashlib.sha256(data).hexdigest(), len(data))
    return files


def manifest(model: str, files: dict[str, Local]) -> bytes:
    """.hf2gguf-published.json: the files this publish put in the repository (the pairs' GGUFs and checksums)."""
    listed = {path: f.sha256 for path, f in sorted(files.items())}
    return (json.dumps({"model": model, "files": listed}, indent=1) + "\n").encode()


def unchanged(local: Local, remote: Remote | None) -> bool:
    """Whether the repository already holds the file: same sha256 (LFS), or same git blob id (a regular file)."""
    if remote is None:
        return False
    if remote.sha256 is not None:
        return remote.sha256 == local.sha256
    if remote.size is not None and remote.size != local.size:
        return False
    return remote.blob_id == git_blob_id(local.read())


def plan(local: dict[str, Local], remote: dict[str, Remote], previous: set[str]) -> tuple[list[str], list[str]]:
    """(paths to upload, paths to delete): the files that are missing or differ in the repository, and those that
    an earlier publish put there (previous) that are no longer published and are still there."""
    upload = [path for path, f in sorted(local.items()) if not unchanged(f, remote.get(path))]
    delete = sorted(path for path in previous if path not in local and path in remote)
    return upload, delete


# --- the model card ---------------------------------------------------------------------------------------------
def front_matter(text: str) -> dict:
    """The YAML header of a model card (README.md), or {}."""
    import yaml

    m = re.match(r"---[ \t]*\r?\n(.*?)\r?\n---[ \t]*(\r?\n|$)", text, re.S)
    try:
        data = yaml.safe_load(m.group(1)) if m else None
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def source_facts(model_dir: Path) -> tuple[dict | None, dict]:
    """The model folder's Hub source (.hf2gguf-source.json, when scripts/hub_download.py fetched it) and the license
    fields of its README.md's header."""
    source_file, readme = model_dir / SOURCE_FILE, model_dir / "README.md"
    source = json.loads(source_file.read_text(encoding="utf-8")) if source_file.is_file() else None
    card = front_matter(readme.read_text(encoding="utf-8", errors="replace")) if readme.is_file() else {}
    return source, {k: card[k] for k in LICENSE_KEYS if card.get(k)}


def human_size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


def model_card(model: str, repo: str, outputs: list[PairOutput], quantized_by: str, source: dict | None = None,
               licensing: dict | None = None) -> str:
    """README.md: the YAML header the Hub reads (base_model when the model came from the Hub, license carried over
    from its card, tags, quantized_by), the provenance and a table of the files with what validation measured."""
    import yaml

    meta = {"base_model": source["repo"]} if source else {}
    meta |= (licensing or {}) | {"tags": ["gguf", "llama.cpp"], "quantized_by": quantized_by}
    builds = sorted({o.report["llama_cpp_build"] for o in outputs if o.report.get("llama_cpp_build")})
    builds = builds or [f"{LLAMA_BUILD} ({LLAMA_BUILD_COMMIT})"]
    converters = sorted({o.report.get("converter") or "hf2gguf" for o in outputs}) or ["hf2gguf"]
    converters = [f"hf2gguf {CONVERTER_VERSION}" if c == "hf2gguf" else c for c in converters]
    if source:
        endpoint = source.get("endpoint") or "https://huggingface.co"
        origin = f"[{source['repo']}]({endpoint}/{source['repo']}) at commit `{source['commit']}`"
    else:
        origin = f"the local model folder `{model}` (not from the Hub)"
    speeds = [k for k in SPEED_COLUMNS if any(k in o.report for o in outputs)]
    head = ["Pair", "Precision", "File", "Size", "Bits/weight", "KLD", "Top-1", "PPL"]
    head += [SPEED_COLUMNS[k] for k in speeds]
    rows = []
    for o in outputs:
        r = o.report
        name = f"{o.pair}/{o.name}"
        where = f"`{name}/` ({r.get('files', 1)} shards)" if o.gguf.is_dir() else f"`{name}`"
        precision = f"{o.precision} (AUTO)" if o.auto else o.precision
        cells = [o.pair, precision, where, human_size(r["file_bytes"]), f"{r['bits_per_weight']:.2f}",
                 f"{r['kl_divergence']:.6f}", f"{100 * r['top1_agreement']:.1f}%", f"{r['perplexity']:.2f}"]
        rows.append(cells + [f"{r[k]:.1f}" if k in r else "-" for k in speeds])
    tokens = sorted({o.report.get("evaluated_tokens") for o in outputs} - {None})
    example = outputs[0] if outputs else None
    lines = ["---", yaml.safe_dump(meta, sort_keys=False).rstrip(), "---", "", f"# {model} GGUF", "",
             f"GGUF files of {origin} for llama.cpp, one per target (pair) of the hf2gguf workflow that made them.", "",
             f"- Converted by: {', '.join(converters)}",
             f"- Quantized and validated with llama.cpp {', '.join(builds)}", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    lines += ["",
              "Every file was loaded in llama.cpp and compared with the model's full-precision GGUF on "
              f"{'/'.join(map(str, tokens)) or 'the'} tokens of the workflow's evaluation text: KLD is the mean KL "
              "divergence of its next-token distributions from the full-precision ones, Top-1 how often both rank "
              "the same token first, PPL the perplexity on that text." + (
                  " Speeds were measured on the pair's target." if speeds else "") + (
                  " A precision marked (AUTO) was chosen by the workflow for the pair's budget: the smallest of the "
                  "candidates it measured that met it." if any(o.auto for o in outputs) else ""),
              "",
              "Each file has its sha256 beside it: `sha256sum -c <file>.gguf.sha256` in the pair's folder checks it."]
    if example:
        path = f"{example.pair}/{example.name}"
        fetch = (f"hf download {repo} --include '{path}/*' --local-dir ." if example.gguf.is_dir()
                 else f"hf download {repo} {path} --local-dir .")
        first = f"{path}/{gguf_files(example.gguf)[0].name}" if example.gguf.is_dir() else path
        lines += ["", "## Use", "", "```sh", fetch, f"llama-cli -m {first}", "```"]
    return "\n".join(lines) + "\n"


# --- publishing ---------------------------------------------------------------------------------------------------
def connection_error(e: BaseException) -> BaseException | None:
    """The network failure behind an exception (huggingface_hub wraps a failed LFS upload in a RuntimeError)."""
    import httpx2 as httpx

    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, (httpx.TransportError, ConnectionError)):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def publish(repo: str, model: str, pairs: dict[str, Local], card: str, private: bool) -> dict:
    """Pushes the pairs' files, the card and the manifest to repo in one commit, deleting what an earlier publish
    put there and is no longer published; returns the record: repository, commit, files and what this run changed."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, constants, hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled, RevisionNotFoundError

    endpoint = constants.ENDPOINT
    files = pairs | {"README.md": Local.of_bytes(card.encode()), MANIFEST: Local.of_bytes(manifest(model, pairs))}
    api = HfApi()
    try:
        api.create_repo(repo, private=private, exist_ok=True)
        try:
            info = api.model_info(repo, revision="main", files_metadata=True)
            head, siblings, is_private = info.sha, info.siblings or [], info.private
        except RevisionNotFoundError:  # a repository without a commit yet
            head, siblings, is_private = None, [], private
        if is_private is not None and is_private != private:
            print(f"note: {repo} already exists and is {'private' if is_private else 'public'}; HUB_UPLOAD's "
                  "private applies only when the workflow creates the repository. Change it on the Hub",
                  file=sys.stderr)
        remote = {s.rfilename: Remote(s.size, s.blob_id, s.lfs.sha256 if s.lfs else None) for s in siblings}
        previous = set()
        if MANIFEST in remote:
            with open(hf_hub_download(repo, MANIFEST, revision=head), encoding="utf-8") as f:
                previous = set(json.load(f).get("files", {}))
        upload, delete = plan(files, remote, previous)
        for path in upload:
            print(f"uploading {path} ({human_size(files[path].size)})", file=sys.stderr, flush=True)
        for path in delete:
            print(f"deleting {path} (published before, no longer an output)", file=sys.stderr, flush=True)
        commit = head
        if upload or delete:
            operations = []
            for path in upload:
                op = CommitOperationAdd(path_in_repo=path, path_or_fileobj=files[path].source)
                op.upload_info.sha256 = bytes.fromhex(files[path].sha256)  # hashed once, above
                operations.append(op)
            operations += [CommitOperationDelete(path_in_repo=path) for path in delete]
            summary = f"hf2gguf: {model}, {len(upload)} file(s) uploaded, {len(delete)} deleted"
            description = "\n".join([f"- uploaded {p}" for p in upload] + [f"- deleted {p}" for p in delete])
            commit = api.create_commit(repo, operations, commit_message=summary, commit_description=description,
                                       parent_commit=head).oid
            print(f"{repo}: commit {commit}", file=sys.stderr)
        else:
            print(f"{repo}: nothing changed, nothing committed (at {commit})", file=sys.stderr)
    except OfflineModeIsEnabled:
        raise PublishError(f"HF_HUB_OFFLINE is set: unset it to publish to {repo}") from None
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else None
        if status in (401, 403):
            raise PublishError(f"HF_TOKEN is missing or not allowed to write to {repo}: set HF_TOKEN to a write "
                               "token") from None
        if status == 412:
            raise PublishError(f"{repo} changed on {endpoint} while this publish ran; nothing was committed. "
                               "Run again") from None
        raise PublishError(f"publishing to {repo} on {endpoint} failed ({str(e).splitlines()[0]}); nothing was "
                           "committed. Run again") from None
    except Exception as e:
        cause = connection_error(e)
        if cause is None:
            raise
        raise PublishError(f"the connection to {endpoint} failed while publishing to {repo} ({type(cause).__name__}: "
                           f"{cause}); nothing was committed. Run snakemake again: what was uploaded is not sent "
                           "again") from None
    return {"repo": repo, "url": f"{endpoint}/{repo}", "private": is_private, "commit": commit,
            "files": {path: f.sha256 for path, f in sorted(files.items())}, "uploaded": upload, "deleted": delete}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("repo", help="the Hub model repository, owner/name")
    ap.add_argument("inputs", nargs="+", help="each pair's GGUF (or folder of shards), .gguf.sha256 and .json")
    ap.add_argument("--model", required=True, help="the model's name (the folder under MODELS_DIR)")
    ap.add_argument("--model-dir", type=Path, required=True, help="the model folder: its source and license")
    ap.add_argument("--visibility", choices=["private", "public"], default="private",
                    help="of the repository when it is created (default: private)")
    ap.add_argument("--quantized-by", help="the model card's quantized_by (default: the repository's owner)")
    ap.add_argument("-o", "--output", type=Path, required=True, help="the record of what was published")
    a = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_DISABLE_XET", "1")  # before huggingface_hub is imported: git LFS (module doc)
    try:
        outputs = pair_outputs(a.inputs, a.model)
        if not outputs:
            raise PublishError(f"no validated outputs of {a.model} among the inputs: nothing to publish")
        files = {}
        for output in outputs:
            files |= pair_files(output)
        source, licensing = source_facts(a.model_dir)
        card = model_card(a.model, a.repo, outputs, a.quantized_by or a.repo.split("/")[0], source, licensing)
        record = publish(a.repo, a.model, files, card, a.visibility == "private")
    except PublishError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    write_json(a.output, record)
    print(f"{a.output}: {record['url']} at commit {record['commit']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
