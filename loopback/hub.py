"""A small Hub-compatible HTTP server for tests and benchmarks, on loopback (see shared/docs/hub-protocol.md).

It stores bytes honestly (what is uploaded is what is downloaded), keeps every commit, enforces
tokens, private and gated repos and write permissions the way the Hub does, and can be told to
fail a chosen route (401, 403 gated, 404, 429, 500, or a dropped connection) a number of times.
It imports nothing from huggingface_hub, so it can start before the client reads HF_ENDPOINT.
Large files live in memory, or, given a `storage` folder, on disk (memory-mapped), so a benchmark can
serve a model larger than the machine's memory.
"""

from __future__ import annotations

import base64
import hashlib
import json
import mmap
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

import yaml

from .jobs import HARDWARE, JobsBackend

LFS_POINTER = "version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n"
LICENSES = {
    "apache-2.0",
    "mit",
    "other",
    "openrail",
    "llama2",
    "llama3",
    "llama3.1",
    "llama3.2",
    "gemma",
    "cc-by-4.0",
    "cc-by-sa-4.0",
    "cc-by-nc-4.0",
    "bsd-3-clause",
    "gpl-3.0",
    "unknown",
}
PIPELINE_TAGS = {"text-generation", "text2text-generation", "fill-mask", "feature-extraction", "image-text-to-text"}
RELATIONS = {"adapter", "merge", "quantized", "finetune"}
REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class StoredFile:
    data: bytes | mmap.mmap
    lfs: bool
    oid: str | None = None  # the sha256, when known (large files are not hashed again on every request)

    @property
    def sha256(self) -> str:
        if self.oid is None:
            self.oid = hashlib.sha256(self.data).hexdigest()
        return self.oid

    @property
    def pointer(self) -> bytes:
        return LFS_POINTER.format(oid=self.sha256, size=len(self.data)).encode()

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else git_blob_sha1(self.data)


@dataclass
class Commit:
    oid: str
    title: str
    message: str
    author: str
    files: dict[str, StoredFile]
    date: str = field(default_factory=lambda: datetime.now(UTC).isoformat().replace("+00:00", "Z"))


@dataclass
class Repo:
    repo_id: str
    repo_type: str
    private: bool = False
    gated: str | bool = False  # False, "auto" or "manual"
    gated_allowed: set[str] = field(default_factory=set)  # user names that accepted the license
    commits: list[Commit] = field(default_factory=list)

    @property
    def head(self) -> Commit:
        return self.commits[-1]

    def at(self, revision: str) -> Commit | None:
        if revision in ("main", "HEAD"):
            return self.head
        return next((c for c in self.commits if c.oid == revision), None)


@dataclass
class User:
    name: str
    orgs: tuple[str, ...] = ()
    role: str = "write"


@dataclass
class Fault:
    method: str
    path: re.Pattern
    status: int  # 0 drops the connection
    times: int
    error_code: str | None = None
    message: str | None = None
    hits: int = 0
    delay: float = 0.0  # seconds to wait before answering normally (status -1: a slow route, not a failure)
    action: Callable[[], None] | None = None  # status -1: done first, then the request is answered normally
    after: int = 0  # matching requests answered normally before the fault starts (fail half-way through)
    seen: int = 0


