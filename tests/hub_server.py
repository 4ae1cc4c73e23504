"""A stand-in for the Hugging Face Hub: a real HTTP server on 127.0.0.1 serving the calls that huggingface_hub 2.x
makes, read from its source (2.4.0):

- downloads (snapshot_download, hf_hub_download): model_info, list_repo_tree, then HEAD and GET of
  resolve/<commit>/<file> with the X-Repo-Commit, ETag and Content-Length headers;
- uploads over git LFS (create_repo, create_commit): POST /api/repos/create (409 when the repo exists), POST
  /api/validate-yaml (the model card's header), POST /api/models/<repo>/preupload/<rev> (regular or LFS, and the
  oid of the file already there), the LFS batch POST <repo>.git/info/lfs/objects/batch ("basic" transfer; the upload
  href points back here, signed like S3's presigned URLs, for the client sends no token with the PUT), the PUT of
  the object, its verify POST, and POST /api/models/<repo>/commit/<rev> (NDJSON lines: header, file, lfsFile,
  deletedFile, deletedFolder). What was uploaded is readable by the download calls above.

Writes need `Authorization: Bearer <token>` with the token the Hub is given (401 otherwise); private repos refuse
reads without it. Xet is not spoken: huggingface_hub 2.4.0 chooses Xet on the client side alone (hf_xet installed
and HF_HUB_DISABLE_XET unset), so a client that tries it gets a 501 naming HF_HUB_DISABLE_XET, and the request is
in `requests` for a test to see. Faults: a repo's `drop` file is cut off halfway when downloaded; every PUT of an
LFS object in `drop_uploads` (sha256s) is cut off halfway (the connection closed, no response) until it is removed."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

GITATTRIBUTES = b"*.gguf filter=lfs diff=lfs merge=lfs -text\n*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
LFS_THRESHOLD = 10 * 1000 * 1000  # larger files must be LFS on the Hub


def is_lfs(data: bytes) -> bool:
    """How this stand-in stores a file: LFS when binary (a NUL in its first 512 bytes) or large, as the Hub does."""
    return len(data) > LFS_THRESHOLD or b"\0" in data[:512]


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def file_entry(data: bytes) -> dict:
    """The oid, size and LFS facts the Hub lists for a file (tree, model_info with blobs, preupload)."""
    entry = {"size": len(data), "oid": git_blob_id(data)}
    if is_lfs(data):
        entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "sha256": hashlib.sha256(data).hexdigest(),
                        "size": len(data), "pointerSize": 134}
    return entry


@dataclass
class Repo:
    revisions: dict[str, dict[str, bytes]]  # commit sha -> files
    refs: dict[str, str] = field(default_factory=dict)  # branch or tag -> commit sha
    gated: bool = False
    drop: str | None = None  # a file whose download is cut off halfway
    private: bool = False
    lfs: dict[str, bytes] = field(default_factory=dict)  # uploaded LFS objects by sha256, committed or not
    commits: list[dict] = field(default_factory=list)  # made through the commit endpoint: oid, summary, added, deleted


class Hub:
    def __init__(self, token: str = "hf_stand_in_write_token"):
        self.repos: dict[str, Repo] = {}
        self.requests: list[str] = []
        self.token = token  # the one token accepted for writes and private reads
        self.drop_uploads: set[str] = set()  # LFS objects whose uploads are cut off halfway
        self.lock = threading.Lock()
        self.secret = secrets.token_bytes(16)
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                hub.handle(self, body=False)

            def do_GET(self):
                hub.handle(self, body=True)

            def do_POST(self):
                hub.handle_write(self)

            def do_PUT(self):
                hub.handle_write(self)

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

    def files(self, repo_id: str, rev: str = "main") -> dict[str, bytes]:
        """A revision's files, for tests."""
        repo = self.repos[repo_id]
        return repo.revisions[self.resolve(repo, rev)]

    def resolve(self, repo: Repo, rev: str) -> str | None:
        return rev if rev in repo.revisions else repo.refs.get(rev)

    def authorized(self, h) -> bool:
        return hmac.compare_digest(h.headers.get("Authorization") or "", f"Bearer {self.token}")

    @staticmethod
    def send(h, status, payload=b"", headers=None, body=True, length=None):
        h.send_response(status)
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(payload) if length is None else length))
        h.end_headers()
        if body:
            h.wfile.write(payload)

    def send_json(self, h, status, data, headers=None, content_type="application/json"):
        self.send(h, status, json.dumps(data).encode(), {"Content-Type": content_type, **(headers or {})})

    # --- reads ------------------------------------------------------------------------------------------------
    def handle(self, h, body):
        path = unquote(h.path.split("?")[0])
        self.requests.append(f"{h.command} {path}")
        if re.fullmatch(r"/api/models/.+/xet-(read|write)-token/.*", path):
            return self.xet_refused(h, body)
        m = (re.fullmatch(r"/api/models/(.+?)/(revision|tree)/([^/]+)", path)
             or re.fullmatch(r"/(.+?)/(resolve)/([^/]+)/(.+)", path)
             or re.fullmatch(r"/api/models/([^/]+/[^/]+)()()", path))  # model_info without a revision: main
        repo = self.repos.get(m.group(1)) if m else None
        if repo is None:
            return self.send(h, 404, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound"}, body)
        if repo.private and not self.authorized(h):  # the Hub says 401 and "not found" to whoever may not see it
            return self.send(h, 401, b'{"error": "Repository not found"}',
                             {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"}, body)
        if repo.gated and "Bearer" not in (h.headers.get("Authorization") or ""):
            return self.send(h, 401, b'{"error": "Access to this model is restricted"}',
                             {"X-Error-Code": "GatedRepo", "X-Error-Message": "Access restricted"}, body)
        kind, rev = (m.group(2), m.group(3)) if m.group(2) else ("revision", "main")
        commit = self.resolve(repo, rev)
        if commit is None:
            return self.send(h, 404, b'{"error": "Revision not found"}', {"X-Error-Code": "RevisionNotFound"}, body)
        files = repo.revisions[commit]
        if kind == "revision":
            siblings = [{"rfilename": n, **({"size": e["size"], "blobId": e["oid"], "lfs": e.get("lfs")})}
                        for n, e in ((n, file_entry(d)) for n, d in sorted(files.items()))]
            info = {"id": m.group(1), "sha": commit, "private": repo.private, "siblings": siblings}
            return self.send(h, 200, json.dumps(info).encode(), {"Content-Type": "application/json"}, body)
        if kind == "tree":
            tree = [{"type": "file", "path": n, **file_entry(d)} for n, d in sorted(files.items())]
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

    def xet_refused(self, h, body=True):
        return self.send(h, 501, b'{"error": "Xet is not served here"}',
                         {"X-Error-Message": "this stand-in Hub speaks git LFS only: set HF_HUB_DISABLE_XET=1"}, body)

    # --- writes -----------------------------------------------------------------------------------------------
    def handle_write(self, h):
        url = urlsplit(h.path)
        path, query = unquote(url.path), parse_qs(url.query)
        self.requests.append(f"{h.command} {path}")
        routes = [
            ("POST", r"/api/validate-yaml", self.validate_yaml, False),
            ("POST", r"/api/repos/create", self.create, True),
            ("POST", r"/api/models/(.+?)/xet-(?:read|write)-token/.*", lambda h, _: self.xet_refused(h), False),
            ("POST", r"/api/models/(.+?)/preupload/([^/]+)", self.preupload, True),
            ("POST", r"/api/models/(.+?)/commit/([^/]+)", self.commit, True),
            ("POST", r"/(.+?)\.git/info/lfs/objects/batch", self.lfs_batch, True),
            ("POST", r"/(.+?)\.git/info/lfs/objects/verify", self.lfs_verify, True),
            ("PUT", r"/lfs-upload/(.+)/([0-9a-f]{64})/([0-9]+)", self.lfs_put, False),  # signed instead
        ]
        for method, pattern, handler, needs_token in routes:
            m = re.fullmatch(pattern, path)
            if m and method == h.command:
                if needs_token and not self.authorized(h):
                    self.read_body(h)
                    wrong = bool(h.headers.get("Authorization"))
                    message = "Invalid credentials in Authorization header" if wrong else "You must be authenticated"
                    return self.send_json(h, 401, {"error": message}, {"X-Error-Message": message})
                if handler == self.lfs_put:
                    return handler(h, m, query)
                return handler(h, m)
        self.read_body(h)
        self.send_json(h, 404, {"error": f"no route for {h.command} {path}"})

    @staticmethod
    def read_body(h, limit: int | None = None) -> bytes:
        """The request body (Content-Length or chunked), or its first `limit` bytes."""
        if h.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while limit is None or len(data) < limit:
                size = int(h.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    h.rfile.readline()
                    break
                data += h.rfile.read(size)
                h.rfile.readline()
            return data
        length = int(h.headers.get("Content-Length") or 0)
        return h.rfile.read(length if limit is None else min(limit, length))

    def read_json(self, h):
        return json.loads(self.read_body(h) or b"{}")

    def writable(self, h, repo_id: str) -> Repo | None:
        repo = self.repos.get(repo_id)
        if repo is None:
            self.send_json(h, 404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
        return repo

    def validate_yaml(self, h, m):
        content = self.read_json(h).get("content", "")
        header = re.match(r"---\n(.*?)\n---\n", content, re.S)
        try:
            data = yaml.safe_load(header.group(1)) if header else {}
        except yaml.YAMLError as e:
            return self.send_json(h, 400, {"errors": [{"message": f"invalid YAML: {e}"}]})
        if not isinstance(data, dict):
            return self.send_json(h, 400, {"errors": [{"message": "the metadata is not a mapping"}]})
        self.send_json(h, 200, {"errors": [], "warnings": []})

    def create(self, h, m):
        request = self.read_json(h)
        repo_id = f"{request.get('organization')}/{request['name']}"
        with self.lock:
            if repo_id in self.repos:
                error = {"error": "You already created this model repo", "url": f"{self.url}/{repo_id}"}
                return self.send_json(h, 409, error)  # the url too: huggingface_hub reads it
            private = request.get("visibility") == "private" or request.get("private") is True
            self.add(repo_id, {".gitattributes": GITATTRIBUTES}, private=private)
        self.send_json(h, 200, {"url": f"{self.url}/{repo_id}", "name": repo_id})

    def preupload(self, h, m):
        request = self.read_json(h)
        repo = self.writable(h, m.group(1))
        if repo is None:
            return
        head = repo.revisions[self.resolve(repo, m.group(2))]
        answer = []
        for f in request["files"]:
            sample = base64.b64decode(f["sample"])
            mode = "lfs" if f["size"] > LFS_THRESHOLD or b"\0" in sample else "regular"
            there = head.get(f["path"])
            entry = file_entry(there) if there is not None else {}
            oid = entry["lfs"]["oid"] if "lfs" in entry else entry.get("oid")
            answer.append({"path": f["path"], "uploadMode": mode, "shouldIgnore": False, "oid": oid})
        self.send_json(h, 200, {"files": answer, "commitOid": self.resolve(repo, m.group(2))})

    def signature(self, repo_id: str, oid: str, size: int) -> str:
        return hmac.new(self.secret, f"{repo_id}/{oid}/{size}".encode(), "sha256").hexdigest()

    def lfs_batch(self, h, m):
        request = self.read_json(h)
        repo = self.writable(h, m.group(1))
        if repo is None:
            return
        objects = []
        for o in request["objects"]:
            oid, size = o["oid"], o["size"]
            if oid in repo.lfs and len(repo.lfs[oid]) == size:
                objects.append({"oid": oid, "size": size})  # already there: no actions, nothing to send
                continue
            href = f"{self.url}/lfs-upload/{m.group(1)}/{oid}/{size}?sig={self.signature(m.group(1), oid, size)}"
            verify = f"{self.url}/{m.group(1)}.git/info/lfs/objects/verify"
            objects.append({"oid": oid, "size": size, "authenticated": True,
                            "actions": {"upload": {"href": href}, "verify": {"href": verify}}})
        self.send_json(h, 200, {"transfer": "basic", "objects": objects, "hash_algo": "sha256"},
                       content_type="application/vnd.git-lfs+json")

    def lfs_put(self, h, m, query):
        repo_id, oid, size = m.group(1), m.group(2), int(m.group(3))
        if not hmac.compare_digest(query.get("sig", [""])[0], self.signature(repo_id, oid, size)):
            self.read_body(h)
            return self.send_json(h, 403, {"error": "bad signature"})
        if oid in self.drop_uploads:  # read half of the object, then hang up without an answer
            self.read_body(h, limit=size // 2)
            h.close_connection = True
            h.connection.close()
            return
        data = self.read_body(h)
        if len(data) != size or hashlib.sha256(data).hexdigest() != oid:
            return self.send_json(h, 400, {"error": f"the object is not {oid} of {size} bytes"})
        with self.lock:
            self.repos[repo_id].lfs[oid] = data
        self.send(h, 200)

    def lfs_verify(self, h, m):
        o = self.read_json(h)
        repo = self.writable(h, m.group(1))
        if repo is None:
            return
        if o["oid"] not in repo.lfs or len(repo.lfs[o["oid"]]) != o["size"]:
            return self.send_json(h, 404, {"error": "object not found"})
        self.send_json(h, 200, {})

    def commit(self, h, m):
        lines = [json.loads(line) for line in self.read_body(h).splitlines() if line.strip()]
        repo = self.writable(h, m.group(1))
        if repo is None:
            return
        branch = m.group(2)
        with self.lock:
            parent = repo.refs.get(branch)
            files = dict(repo.revisions[parent]) if parent else {}
            header, added, deleted = {}, [], []
            for line in lines:
                key, value = line["key"], line["value"]
                if key == "header":
                    header = value
                elif key == "file":
                    files[value["path"]] = base64.b64decode(value["content"])
                    added.append(value["path"])
                elif key == "lfsFile":
                    data = repo.lfs.get(value["oid"])
                    if data is None or ("size" in value and len(data) != value["size"]):
                        return self.send_json(h, 400, {"error": f"LFS object {value['oid']} was not uploaded"})
                    files[value["path"]] = data
                    added.append(value["path"])
                elif key == "deletedFile":
                    if value["path"] not in files:
                        return self.send_json(h, 404, {"error": "A file with this name doesn't exist"},
                                              {"X-Error-Code": "EntryNotFound"})
                    del files[value["path"]]
                    deleted.append(value["path"])
                elif key == "deletedFolder":
                    gone = [p for p in files if p.startswith(value["path"].rstrip("/") + "/")]
                    for p in gone:
                        del files[p]
                    deleted += gone
                else:
                    return self.send_json(h, 400, {"error": f"unknown key {key}"})
            if header.get("parentCommit") not in (None, parent):
                return self.send_json(h, 412, {"error": "A commit has happened since. Please refresh and try again."})
            oid = hashlib.sha1(json.dumps([parent, len(repo.commits), sorted(added), sorted(deleted)])
                               .encode()).hexdigest()
            repo.revisions[oid] = files
            repo.refs[branch] = oid
            repo.commits.append({"oid": oid, "summary": header.get("summary"), "added": added, "deleted": deleted})
        self.send_json(h, 200, {"success": True, "commitOid": oid, "commitUrl": f"{self.url}/{m.group(1)}/commit/{oid}",
                                "commitMessage": header.get("summary"), "hookOutput": "", "pullRequestUrl": None})
