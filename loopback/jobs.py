"""Hugging Face Jobs on the loopback Hub: the routes huggingface_hub's Jobs API calls (run, inspect, list, logs as
a server-sent event stream, cancel, the hardware list), with each Job's command run as a real local process.

The "image" is this checkout and its Python: a Job's `python` is the interpreter the backend was given, started in
the checkout with a fresh HOME (an empty container), the Job's environment and its secrets, and nothing else of
the parent's environment but PATH and what the host passes as `platform_env` (CPU kernel limits). Its stdout and
stderr become the log. A cancel sends SIGTERM (as `docker stop` does) and SIGKILL after a grace period; a Job past
its timeout is stopped the same way and ends in ERROR.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

HARDWARE = json.loads(Path(__file__).with_name("jobs_hardware.json").read_text())["flavors"]
ROOT = Path(__file__).resolve().parents[1]
TERMINAL = ("COMPLETED", "CANCELED", "ERROR", "DELETED")
KILL_AFTER_SECONDS = 10.0  # docker stop's default grace period
KEEP_ALIVE_SECONDS = 5.0


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class LocalJob:
    id: str
    namespace: str
    owner: str
    spec: dict
    created: str = field(default_factory=now)
    started: str | None = None
    finished: str | None = None
    stage: str = "SCHEDULING"
    message: str | None = None
    lines: list[dict] = field(default_factory=list)  # {"timestamp", "data"}, as the log stream sends them
    changed: threading.Condition = field(default_factory=threading.Condition)
    process: subprocess.Popen | None = None
    cancelled: bool = False
    timed_out: bool = False

    def info(self, endpoint: str) -> dict:
        image = (
            {"spaceId": self.spec["spaceId"]} if "spaceId" in self.spec else {"dockerImage": self.spec["dockerImage"]}
        )
        return {
            "id": self.id,
            "createdAt": self.created,
            "startedAt": self.started,
            "finishedAt": self.finished,
            **image,
            "command": self.spec.get("command"),
            "arguments": self.spec.get("arguments", []),
            "environment": self.spec.get("environment", {}),
            "secrets": {name: None for name in self.spec.get("secrets", {})},  # names only, as the Hub shows them
            "flavor": self.spec.get("flavor"),
            "labels": self.spec.get("labels"),
            "timeout": self.spec.get("timeoutSeconds"),
            "status": {"stage": self.stage, "message": self.message},
            "owner": {"id": self.namespace, "name": self.namespace, "type": "user"},
            "initiator": {"type": "user", "id": self.owner, "name": self.owner},
        }

    def append(self, text: str) -> None:
        with self.changed:
            self.lines.append({"timestamp": now(), "data": text})
            self.changed.notify_all()

    def end(self, stage: str, message: str | None) -> None:
        with self.changed:
            self.stage, self.message, self.finished = stage, message, now()
            self.changed.notify_all()


class JobsBackend:
    """The Jobs the loopback Hub runs. `python` and `cwd` stand for the image; `platform_env` is passed to every
    Job (what the host machine imposes, like CPU kernel limits)."""

    def __init__(self, python: str = sys.executable, cwd: Path = ROOT, platform_env: dict[str, str] | None = None):
        self.python, self.cwd, self.platform_env = python, cwd, dict(platform_env or {})
        self.jobs: dict[str, LocalJob] = {}
        self.lock = threading.Lock()

    def start(self, owner: str, namespace: str, spec: dict) -> LocalJob:
        job = LocalJob(id=secrets.token_hex(12), namespace=namespace, owner=owner, spec=spec)
        with self.lock:
            self.jobs[job.id] = job
        threading.Thread(target=self._run, args=(job,), name=f"loopback-job-{job.id}", daemon=True).start()
        return job

    def get(self, namespace: str, job_id: str) -> LocalJob | None:
        job = self.jobs.get(job_id)
        return job if job is not None and job.namespace == namespace else None

    def listed(self, namespace: str, labels: list[str]) -> list[LocalJob]:
        wanted = dict(label.split("=", 1) for label in labels)
        return [
            job
            for job in self.jobs.values()
            if job.namespace == namespace and all((job.spec.get("labels") or {}).get(k) == v for k, v in wanted.items())
        ]

    def _environment(self, job: LocalJob, home: Path) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "HF_HOME": str(home / ".cache" / "huggingface"),
            "TMPDIR": str(home),
            "LANG": "C.UTF-8",
            **self.platform_env,
            **{k: str(v) for k, v in (job.spec.get("environment") or {}).items()},
            **{k: str(v) for k, v in (job.spec.get("secrets") or {}).items()},
        }

    def _run(self, job: LocalJob) -> None:
        command = list(job.spec.get("command") or [])
        if command and command[0] in ("python", "python3"):
            command[0] = self.python
        home = Path(tempfile.mkdtemp(prefix=f"loopback-job-{job.id}-"))
        try:
            job.process = subprocess.Popen(
                command,
                cwd=self.cwd,
                env=self._environment(job, home),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                errors="replace",
                start_new_session=True,
            )
        except OSError as exc:
            job.end("ERROR", f"the command could not start: {exc}")
            shutil.rmtree(home, ignore_errors=True)
            return
        job.started, job.stage = now(), "RUNNING"
        job.append(f"===== Job started at {job.started} =====")
        timeout = job.spec.get("timeoutSeconds")
        timer = threading.Timer(timeout, self._time_out, args=(job,)) if timeout else None
        if timer:
            timer.daemon = True
            timer.start()
        for line in job.process.stdout:
            job.append(line.rstrip("\n"))
        code = job.process.wait()
        if timer:
            timer.cancel()
        shutil.rmtree(home, ignore_errors=True)
        if job.cancelled:
            job.end("CANCELED", None)
        elif job.timed_out:
            job.end("ERROR", f"Job timeout ({timeout} s) reached")
        else:
            job.end("COMPLETED" if code == 0 else "ERROR", None if code == 0 else f"exit code {code}")

    def cancel(self, job: LocalJob) -> None:
        if job.stage in TERMINAL:
            return
        job.cancelled = True
        self._stop(job)

    def _time_out(self, job: LocalJob) -> None:
        job.timed_out = True
        self._stop(job)

    def _stop(self, job: LocalJob) -> None:
        process = job.process
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGTERM)
        threading.Timer(KILL_AFTER_SECONDS, self._kill, args=(process,)).start()

    @staticmethod
    def _kill(process: subprocess.Popen) -> None:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)

    def stream(self, job: LocalJob, write) -> None:
        """The log as server-sent events, from the first line, as they come; ends when the Job has ended."""
        sent = 0
        while True:
            with job.changed:
                if sent == len(job.lines) and job.stage not in TERMINAL:
                    job.changed.wait(KEEP_ALIVE_SECONDS)
                pending, ended = job.lines[sent:], job.stage in TERMINAL
            for line in pending:
                write(f"data: {json.dumps(line)}\n\n".encode())
            sent += len(pending)
            if ended and sent == len(job.lines):
                return
            if not pending:
                write(b": keep-alive\n\n")

    def stop_all(self) -> None:
        for job in list(self.jobs.values()):
            self.cancel(job)
