"""Run pipeline jobs for the page: one at a time per process, at most one running and one waiting per visitor,
each stoppable by its visitor (the Stop button), by its closed tab, or by the host's deadline.

`stream_job` is a generator that waits for the process's job lock, runs the job in a worker thread
and yields each event as it happens, then the report (or the sentence that explains why there is
none). On ZeroGPU it runs under `@spaces.GPU`, which moves the whole generator to the GPU worker;
elsewhere the decorator returns the function unchanged.
"""

from __future__ import annotations

import queue
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import spaces

from quantizer import int4
from quantizer.cancel import CancelToken, JobCancelled
from quantizer.errors import QuantizerError
from quantizer.events import Event, EventStream
from quantizer.pipeline import JobSpec, run
from quantizer.report import Report

SHARED_STAGES = ("preflight", "fetch", "reference")
RECIPE_STAGES_SAVE = ("quantize", "save", "verify", "card")
PER_VISITOR = 2  # one running and one waiting
RUN_LOCK = threading.Lock()  # one job at a time in this process, whatever the queue's concurrency says
VERIFY_AND_PUSH_SECONDS = 600  # loading, the reference pass, verification and the upload, beside the int4 budget


@dataclass(frozen=True)
class Finished:
    """The last item of a stream: the report, or the sentence that explains why there is none."""

    report: Report | None
    error: str | None = None


@dataclass(frozen=True)
class Waiting:
    """The job waits for the one ahead of it."""

    message: str


@dataclass
class Ticket:
    visitor: str
    session: str | None
    cancel: CancelToken = field(default_factory=CancelToken)


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
        """Cancel every job of a visitor (the Stop button) or of a browser session (a closed tab)."""
        with self._lock:
            chosen = [
                t
                for t in self._tickets
                if (visitor is not None and t.visitor == visitor) or (session is not None and t.session == session)
            ]
        for ticket in chosen:
            ticket.cancel.cancel(reason)
        return len(chosen)


REGISTRY = Registry()


def run_ticket(spec: JobSpec, ticket: Ticket, inbox: queue.Queue) -> None:
    """The job's thread: wait for the process's lock, run the job, and always hand the lock and ticket back, so a
    page that went away never keeps the next visitor waiting."""
    events = EventStream(inbox.put, cancel=ticket.cancel)
    try:
        if not RUN_LOCK.acquire(blocking=False):
            inbox.put(Waiting("waiting for the job ahead of this one to finish"))
            while not RUN_LOCK.acquire(timeout=0.25):
                if ticket.cancel.requested:
                    inbox.put(Finished(None, f"stopped before it started: {ticket.cancel.reason}"))
                    return
        try:
            if ticket.cancel.requested:
                inbox.put(Finished(None, f"stopped before it started: {ticket.cancel.reason}"))
                return
            inbox.put(Finished(run(spec, events)))
        except JobCancelled:
            inbox.put(Finished(None, f"stopped: {ticket.cancel.reason}; nothing was kept"))
            print(f"a job of {ticket.visitor} stopped: {ticket.cancel.reason}", file=sys.stderr, flush=True)
        except QuantizerError as exc:
            inbox.put(Finished(None, events.scrub(str(exc))))
        except Exception as exc:  # shown as one sentence, never as a stack trace
            inbox.put(Finished(None, events.scrub(f"unexpected failure ({type(exc).__name__}: {exc})")))
        finally:
            RUN_LOCK.release()
    finally:
        REGISTRY.done(ticket)


def zerogpu_seconds(spec: JobSpec, ticket: Ticket | None = None) -> int:
    """The ZeroGPU slot a job asks for (spaces calls this with the job's own arguments): its deadline when the host
    set one, else the int4 method's time budget (GPTQ is chosen only when its estimate fits it) plus the rest."""
    if spec.deadline_seconds:
        return int(spec.deadline_seconds) + 60
    return int(int4.budget_seconds()) + VERIFY_AND_PUSH_SECONDS


@spaces.GPU(duration=zerogpu_seconds)
def stream_job(spec: JobSpec, ticket: Ticket) -> Iterator[Event | Waiting | Finished]:
    inbox: queue.Queue[Event | Waiting | Finished] = queue.Queue()
    worker = threading.Thread(target=run_ticket, args=(spec, ticket, inbox), name="quantize-job", daemon=True)
    worker.start()
    try:
        while True:
            item = inbox.get()
            yield item
            if isinstance(item, Finished):
                return
    finally:  # the generator was closed mid-job (the page went away): stop the job
        if worker.is_alive():
            ticket.cancel.cancel("the page was closed")


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
