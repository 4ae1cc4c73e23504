#!/usr/bin/env python3
"""Fetch the files conversion needs from a Hugging Face Hub repository into a model folder, atomically.

    python scripts/hub_download.py REPO_ID models/NAME [--revision REV]

Downloads config.json, generation_config.json, the safetensors weights with their index, the tokenizer files
(never pickle weights) and the model card README.md (whose license scripts/hub_publish.py carries over; our converter
ignores it, llama.cpp's takes general.* metadata from its header as in any clone of the repository) with
huggingface_hub.snapshot_download into a temporary folder beside the target,
records the resolved commit in .hf2gguf-source.json, and renames the folder into place when complete. A folder
that already exists and was not made by this script (a model placed by hand) is never touched. Honours
HF_ENDPOINT, HF_TOKEN, HF_HOME and HF_HUB_OFFLINE.
"""

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

SOURCE_FILE = ".hf2gguf-source.json"
PATTERNS = ["config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json",
            "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
            "vocab.json", "merges.txt", "tokenizer.model", "*.tiktoken", "README.md"]
PICKLES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def source(hub_models: dict, model: str) -> tuple[str, str] | None:
    """(repo, revision) when HUB_MODELS maps the model (to a repo, or to {repo, revision}), else None."""
    entry = hub_models.get(model)
    if isinstance(entry, str):
        return entry, "main"
    return (entry["repo"], entry.get("revision", "main")) if entry else None


def pending(models_dir: str, hub_models: dict, model: str) -> bool:
    """A Hub model whose folder is missing or empty: what depends on its files is decided once it is downloaded."""
    folder = Path(models_dir) / model
    return source(hub_models, model) is not None and not (folder.is_dir() and any(folder.iterdir()))


def downloads(models_dir: str, hub_models: dict, model: str) -> bool:
    """Whether the workflow downloads the model: pending, or downloaded by this script before (kept up to date).
    A folder placed by hand (no .hf2gguf-source.json) is used as it is, never downloaded again."""
    made_here = source(hub_models, model) is not None and (Path(models_dir) / model / SOURCE_FILE).exists()
    return made_here or pending(models_dir, hub_models, model)


class DownloadError(Exception):
    pass


def fetch(repo: str, dest: Path, revision: str = "main") -> dict:
    # imported here so that --help works without huggingface_hub, and HF_* variables are read at call time
    import httpx2 as httpx
    from huggingface_hub import HfApi, constants, snapshot_download
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError,
                                        OfflineModeIsEnabled, RepositoryNotFoundError, RevisionNotFoundError)

    endpoint = constants.ENDPOINT
    by_hand = (f"or place the model's files in {dest}/ by hand (config.json, *.safetensors, tokenizer files)")
    if dest.exists() and any(dest.iterdir()) and not (dest / SOURCE_FILE).exists():
        raise DownloadError(f"{dest}/ exists and was placed by hand: it is never replaced. Remove it to download "
                            f"{repo} instead")
    try:
        info = HfApi().model_info(repo, revision=revision)
        names = [s.rfilename for s in info.siblings or []]
        if not any(n.endswith(".safetensors") for n in names):
            pickles = [n for n in names if n.endswith(PICKLES)]
            raise DownloadError(
                f"{repo}@{revision} has no safetensors weights" + (
                    f", only pickle files ({', '.join(pickles)}), which are never downloaded or loaded: unpickling "
                    "runs arbitrary code. Convert them to safetensors on a trusted machine" if pickles else ""))
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.download-{os.getpid()}")
        try:
            print(f"downloading {repo}@{revision} (commit {info.sha}) from {endpoint}", file=sys.stderr, flush=True)
            snapshot_download(repo, revision=info.sha, local_dir=tmp, allow_patterns=PATTERNS)
            shutil.rmtree(tmp / ".cache", ignore_errors=True)  # huggingface_hub's bookkeeping
            source = {"repo": repo, "revision": revision, "commit": info.sha, "endpoint": endpoint}
            (tmp / SOURCE_FILE).write_text(json.dumps(source, indent=1) + "\n")
            if dest.exists():  # only ours (checked above), or the empty folder Snakemake makes for the output
                shutil.rmtree(dest)
            os.replace(tmp, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    except (RepositoryNotFoundError, GatedRepoError) as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        raise DownloadError(
            f"{repo} is gated, private or missing on {endpoint} (HTTP {status}). Accept its licence on the Hub "
            f"and set HF_TOKEN to an access token (or run `hf auth login`), {by_hand}") from None
    except RevisionNotFoundError:
        raise DownloadError(f"{repo} has no revision {revision!r} on {endpoint}: fix the revision") from None
    except (OfflineModeIsEnabled, LocalEntryNotFoundError, httpx.ConnectError, httpx.TimeoutException) as e:
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
        reason = "HF_HUB_OFFLINE is set" if offline else f"cannot reach {endpoint} ({type(e).__name__})"
        raise DownloadError(f"{dest}/ is missing and {reason}: connect to the network, {by_hand}") from None
    except (HfHubHTTPError, httpx.HTTPError) as e:
        raise DownloadError(f"downloading {repo} from {endpoint} failed ({e}); nothing was left in {dest.parent}/. "
                            f"Run again, {by_hand}") from None
    return source


def remove_if_empty(folder: Path) -> None:
    """Snakemake makes the output's folder before the job runs; a failed download must not leave it."""
    try:
        folder.rmdir()
    except OSError:
        pass


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("repo", help="the Hub repository, e.g. openai-community/gpt2")
    ap.add_argument("dest", type=Path, help="the model folder to create, e.g. models/gpt2")
    ap.add_argument("--revision", default="main", help="branch, tag or commit (default: main)")
    a = ap.parse_args(argv)
    try:
        source = fetch(a.repo, a.dest, a.revision)
    except DownloadError as e:
        remove_if_empty(a.dest)
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{a.dest}: {source['repo']} at commit {source['commit']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
