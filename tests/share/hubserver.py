"""A protocol stand-in for the HuggingFace Hub on 127.0.0.1 (NOT the Hub): just the calls that
huggingface_hub's `create_repo` + `upload_folder` make, read from the installed client's source
(hf_api.py, _commit_api.py, _upload_pipeline.py, lfs.py), and the `resolve` links pull downloads from.

- POST /api/repos/create                         {"name", "organization"} -> {"url"}; 409 when it exists
- POST /api/models/<repo>/preupload/<rev>        per file: uploadMode "regular" or "lfs", shouldIgnore, oid
- POST /<repo>.git/info/lfs/objects/batch        git-LFS batch API (basic transfer): upload + verify hrefs
- PUT  /lfs-upload/<sha256>                      the bytes; refused unless they hash to <sha256>
- POST /<repo>.git/info/lfs/objects/verify       {"oid", "size"} of an uploaded object
- POST /api/models/<repo>/commit/<rev>           NDJSON: header, file (base64), lfsFile (an uploaded oid)
- GET  /api/models/<repo>/revision/<rev>         {"id", "sha", "siblings"}
- GET|HEAD /<repo>/resolve/<rev>/<path>          the file at that commit (LFS files via a redirect); Range

Every /api and LFS call needs `Authorization: Bearer <server.token>` (401 otherwise, as the Hub does).
Not covered: Xet storage (what the real Hub and huggingface_hub use for LFS-sized files when hf_xet is
installed); tests that want the LFS path turn Xet off in the client.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit


@dataclass
class Repo:
    commits: list[tuple[str, dict[str, tuple[str, str]]]] = field(default_factory=list)  # (oid, {path: (mode, key)})

    @property
    def head(self) -> tuple[str, dict[str, tuple[str, str]]]:
        return self.commits[-1]

    def tree(self, rev: str) -> dict[str, tuple[str, str]] | None:
        if rev == "main":
            return self.head[1]
        return next((t for oid, t in self.commits if oid == rev), None)


def git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class _Hub(BaseHTTPRequestHandler):
    server: HubServer  # type: ignore[assignment]

    def log_message(self, *args) -> None:
        pass

    # ------------------------------------------------------------------ plumbing
    def _send(self, status: int, body: bytes = b"", ctype: str = "application/json",
              headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, data, status: int = 200) -> None:
        self._send(status, json.dumps(data).encode())

    def _error(self, status: int, message: str) -> None:
        self._send(status, json.dumps({"error": message}).encode(), headers={"X-Error-Message": message})

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _authorized(self) -> bool:
        if self.headers.get("Authorization") == f"Bearer {self.server.token}":
            return True
        self._body()
        self._error(401, "Invalid credentials in Authorization header")
        return False

    def _repo(self, repo_id: str) -> Repo | None:
        repo = self.server.repos.get(repo_id)
        if repo is None:
            self._error(404, "Repository not found")
        return repo

    # ------------------------------------------------------------------ routes
    def do_POST(self) -> None:
        path = unquote(urlsplit(self.path).path)
        self.server.calls.append(f"POST {path}")
        if not self._authorized():
            return
        with self.server.lock:
            if path == "/api/repos/create":
                return self._create(json.loads(self._body()))
            m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/(preupload|commit)/(.+)", path)
            if m and m.group(2) == "preupload":
                return self._preupload(m.group(1), m.group(3), json.loads(self._body()))
            if m:
                return self._commit(m.group(1), m.group(3), self._body())
            m = re.fullmatch(r"/([^/]+/[^/]+)\.git/info/lfs/objects/(batch|verify)", path)
            if m and m.group(2) == "batch":
                return self._batch(m.group(1), json.loads(self._body()))
            if m:
                req = json.loads(self._body())
                data = self.server.lfs.get(req["oid"])
                return self._json({}) if data is not None and len(data) == req["size"] else \
                    self._error(404, "Object not found")
        self._error(404, "no such route")

    def do_PUT(self) -> None:
        path = urlsplit(self.path).path
        self.server.calls.append(f"PUT {path}")
        m = re.fullmatch(r"/lfs-upload/([0-9a-f]{64})", path)
        if not m:
            return self._error(404, "no such route")
        data = self._body()
        if hashlib.sha256(data).hexdigest() != m.group(1):
            return self._error(400, "the uploaded bytes do not match the object id")
        with self.server.lock:
            self.server.lfs[m.group(1)] = data
        self._send(200)

    def do_GET(self) -> None:
        path = unquote(urlsplit(self.path).path)
        self.server.calls.append(f"{self.command} {path}")
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/revision/(.+)", path)
        if m:
            if not self._authorized():
                return
            repo = self._repo(m.group(1))
            if repo is not None:
                oid = repo.head[0] if m.group(2) == "main" else m.group(2)
                self._json({"id": m.group(1), "sha": oid, "private": False,
                            "siblings": [{"rfilename": p} for p in sorted(repo.tree(m.group(2)) or {})]})
            return
        m = re.fullmatch(r"/lfs-objects/([0-9a-f]{64})", path)
        if m:
            data = self.server.lfs.get(m.group(1))
            return self._file(data) if data is not None else self._error(404, "Entry not found")
        m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if not m:
            return self._error(404, "no such route")
        repo = self._repo(m.group(1))
        if repo is None:
            return
        tree = repo.tree(m.group(2))
        entry = tree.get(m.group(3)) if tree is not None else None
        if entry is None:
            return self._error(404, "Entry not found")
        mode, key = entry
        if mode == "lfs":  # the Hub redirects LFS files to its storage
            return self._send(302, headers={"Location": f"/lfs-objects/{key}"})
        self._file(self.server.blobs[key])

    do_HEAD = do_GET

    # ------------------------------------------------------------------ handlers
    def _create(self, req: dict) -> None:
        repo_id = f"{req.get('organization') or self.server.user}/{req['name']}"
        url = f"{self.server.url}/{repo_id}"
        if repo_id in self.server.repos:
            return self._send(409, json.dumps({"error": "You already created this model repo", "url": url}).encode())
        self.server.repos[repo_id] = Repo([(hashlib.sha1(repo_id.encode()).hexdigest(), {})])
        self._json({"url": url, "name": repo_id})

    def _preupload(self, repo_id: str, rev: str, req: dict) -> None:
        repo = self._repo(repo_id)
        if repo is None:
            return
        tree = repo.tree(unquote(rev)) or {}
        files = []
        for f in req["files"]:
            lfs = f["path"].endswith(self.server.lfs_suffixes)
            have = tree.get(f["path"])
            oid = None
            if have is not None:
                oid = have[1] if have[0] == "lfs" else git_blob_oid(self.server.blobs[have[1]])
            files.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False,
                          "oid": oid})
        self._json({"files": files})

    def _batch(self, repo_id: str, req: dict) -> None:
        if self._repo(repo_id) is None:
            return
        out = []
        for obj in req["objects"]:
            item = {"oid": obj["oid"], "size": obj["size"]}
            if obj["oid"] not in self.server.lfs:
                item["actions"] = {
                    "upload": {"href": f"{self.server.url}/lfs-upload/{obj['oid']}"},
                    "verify": {"href": f"{self.server.url}/{repo_id}.git/info/lfs/objects/verify"}}
            out.append(item)
        self._send(200, json.dumps({"transfer": "basic", "objects": out}).encode(), "application/vnd.git-lfs+json")

    def _commit(self, repo_id: str, rev: str, body: bytes) -> None:
        repo = self._repo(repo_id)
        if repo is None:
            return
        if unquote(rev) != "main":
            return self._error(400, "this stand-in commits to main only")
        tree = dict(repo.head[1])
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            return self._error(400, "the first line must be the commit header")
        for line in lines[1:]:
            value = line["value"]
            if line["key"] == "file":
                data = base64.b64decode(value["content"])
                key = hashlib.sha256(data).hexdigest()
                self.server.blobs[key] = data
                tree[value["path"]] = ("regular", key)
            elif line["key"] == "lfsFile":
                data = self.server.lfs.get(value["oid"])
                if data is None or ("size" in value and len(data) != value["size"]):
                    return self._error(422, f"LFS object {value['oid']} for {value['path']} was not uploaded")
                tree[value["path"]] = ("lfs", value["oid"])
            elif line["key"] == "deletedFile":
                tree.pop(value["path"], None)
            else:
                return self._error(400, f"unsupported commit line {line['key']}")
        oid = hashlib.sha1((repo.head[0] + json.dumps(sorted(tree.items()))).encode()).hexdigest()
        repo.commits.append((oid, tree))
        self.server.commits.append((repo_id, lines[0]["value"]["summary"], oid))
        self._json({"commitUrl": f"{self.server.url}/{repo_id}/commit/{oid}", "commitOid": oid,
                    "pullRequestUrl": None, "success": True})

    def _file(self, data: bytes) -> None:
        rng = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if rng is None:
            return self._send(200, data, "application/octet-stream", {"Accept-Ranges": "bytes"})
        start = int(rng.group(1))
        end = min(int(rng.group(2)) if rng.group(2) else len(data) - 1, len(data) - 1)
        self._send(206, data[start:end + 1], "application/octet-stream",
                   {"Accept-Ranges": "bytes", "Content-Range": f"bytes {start}-{end}/{len(data)}"})


class HubServer(ThreadingHTTPServer):
    """`with HubServer(token, lfs_suffixes) as hub:` on a free port of 127.0.0.1; hub.url for HF_ENDPOINT."""

    daemon_threads = True

    def __init__(self, token: str, user: str = "team", lfs_suffixes: tuple[str, ...] = ()):
        super().__init__(("127.0.0.1", 0), _Hub)
        self.token, self.user, self.lfs_suffixes = token, user, lfs_suffixes
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self.repos: dict[str, Repo] = {}
        self.blobs: dict[str, bytes] = {}  # regular files by sha256
        self.lfs: dict[str, bytes] = {}  # LFS objects by sha256
        self.calls: list[str] = []
        self.commits: list[tuple[str, str, str]] = []  # (repo, summary, oid)
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)

    def __enter__(self) -> HubServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
        self.server_close()
