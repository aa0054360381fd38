"""Run pipeline jobs for the page: one at a time per process, at most one running and one waiting per visitor,
each stoppable by its visitor (the Stop button), by its closed tab, or by the host's deadline.

The lock, the visitors' tickets and Stop live here, in the app's process; the job itself runs in a process of its
own (`worker.py`: ZeroGPU's GPU worker, or a child of the app), which only plain values cross. `stream_job` waits
for the lock, then relays the job's events as they happen and ends with one `Finished`.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from quantizer.events import Event
from quantizer.pipeline import JobSpec

from .worker import Finished, stop_job, stream_isolated

SHARED_STAGES = ("preflight", "fetch", "reference")
RECIPE_STAGES_SAVE = ("quantize", "save", "verify", "card")
PER_VISITOR = 2  # one running and one waiting
RUN_LOCK = threading.Lock()  # one job at a time in this process, whatever the queue's concurrency says


@dataclass(frozen=True)
class Waiting:
    """The job waits for the one ahead of it."""

    message: str


@dataclass(eq=False)
class Ticket:
    """One visitor's job as the app sees it: who, which page, and (once it runs) the folder its process watches."""

    visitor: str
    session: str | None
    reason: str = ""
    folder: Path | None = None
    stop_hook: Callable[[str], None] | None = None  # a job that runs elsewhere (a Hugging Face Job): how to stop it
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def stopped(self) -> bool:
        return bool(self.reason)

    def start(self, folder: Path) -> None:
        """The job runs in `folder` from now on: a stop reaches its process through the folder's STOP file."""
        with self._lock:
            self.folder = folder
            if self.reason:
                stop_job(folder, self.reason)

    def on_stop(self, hook: Callable[[str], None]) -> None:
        """Call `hook` with the reason when the job is stopped (at once if it already was)."""
        with self._lock:
            self.stop_hook = hook
            reason = self.reason
        if reason:
            hook(reason)

    def stop(self, reason: str) -> None:
        with self._lock:
            if self.reason:
                return
            self.reason = reason
            if self.folder is not None:
                stop_job(self.folder, reason)
            hook = self.stop_hook
        if hook is not None:
            hook(reason)


class Registry:
    """Who has which job, so a visitor's Stop or closed tab reaches their jobs and nobody else's."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tickets: list[Ticket] = []

    def admit(self, visitor: str, session: str | None) -> Ticket | None:
        """A ticket for a new job, or None when the visitor already has a job running and one waiting."""
        with self._lock:
            if sum(t.visitor == visitor for t in self._tickets) >= PER_VISITOR:
                return None
            ticket = Ticket(visitor, session)
            self._tickets.append(ticket)
            return ticket

    def done(self, ticket: Ticket) -> None:
        with self._lock:
            if ticket in self._tickets:
                self._tickets.remove(ticket)

    def stop(self, *, visitor: str | None = None, session: str | None = None, reason: str) -> int:
        """Stop every job of a visitor (the Stop button) or of a browser session (a closed tab)."""
        with self._lock:
            chosen = [
                t
                for t in self._tickets
                if (visitor is not None and t.visitor == visitor) or (session is not None and t.session == session)
            ]
        for ticket in chosen:
            ticket.stop(reason)
        return len(chosen)


REGISTRY = Registry()


def wait_for_the_lock(ticket: Ticket) -> Iterator[Waiting]:
    """Take the process's job lock, saying once that the job waits. Returns True holding the lock, or False when the
    ticket was stopped while it waited (the lock not held)."""
    if RUN_LOCK.acquire(blocking=False):
        return True
    yield Waiting("waiting for the job ahead of this one to finish")
    while not RUN_LOCK.acquire(timeout=0.25):
        if ticket.stopped:
            return False
    return True


def stream_job(spec: JobSpec, ticket: Ticket) -> Iterator[Event | Waiting | Finished]:
    """The job's stream for the page: wait for the lock, run the job in its own process, relay what it says, and
    always hand the lock and the ticket back, so a page that went away never keeps the next visitor waiting."""
    finished = False
    try:
        held = yield from wait_for_the_lock(ticket)
        if not held or ticket.stopped:
            if held:
                RUN_LOCK.release()
            finished = True
            yield Finished(None, f"stopped before it started: {ticket.reason}")
            return
        try:
            folder = Path(tempfile.mkdtemp(prefix="quantizer-job-"))
            ticket.start(folder)
            with contextlib.closing(stream_isolated(spec, folder)) as stream:  # closed (the job ended) before unlocking
                for item in stream:  # a stop reaches the job through its folder (Ticket.stop)
                    finished = isinstance(item, Finished)
                    yield item
        finally:
            RUN_LOCK.release()
    finally:
        if not finished:  # the stream was closed mid-job (the page went away): stream_isolated ended the job
            ticket.stop("the page was closed")
        if ticket.stopped:
            print(f"a job of {ticket.visitor} stopped: {ticket.reason}", file=sys.stderr, flush=True)
        REGISTRY.done(ticket)


class JobProgress:
    """Turns stage events into a fraction of the whole job for the progress bar."""

    def __init__(self, n_types: int, push: bool):
        per_type = len(RECIPE_STAGES_SAVE) + (1 if push else 0)
        self.total = len(SHARED_STAGES) + per_type * max(n_types, 1)
        self.done = 0

    def update(self, event: Event) -> float:
        if event.kind == "stage_end":
            self.done = min(self.done + 1, self.total)
        partial = (event.fraction or 0.0) if event.kind == "progress" else 0.0
        return min((self.done + partial) / self.total, 1.0)
