"""Run a pipeline job while streaming its events to the page.

`stream_job` is a generator that runs the job in a worker thread and yields each event as it
happens, then the report (or the error). On ZeroGPU it runs under `@spaces.GPU`, which moves the
whole generator to the GPU worker; elsewhere the decorator returns the function unchanged.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import spaces

from quantizer.errors import QuantizerError
from quantizer.events import Event, EventStream
from quantizer.pipeline import JobSpec, run
from quantizer.report import Report

SHARED_STAGES = ("preflight", "fetch", "reference")
RECIPE_STAGES_SAVE = ("quantize", "save", "verify", "card")


@dataclass(frozen=True)
class Finished:
    """The last item of a stream: the report, or the sentence that explains why there is none."""

    report: Report | None
    error: str | None = None


@spaces.GPU(duration=600)
def stream_job(spec: JobSpec) -> Iterator[Event | Finished]:
    inbox: queue.Queue[Event | Finished] = queue.Queue()
    events = EventStream(inbox.put)

    def work() -> None:
        try:
            inbox.put(Finished(run(spec, events)))
        except QuantizerError as exc:
            inbox.put(Finished(None, events.scrub(str(exc))))
        except Exception as exc:  # shown as one sentence, never as a stack trace
            inbox.put(Finished(None, events.scrub(f"unexpected failure ({type(exc).__name__}: {exc})")))

    threading.Thread(target=work, name="quantize-job", daemon=True).start()
    while True:
        item = inbox.get()
        yield item
        if isinstance(item, Finished):
            return


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
