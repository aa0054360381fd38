"""Everything that talks to the Hub: identity, source inspection and download, and the single-commit push.

Errors come back as `QuantizerError`s with sentences a user can act on (sign in, accept the
license, the token is invalid). Transient failures (429, 5xx, dropped connections) are retried
with exponential backoff a bounded number of times; permanent ones (401, 403, 404) are not.
The token is given to the client and nowhere else.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import httpx2
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, constants, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from . import settings
from .errors import AuthError, HubError, OutputExistsError, QuantizerError, SourceError
from .events import EventStream

T = TypeVar("T")
TRANSIENT_STATUS = (408, 429, 500, 502, 503, 504)
NETWORK_ERRORS = (httpx2.TimeoutException, httpx2.NetworkError, httpx2.RemoteProtocolError)


@dataclass(frozen=True)
class Identity:
    """Who the token belongs to and where it may write."""

    name: str
    orgs: tuple[str, ...]
    can_write: bool

    @property
    def namespaces(self) -> tuple[str, ...]:
        return (self.name, *self.orgs)


@dataclass(frozen=True, kw_only=True)
class RepoFacts:
    """What the Hub says of a source repo at a revision."""

    sha: str
    private: bool
    gated: bool


def endpoint() -> str:
    return constants.ENDPOINT.rstrip("/")


def repo_url(repo_id: str) -> str:
    return f"{endpoint()}/{repo_id}"


def retry_settings() -> tuple[int, float]:
    """Attempts and first delay; the delay doubles each time (tests shorten it with an env variable)."""
    return settings.get("QUANTIZER_HUB_ATTEMPTS"), settings.get("QUANTIZER_HUB_BACKOFF")


def causes(exc: BaseException) -> list[BaseException]:
    """The error and the ones it was raised from (huggingface_hub wraps a failed large-file upload in a
    RuntimeError whose cause is the HTTP error)."""
    chain: list[BaseException] = []
    while exc is not None and exc not in chain:
        chain.append(exc)
        exc = exc.__cause__
    return chain


def is_transient(exc: BaseException) -> bool:
    for error in causes(exc):
        if isinstance(error, NETWORK_ERRORS):
            return True
        response = getattr(error, "response", None)
        if isinstance(error, HfHubHTTPError) and response is not None and response.status_code in TRANSIENT_STATUS:
            return True
    return False


def status_of(exc: BaseException) -> int | None:
    for error in causes(exc):
        status = getattr(getattr(error, "response", None), "status_code", None)
        if status is not None:
            return status
    return None


class Hub:
    """A thin, typed layer over HfApi for one job and one token."""

    def __init__(self, token: str | None, events: EventStream | None = None):
        # False, not None: with no token given we must not fall back to a token from the environment
        # (on a public Space that would be the owner's).
        self._token: str | bool = token or False
        self.api = HfApi(token=self._token)
        self.events = events or EventStream()

    # --- retries and error translation -----------------------------------------------------------------------
    def call(self, what: str, fn: Callable[[], T], repo_id: str | None = None) -> T:
        attempts, delay = retry_settings()
        for attempt in range(1, attempts + 1):
            self.events.checkpoint()  # a stopped job makes no further Hub call (clean-up runs after the stop)
            try:
                return fn()
            except Exception as exc:
                if is_transient(exc) and attempt < attempts:
                    code = status_of(exc) or type(exc).__name__
                    self.events.warn(
                        f"the Hub answered {code} while {what}; retrying in {delay:.1f}s "
                        f"(attempt {attempt + 1} of {attempts})"
                    )
                    time.sleep(delay)
                    delay *= 2
                    continue
                raise self.translate(exc, what, repo_id, attempts if is_transient(exc) else 1) from exc
        raise AssertionError("unreachable")

    def translate(self, exc: Exception, what: str, repo_id: str | None, tries: int) -> QuantizerError:
        if isinstance(exc, QuantizerError):
            return exc
        repo = repo_id or "the repository"
        status = status_of(exc)
        if isinstance(exc, GatedRepoError):
            return SourceError(
                f"{repo} is gated: accept the license at {repo_url(repo)} and use a token "
                "whose account has accepted it."
            )
        if isinstance(exc, RevisionNotFoundError):
            return SourceError(
                f"{repo} has no revision by that name: check the @revision (a branch, tag or commit hash)."
            )
        if isinstance(exc, RepositoryNotFoundError):
            return SourceError(
                f"{repo} was not found on {endpoint()}; if it is private, sign in or pass a token with read access."
            )
        if status == 401:  # typed not-found errors come first: the Hub answers 401 for a missing repo too
            return AuthError(
                f"the token is invalid or expired: create a new one at {endpoint()}/settings/tokens "
                "and pass it with --token or HF_TOKEN (or sign in again)."
            )
        if status == 403:
            return AuthError(
                f"the token may not do this ({what}): use a token with write access to the target namespace."
            )
        if is_transient(exc):
            code = f"HTTP {status}" if status else type(exc).__name__
            return HubError(f"the Hub did not answer while {what} ({code}) after {tries} tries; try again later.")
        detail = getattr(exc, "server_message", None) or (str(exc).splitlines()[0] if str(exc) else "")
        return HubError(f"the Hub refused {what}: {detail.strip() or type(exc).__name__}")

    # --- identity --------------------------------------------------------------------------------------------
    def whoami(self) -> Identity:
        if not self._token:
            raise AuthError(
                "pushing to the Hub needs a token with write access: pass --token, set HF_TOKEN or "
                "sign in; or use --save-only to keep the output on this machine."
            )
        data = self.call("checking the token", lambda: self.api.whoami())
        role = ((data.get("auth") or {}).get("accessToken") or {}).get("role")
        orgs = tuple(o["name"] for o in data.get("orgs") or [])
        return Identity(data["name"], orgs, role in (None, "write", "admin", "fineGrained"))

    # --- source ----------------------------------------------------------------------------------------------
    def repo_info(self, repo_id: str, revision: str | None) -> RepoFacts:
        info = self.call("reading the source repo", lambda: self.api.model_info(repo_id, revision=revision), repo_id)
        return RepoFacts(sha=info.sha, private=bool(info.private), gated=bool(info.gated))

    def file_sizes(self, repo_id: str, revision: str) -> dict[str, int]:
        entries = self.call(
            "listing the source files",
            lambda: list(self.api.list_repo_tree(repo_id, revision=revision, recursive=True)),
            repo_id,
        )
        return {e.path: e.size for e in entries if getattr(e, "size", None) is not None and hasattr(e, "blob_id")}

    def download_file(self, repo_id: str, revision: str, filename: str, local_dir: Path) -> Path | None:
        """One small file (config, card); None when the repo does not have it."""

        def get() -> str:
            return self.api.hf_hub_download(repo_id, filename, revision=revision, local_dir=local_dir)

        try:
            return Path(self.call(f"downloading {filename}", get, repo_id))
        except SourceError:
            raise
        except QuantizerError as exc:
            if isinstance(exc.__cause__, EntryNotFoundError):
                return None
            raise

    def download(self, repo_id: str, revision: str, files: list[str], local_dir: Path) -> Path:
        self.call(
            "downloading the model",
            lambda: snapshot_download(
                repo_id, revision=revision, allow_patterns=files, local_dir=local_dir, token=self._token
            ),
            repo_id,
        )
        return local_dir

    # --- target ----------------------------------------------------------------------------------------------
    def exists(self, repo_id: str) -> bool:
        return self.call("checking the target", lambda: self.api.repo_exists(repo_id), repo_id)

    def push(
        self, folder: Path, repo_id: str, *, private: bool, message: str, description: str, replace: bool
    ) -> tuple[str, str]:
        """Create the repo (only now) and upload everything in one commit; delete a repo we created if that fails.

        Returns (url, commit oid).
        """
        upload = Upload(self, repo_id, private=private, replace=replace)
        try:
            upload.open()
            return upload.commit(folder, message=message, description=description)
        except BaseException:
            upload.abandon()
            raise

    def remove_half_made(self, repo_id: str) -> None:
        try:
            self.call("removing the half-made target repo", lambda: self.api.delete_repo(repo_id), repo_id)
            self.events.warn(f"the push failed; the repo {repo_id} that this job had created was deleted again")
        except QuantizerError as exc:
            self.events.warn(f"the push failed and {repo_id} could not be deleted ({exc}); delete it by hand")


class Upload:
    """One commit built up over a job, so a model larger than the disk can still be pushed as one commit.

    `open` creates the target repo (or, with `replace`, makes an existing one private first when it must be);
    `send` puts one large file in the Hub's storage ahead of the commit (huggingface_hub's
    `preupload_lfs_files`), after which the local copy may go; `commit` makes one commit of everything sent
    plus every file left in the folder, so the repo never shows a partial model. `abandon` deletes a repo that
    this upload created; files sent but never committed are not part of any revision.
    """

    def __init__(self, hub: Hub, repo_id: str, *, private: bool, replace: bool) -> None:
        self.hub, self.repo_id, self.private, self.replace = hub, repo_id, private, replace
        self.created = False
        self.sent: dict[str, CommitOperationAdd] = {}

    def open(self) -> None:
        hub, repo_id = self.hub, self.repo_id
        if self.replace and hub.exists(repo_id):
            if self.private:  # before any file lands, so an overwritten public repo never shows the new files
                hub.call(
                    "making the target repo private",
                    lambda: hub.api.update_repo_settings(repo_id, private=True),
                    repo_id,
                )
            return
        attempt = iter(range(1_000))

        def create() -> None:
            first = next(attempt) == 0
            try:
                hub.api.create_repo(repo_id, private=self.private, exist_ok=not first)
            except Exception as exc:
                if first and status_of(exc) == 409:  # made by someone else since preflight: theirs, never touched
                    raise OutputExistsError(
                        f"the target repo {repo_id} was created by someone else after this job checked it; nothing "
                        "of it was touched and nothing was pushed: choose another target name."
                    ) from exc
                self.created = True  # a try that failed otherwise may still have made it (an answer lost on the way)
                raise
            self.created = True

        hub.call("creating the target repo", create, repo_id)

    def send(self, path: Path, path_in_repo: str) -> bool:
        """Upload one file to the Hub's storage now; True when it is stored there, so the local file may go.

        Files the Hub keeps in git rather than in large-file storage (small ones) are not sent ahead: they
        stay on disk and go with the commit. A retry re-sends only what the Hub does not have yet.
        """
        operation = CommitOperationAdd(path_in_repo=path_in_repo, path_or_fileobj=str(path))
        self.hub.call(
            f"uploading {path_in_repo}",
            lambda: self.hub.api.preupload_lfs_files(self.repo_id, additions=[operation], free_memory=True),
            self.repo_id,
        )
        stored = operation.path_or_fileobj == b""  # free_memory empties what it uploaded (its documented contract)
        if stored:
            self.sent[path_in_repo] = operation
        return stored

    def commit(self, folder: Path, *, message: str, description: str) -> tuple[str, str]:
        """One commit: the files sent ahead, every file in `folder`, and (replace) the removal of all others."""
        operations: list = list(self.sent.values())
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            name = path.relative_to(folder).as_posix()
            if name not in self.sent:
                operations.append(CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(path)))
        if self.replace and not self.created:
            keep = {op.path_in_repo for op in operations}
            existing = self.hub.call(
                "listing the target's files", lambda: self.hub.api.list_repo_files(self.repo_id), self.repo_id
            )
            operations += [
                CommitOperationDelete(path_in_repo=name)
                for name in existing
                if name not in keep and name != ".gitattributes"  # as upload_folder's delete_patterns does
            ]
        commit = self.hub.call(
            "uploading",
            lambda: self.hub.api.create_commit(
                self.repo_id, operations=operations, commit_message=message, commit_description=description
            ),
            self.repo_id,
        )
        return repo_url(self.repo_id), commit.oid

    def abandon(self) -> None:
        if self.created:
            self.hub.remove_half_made(self.repo_id)
            self.created = False
