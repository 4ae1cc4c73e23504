"""A stand-in for the Hugging Face Hub: a real HTTP server on 127.0.0.1 serving the calls that
huggingface_hub 2.x makes for snapshot_download (read from its source: model_info, list_repo_tree, then HEAD
and GET of resolve/<commit>/<file> with the X-Repo-Commit, ETag and Content-Length headers)."""
from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote


@dataclass
class Repo:
    revisions: dict[str, dict[str, bytes]]  # commit sha -> files
    refs: dict[str, str] = field(default_factory=dict)  # branch or tag -> commit sha
    gated: bool = False
    drop: str | None = None  # a file whose download is cut off halfway


class Hub:
    def __init__(self):
        self.repos: dict[str, Repo] = {}
        self.requests: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                hub.handle(self, body=False)

            def do_GET(self):
                hub.handle(self, body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def add(self, repo_id: str, files: dict[str, bytes], tag: str | None = None, **kw) -> str:
        commit = hashlib.sha1(json.dumps(sorted((k, hashlib.sha256(v).hexdigest()) for k, v in files.items()))
                              .encode()).hexdigest()
        repo = self.repos.setdefault(repo_id, Repo(revisions={}, **kw))
        repo.revisions[commit] = files
        repo.refs[tag or "main"] = commit
        return commit

    def resolve(self, repo: Repo, rev: str) -> str | None:
        return rev if rev in repo.revisions else repo.refs.get(rev)

    @staticmethod
    def send(h, status, payload=b"", headers=None, body=True, length=None):
        h.send_response(status)
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(payload) if length is None else length))
        h.end_headers()
        if body:
            h.wfile.write(payload)

    def handle(self, h, body):
        path = unquote(h.path.split("?")[0])
        self.requests.append(f"{h.command} {path}")
        m = (re.fullmatch(r"/api/models/(.+?)/(revision|tree)/([^/]+)", path)
             or re.fullmatch(r"/(.+?)/(resolve)/([^/]+)/(.+)", path))
        repo = self.repos.get(m.group(1)) if m else None
        if repo is None:
            return self.send(h, 404, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound"}, body)
        if repo.gated and "Bearer" not in (h.headers.get("Authorization") or ""):
            return self.send(h, 401, b'{"error": "Access to this model is restricted"}',
                             {"X-Error-Code": "GatedRepo", "X-Error-Message": "Access restricted"}, body)
        commit = self.resolve(repo, m.group(3))
        if commit is None:
            return self.send(h, 404, b'{"error": "Revision not found"}', {"X-Error-Code": "RevisionNotFound"}, body)
        files = repo.revisions[commit]
        if m.group(2) == "revision":
            info = {"id": m.group(1), "sha": commit, "siblings": [{"rfilename": n} for n in sorted(files)]}
            return self.send(h, 200, json.dumps(info).encode(), {"Content-Type": "application/json"}, body)
        if m.group(2) == "tree":
            tree = [{"type": "file", "path": n, "size": len(d), "oid": hashlib.sha1(d).hexdigest()}
                    for n, d in sorted(files.items())]
            return self.send(h, 200, json.dumps(tree).encode(), {"Content-Type": "application/json"}, body)
        name = m.group(4)
        if name not in files:
            return self.send(h, 404, b'{"error": "Entry not found"}', {"X-Error-Code": "EntryNotFound"}, body)
        data = files[name]
        headers = {"X-Repo-Commit": commit, "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
                   "Content-Type": "application/octet-stream"}
        if body and name == repo.drop:  # promise the whole file, send half, hang up
            self.send(h, 200, data[: len(data) // 2], headers, body, length=len(data))
            h.close_connection = True
            return
        self.send(h, 200, data, headers, body)