class HubState:
    """Everything the server knows; tests read and arrange it directly."""

    def __init__(self):
        self.lock = threading.RLock()
        self.users: dict[str, User] = {}
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lfs: dict[str, bytes] = {}
        self.faults: list[Fault] = []
        self.collections: dict[str, dict] = {}  # slug -> the collection as /api/collections/{slug} returns it
        self.requests: list[tuple[str, str]] = []
        self._counter = 0

    def add_user(self, token: str, name: str, orgs: tuple[str, ...] = (), role: str = "write") -> None:
        self.users[token] = User(name, orgs, role)

    def fail(
        self,
        method: str,
        path_regex: str,
        status: int,
        times: int = 1,
        error_code: str | None = None,
        message: str | None = None,
        after: int = 0,
    ) -> Fault:
        fault = Fault(method.upper(), re.compile(path_regex), status, times, error_code, message, after=after)
        with self.lock:
            self.faults.append(fault)
        return fault

    def slow(self, method: str, path_regex: str, seconds: float, times: int = 1) -> Fault:
        """Answer a route normally, but only after `seconds` (a slow upload, to stop a job in the middle of it)."""
        fault = Fault(method.upper(), re.compile(path_regex), -1, times, delay=seconds)
        with self.lock:
            self.faults.append(fault)
        return fault

    def before(self, method: str, path_regex: str, action: Callable[[], None], times: int = 1) -> Fault:
        """Do `action` just before answering a route normally (someone else acting between two of a job's calls)."""
        fault = Fault(method.upper(), re.compile(path_regex), -1, times, action=action)
        with self.lock:
            self.faults.append(fault)
        return fault

    def lose_answer(self, method: str, path_regex: str, times: int = 1) -> Fault:
        """Carry the request out, then drop the connection instead of answering (a response lost on the way)."""
        fault = Fault(method.upper(), re.compile(path_regex), -2, times)
        with self.lock:
            self.faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self.lock:
            self.faults.clear()

    def new_oid(self) -> str:
        with self.lock:
            self._counter += 1
            return hashlib.sha1(f"commit-{self._counter}-{time.time_ns()}".encode()).hexdigest()

    def create_repo(
        self,
        repo_id: str,
        repo_type: str = "model",
        private: bool = False,
        author: str = "hub",
        gated: str | bool = False,
    ) -> Repo:
        with self.lock:
            repo = Repo(repo_id, repo_type, private, gated)
            attributes = StoredFile(b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n", lfs=False)
            repo.commits.append(Commit(self.new_oid(), "initial commit", "", author, {".gitattributes": attributes}))
            self.repos[(repo_type, repo_id)] = repo
            return repo

    def repo(self, repo_type: str, repo_id: str) -> Repo | None:
        return self.repos.get((repo_type, repo_id))

    def add_collection(self, slug: str, owner: str, model_ids: list[str], title: str = "models") -> None:
        """A public collection of models, shaped as the Hub's API returns one."""
        items = [
            {"_id": hashlib.sha1(m.encode()).hexdigest()[:24], "id": m, "type": "model", "position": i}
            for i, m in enumerate(model_ids)
        ]
        self.collections[slug] = {
            "slug": slug,
            "title": title,
            "owner": {"name": owner, "type": "user"},
            "items": items,
            "lastUpdated": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "position": 0,
            "private": False,
            "theme": "default",
            "upvotes": 0,
        }


class HubError(Exception):
    def __init__(self, status: int, code: str | None = None, message: str = ""):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: HubServer

    def log_message(self, format, *args):  # quiet
        pass

    # --- plumbing -------------------------------------------------------------------------------------------
    @property
    def state(self) -> HubState:
        return self.server.state

    def read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def send(
        self,
        status: int,
        body: bytes | dict | list = b"",
        headers: dict | None = None,
        content_type: str = "application/json",
        head: bool = False,
    ) -> None:
        if getattr(self, "answer_lost", False):
            self.close_connection = True
            self.connection.shutdown(2)
            return
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def send_error_json(self, err: HubError, extra: dict | None = None) -> None:
        headers = dict(extra or {})
        if err.code:
            headers["X-Error-Code"] = err.code
        if err.message:
            headers["X-Error-Message"] = err.message
        self.send(err.status, {"error": err.message or err.code or "error"}, headers, head=self.command == "HEAD")

    def user(self, required: bool = False) -> User | None:
        auth = self.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            if required:
                raise HubError(401, None, "Invalid credentials in Authorization header")
            return None
        user = self.state.users.get(auth.removeprefix("Bearer ").strip())
        if user is None:
            raise HubError(401, None, "Invalid credentials in Authorization header")
        return user

    def handle_any(self) -> None:
        body = self.read_body()  # always read, or the keep-alive connection breaks
        url = urlparse(self.path)
        path = unquote(url.path)
        with self.state.lock:
            self.state.requests.append((self.command, path))
            fault = None
            for f in self.state.faults:
                if f.method in (self.command, "*") and f.path.search(path) and f.hits < f.times:
                    f.seen += 1
                    if f.seen > f.after:
                        fault = f
                        break
            if fault:
                fault.hits += 1
        self.answer_lost = bool(fault and fault.status == -2)
        if fault and fault.status == -1:
            time.sleep(fault.delay)
            if fault.action:
                fault.action()
            fault = None
        if self.answer_lost:
            fault = None
        if fault:
            if fault.status == 0:
                self.close_connection = True
                self.connection.shutdown(2)
                return
            self.send_error_json(HubError(fault.status, fault.error_code, fault.message or f"injected {fault.status}"))
            return
        try:
            self.route(path, parse_qs(url.query), body)
        except HubError as err:
            self.send_error_json(err)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = handle_any

    # --- routing ----------------------------------------------------------------------------------------------
    def route(self, path: str, query: dict, body: bytes) -> None:
        m = self.command
        if path == "/api/whoami-v2" and m == "GET":
            return self.whoami()
        if path == "/api/repos/create" and m == "POST":
            return self.create(json.loads(body or b"{}"))
        if path == "/api/repos/delete" and m == "DELETE":
            return self.delete(json.loads(body or b"{}"))
        if path == "/api/validate-yaml" and m == "POST":
            return self.validate_yaml(json.loads(body or b"{}"))
        if path.startswith("/api/jobs/"):
            return self.jobs_route(path.removeprefix("/api/jobs/"), query, body)
        if path.startswith("/api/collections/") and m == "GET":
            return self.collection(path.removeprefix("/api/collections/"))
        if path.startswith("/lfs-upload/") and m == "PUT":
            return self.lfs_put(path.removeprefix("/lfs-upload/"), body)
        api = re.match(r"^/api/(model|dataset|space)s/([^/]+/[^/]+)(?:/(.*))?$", path)
        if api:
            repo_type, repo_id, rest = api.group(1), api.group(2), api.group(3) or ""
            return self.api_repo(repo_type, repo_id, rest, query, body)
        lfs = re.match(r"^/(?:(datasets|spaces)/)?([^/]+/[^/]+?)\.git/info/lfs/objects/batch$", path)
        if lfs and m == "POST":
            return self.lfs_batch(json.loads(body))
        resolve = re.match(r"^/(?:(datasets|spaces)/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", path)
        if resolve and m in ("GET", "HEAD"):
            repo_type = {"datasets": "dataset", "spaces": "space"}.get(resolve.group(1) or "", "model")
            return self.resolve(repo_type, resolve.group(2), resolve.group(3), resolve.group(4))
        raise HubError(404, None, f"no route for {m} {path}")

    def readable_repo(self, repo_type: str, repo_id: str) -> tuple[Repo, User | None]:
        user = self.user()
        repo = self.state.repo(repo_type, repo_id)
        if repo is None or (repo.private and not self.may_write_namespace(user, repo_id)):
            raise HubError(404 if user else 401, "RepoNotFound", "Repository not found")
        return repo, user

    @staticmethod
    def may_write_namespace(user: User | None, repo_id: str) -> bool:
        namespace = repo_id.split("/")[0]
        return user is not None and (namespace == user.name or namespace in user.orgs)

    def writable_repo(self, repo_type: str, repo_id: str) -> Repo:
        user = self.user(required=True)
        repo, _ = self.readable_repo(repo_type, repo_id)
        if not self.may_write_namespace(user, repo_id) or user.role != "write":
            raise HubError(403, None, f"You don't have the rights to write to {repo_id}")
        return repo

    # --- handlers ---------------------------------------------------------------------------------------------
    def whoami(self) -> None:
        user = self.user(required=True)
        self.send(
            200,
            {
                "type": "user",
                "name": user.name,
                "fullname": user.name,
                "orgs": [{"name": org, "type": "org"} for org in user.orgs],
                "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": user.role}},
            },
        )

    def create(self, req: dict) -> None:
        user = self.user(required=True)
        namespace = req.get("organization") or user.name
        repo_id = f"{namespace}/{req['name']}"
        repo_type = req.get("type") or "model"
        if not self.may_write_namespace(user, repo_id) or user.role != "write":
            raise HubError(403, None, f"You don't have the rights to create a repo in {namespace}")
        if self.state.repo(repo_type, repo_id):
            raise HubError(409, None, "You already created this model repo")
        private = bool(req.get("private")) or req.get("visibility") == "private"
        self.state.create_repo(repo_id, repo_type, private, user.name)
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        self.send(200, {"url": f"{self.server.endpoint}/{prefix}{repo_id}", "name": repo_id, "id": repo_id})

    def delete(self, req: dict) -> None:
        user = self.user(required=True)
        repo_id = f"{req.get('organization') or user.name}/{req['name']}"
        repo_type = req.get("type") or "model"
        self.writable_repo(repo_type, repo_id)
        with self.state.lock:
            del self.state.repos[(repo_type, repo_id)]
        self.send(200, {})

    def api_repo(self, repo_type: str, repo_id: str, rest: str, query: dict, body: bytes) -> None:
        m = self.command
        if m == "GET" and (rest == "" or rest.startswith("revision/")):
            repo, _ = self.readable_repo(repo_type, repo_id)
            commit = repo.at(rest.removeprefix("revision/") or "main")
            if commit is None:
                raise HubError(404, "RevisionNotFound", "Invalid rev id")
            return self.send(
                200,
                {
                    "id": repo_id,
                    "modelId": repo_id,
                    "sha": commit.oid,
                    "private": repo.private,
                    "gated": repo.gated,
                    "disabled": False,
                    "downloads": 0,
                    "likes": 0,
                    "tags": [],
                    "siblings": [{"rfilename": p} for p in sorted(commit.files)],
                    "lastModified": commit.date,
                    "createdAt": repo.commits[0].date,
                },
            )
        tree = re.match(r"^tree/([^/]+)(?:/(.*))?$", rest)
        if m == "GET" and tree:
            return self.tree(repo_type, repo_id, tree.group(1), tree.group(2) or "", query)
        commits = re.match(r"^commits/([^/]+)$", rest)
        if m == "GET" and commits:
            repo, _ = self.readable_repo(repo_type, repo_id)
            return self.send(
                200,
                [
                    {
                        "id": c.oid,
                        "title": c.title,
                        "message": c.message,
                        "authors": [{"user": c.author}],
                        "date": c.date,
                    }
                    for c in reversed(repo.commits)
                ],
            )
        if m == "PUT" and rest == "settings":
            repo = self.writable_repo(repo_type, repo_id)
            settings = json.loads(body or b"{}")
            if "visibility" in settings:  # what huggingface_hub sends; older clients sent "private"
                repo.private = settings["visibility"] == "private"
            elif "private" in settings:
                repo.private = bool(settings["private"])
            return self.send(200, {})
        if m == "POST" and rest.startswith("preupload/"):
            return self.preupload(repo_type, repo_id, json.loads(body))
        if m == "POST" and rest.startswith("commit/"):
            return self.commit(repo_type, repo_id, rest.removeprefix("commit/"), body)
        raise HubError(404, None, f"no route for {m} /api/{repo_type}s/{repo_id}/{rest}")

    def tree(self, repo_type: str, repo_id: str, revision: str, prefix: str, query: dict) -> None:
        repo, _ = self.readable_repo(repo_type, repo_id)
        commit = repo.at(revision)
        if commit is None:
            raise HubError(404, "RevisionNotFound", "Invalid rev id")
        recursive = query.get("recursive", ["false"])[0] == "true"
        entries, dirs = [], set()
        base = f"{prefix.rstrip('/')}/" if prefix else ""
        for path, stored in sorted(commit.files.items()):
            if not path.startswith(base):
                continue
            rel = path[len(base) :]
            if "/" in rel:
                parts = rel.split("/")
                for depth in range(1, len(parts) if recursive else 2):
                    dirs.add(base + "/".join(parts[:depth]))
                if not recursive:
                    continue
            entry = {
                "type": "file",
                "path": path,
                "size": len(stored.data),
                "oid": git_blob_sha1(stored.pointer if stored.lfs else stored.data),
            }
            if stored.lfs:
                entry["lfs"] = {"oid": stored.sha256, "size": len(stored.data), "pointerSize": len(stored.pointer)}
            entries.append(entry)
        entries += [
            {"type": "directory", "path": d, "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0}
            for d in sorted(dirs)
        ]
        if prefix and not entries:
            raise HubError(404, "EntryNotFound", f"{prefix} does not exist")
        self.send(200, entries)

    def preupload(self, repo_type: str, repo_id: str, req: dict) -> None:
        repo = self.writable_repo(repo_type, repo_id)
        threshold = self.server.lfs_threshold
        out = []
        for f in req.get("files", []):
            lfs = f["size"] > 0 and (f["size"] >= threshold or f["path"].endswith(".safetensors"))
            existing = repo.head.files.get(f["path"])
            oid = None
            if existing is not None and existing.lfs == lfs:
                oid = existing.sha256 if lfs else git_blob_sha1(existing.data)
            out.append(
                {"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid}
            )
        self.send(200, {"files": out})

    def lfs_batch(self, req: dict) -> None:
        self.user(required=True)
        objects = []
        for obj in req.get("objects", []):
            entry = {"oid": obj["oid"], "size": obj["size"]}
            if obj["oid"] not in self.state.lfs:
                entry["actions"] = {"upload": {"href": f"{self.server.endpoint}/lfs-upload/{obj['oid']}", "header": {}}}
            objects.append(entry)
        self.send(200, {"transfer": "basic", "objects": objects}, content_type="application/vnd.git-lfs+json")

    def lfs_put(self, oid: str, body: bytes) -> None:
        if hashlib.sha256(body).hexdigest() != oid:
            raise HubError(400, None, "sha256 mismatch")
        stored = self.server.keep(oid, body)
        with self.state.lock:
            self.state.lfs[oid] = stored
        self.send(200, {})

    def commit(self, repo_type: str, repo_id: str, revision: str, body: bytes) -> None:
        repo = self.writable_repo(repo_type, repo_id)
        user = self.user(required=True)
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        header = next((x["value"] for x in lines if x["key"] == "header"), {})
        with self.state.lock:
            if header.get("parentCommit") and header["parentCommit"] != repo.head.oid:
                raise HubError(412, None, "A commit has happened since. Please refresh and try again.")
            files = dict(repo.head.files)
            for item in lines:
                key, value = item["key"], item["value"]
                if key == "file":
                    files[value["path"]] = StoredFile(base64.b64decode(value["content"]), lfs=False)
                elif key == "lfsFile":
                    data = self.state.lfs.get(value["oid"])
                    if data is None:
                        raise HubError(422, None, f"LFS object {value['oid']} was never uploaded")
                    files[value["path"]] = StoredFile(data, lfs=True, oid=value["oid"])
                elif key == "deletedFile":
                    files.pop(value["path"], None)
                elif key == "deletedFolder":
                    prefix = value["path"].rstrip("/") + "/"
                    files = {p: f for p, f in files.items() if not p.startswith(prefix)}
            if "README.md" in files and files["README.md"] is not repo.head.files.get("README.md"):
                errors = validate_card(files["README.md"].data.decode("utf-8", "replace"))
                if errors:
                    raise HubError(400, None, "Invalid metadata in README.md: " + "; ".join(errors))
            commit = Commit(
                self.state.new_oid(), header.get("summary", ""), header.get("description", ""), user.name, files
            )
            repo.commits.append(commit)
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        self.send(
            200,
            {
                "commitUrl": f"{self.server.endpoint}/{prefix}{repo_id}/commit/{commit.oid}",
                "commitOid": commit.oid,
                "pullRequestUrl": None,
            },
        )

    # --- Jobs (loopback/jobs.py runs them) ----------------------------------------------------------------------
    def jobs_route(self, rest: str, query: dict, body: bytes) -> None:
        m, backend = self.command, self.server.jobs
        if rest == "hardware" and m == "GET":
            return self.send(200, HARDWARE)
        user = self.user(required=True)
        parts = rest.strip("/").split("/")
        namespace = parts[0]
        if not self.may_write_namespace(user, f"{namespace}/x"):
            raise HubError(403, None, f"You don't have the rights to run or see Jobs in {namespace}")
        if len(parts) == 1 and m == "POST":
            return self.send(200, backend.start(user.name, namespace, json.loads(body)).info(self.server.endpoint))
        if len(parts) == 1 and m == "GET":
            jobs = backend.listed(namespace, query.get("label", []))
            return self.send(200, [job.info(self.server.endpoint) for job in jobs])
        job = backend.get(namespace, parts[1])
        if job is None:
            raise HubError(404, None, "Job not found")
        action = parts[2] if len(parts) > 2 else ""
        if action == "" and m == "GET":
            return self.send(200, job.info(self.server.endpoint))
        if action == "cancel" and m == "POST":
            backend.cancel(job)
            return self.send(200, {})
        if action == "logs" and m == "GET":
            return self.stream_events(lambda write: backend.stream(job, write))
        raise HubError(404, None, f"no route for {m} /api/jobs/{rest}")

    def stream_events(self, produce) -> None:
        """A server-sent event stream in chunked encoding, written as `produce` writes it."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        def write(data: bytes) -> None:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

        try:
            produce(write)
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):  # the client went away
            self.close_connection = True

    def collection(self, slug: str) -> None:
        found = self.state.collections.get(slug)
        if found is None:
            raise HubError(404, None, "Collection not found")
        self.send(200, found)

    def validate_yaml(self, req: dict) -> None:
        errors = validate_card(req.get("content", ""))
        if errors:
            return self.send(400, {"errors": [{"message": e} for e in errors], "warnings": []})
        self.send(200, {"errors": [], "warnings": []})

    def resolve(self, repo_type: str, repo_id: str, revision: str, path: str) -> None:
        repo, user = self.readable_repo(repo_type, repo_id)
        commit = repo.at(revision)
        if commit is None:
            raise HubError(404, "RevisionNotFound", "Invalid rev id")
        if repo.gated and not (user and (user.name in repo.gated_allowed or self.may_write_namespace(user, repo_id))):
            raise HubError(
                403 if user else 401,
                "GatedRepo",
                f"Access to model {repo_id} is restricted. You must have access to it and be authenticated "
                "to access it. Please log in.",
            )
        stored = commit.files.get(path)
        headers = {"X-Repo-Commit": commit.oid}
        if stored is None:
            headers["X-Error-Code"] = "EntryNotFound"
            headers["X-Error-Message"] = "Entry not found"
            return self.send(404, {"error": "Entry not found"}, headers, head=self.command == "HEAD")
        headers["ETag"] = f'"{stored.etag}"'
        headers["Accept-Ranges"] = "bytes"
        if stored.lfs:
            headers["X-Linked-Etag"] = f'"{stored.sha256}"'
            headers["X-Linked-Size"] = str(len(stored.data))
        data = stored.data
        status = 200
        ranged = re.match(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if ranged:
            start = int(ranged.group(1))
            end = int(ranged.group(2)) if ranged.group(2) else len(data) - 1
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            data, status = data[start : end + 1], 206
        self.send(status, data, headers, content_type="application/octet-stream", head=self.command == "HEAD")


def validate_card(content: str) -> list[str]:
    """The checks the Hub makes on a model card's YAML header that our cards could get wrong."""
    match = re.match(r"^---\n(.*?)\n---\n", content, re.S)
    if not match:
        return []
    try:
        meta = yaml.safe_load(match.group(1)) or {}
    except yaml.YAMLError as exc:
        return [f"YAML does not parse: {exc}"]
    if not isinstance(meta, dict):
        return ["metadata must be a mapping"]
    errors = []
    if "license" in meta and meta["license"] not in LICENSES:
        errors.append(f'"license" must be one of the Hub\'s license ids, got {meta["license"]!r}')
    if "pipeline_tag" in meta and meta["pipeline_tag"] not in PIPELINE_TAGS:
        errors.append(f'"pipeline_tag" is not a known task: {meta["pipeline_tag"]!r}')
    if "base_model_relation" in meta:
        if meta["base_model_relation"] not in RELATIONS:
            errors.append(f'"base_model_relation" must be one of {sorted(RELATIONS)}')
        if "base_model" not in meta:
            errors.append('"base_model_relation" needs "base_model"')
    base = meta.get("base_model")
    for ref in base if isinstance(base, list) else ([base] if base is not None else []):
        if not isinstance(ref, str) or not REPO_ID.match(ref):
            errors.append(f'"base_model" must be a repo id (namespace/name), got {ref!r}')
    tags = meta.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        errors.append('"tags" must be a list of strings')
    if "library_name" in meta and not isinstance(meta["library_name"], str):
        errors.append('"library_name" must be a string')
    return errors


class HubServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        lfs_threshold: int = 10 * 1024 * 1024,
        storage: Path | None = None,
    ):
        super().__init__((host, port), Handler)
        self.state = HubState()
        self.lfs_threshold = lfs_threshold
        self.storage = storage  # large files go here (memory-mapped) instead of memory
        self.jobs = JobsBackend()  # Hugging Face Jobs, as local processes (a test may give it another)
        self.endpoint = f"http://{host}:{self.server_address[1]}"
        self._thread: threading.Thread | None = None

    def keep(self, oid: str, body: bytes) -> bytes | mmap.mmap:
        """Where an uploaded large file is kept: in memory, or in the storage folder."""
        if self.storage is None:
            return body
        path = self.storage / oid
        path.write_bytes(body)
        return _mapped(path)

    def store(self, path: Path) -> StoredFile:
        """Take a file from this machine's disk as a stored large file (moved into the storage folder, not read
        into memory): how a benchmark puts a model larger than memory on this Hub."""
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 24):
                digest.update(chunk)
        oid = digest.hexdigest()
        target = (self.storage or path.parent) / oid
        path.rename(target)
        mapped = _mapped(target)
        with self.state.lock:
            self.state.lfs[oid] = mapped
        return StoredFile(mapped, lfs=True, oid=oid)

    def commit_files(self, repo_id: str, owner: str, files: dict[str, StoredFile], title: str = "add model") -> None:
        """Create a model repo holding `files` in one commit (a benchmark's source, set up without HTTP)."""
        repo = self.state.create_repo(repo_id, author=owner)
        with self.state.lock:
            repo.commits.append(Commit(self.state.new_oid(), title, "", owner, {**repo.head.files, **files}))

    def start(self) -> HubServer:
        self._thread = threading.Thread(target=self.serve_forever, name="loopback-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.jobs.stop_all()
        self.shutdown()
        self.server_close()


def _mapped(path: Path) -> mmap.mmap:
    with open(path, "rb") as f:
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
