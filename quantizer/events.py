"""The event stream shared by the CLI, the UI and tracking.

The pipeline never prints. It emits `Event`s; whoever runs it subscribes sinks: the CLI prints
them to stderr, the UI streams them into the page, tracking logs stage durations. A sink that
raises is dropped with a single warning so that a broken consumer never breaks a job.
Secrets registered with `add_secret` are scrubbed from every message and every event's data
before any sink sees it. Every event is also a point where a stopped job ends (`cancel`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from .cancel import CancelToken

EventKind = Literal["stage_start", "stage_end", "progress", "log", "warning", "result", "error"]
REDACTED = "***"


@dataclass(frozen=True)
class Event:
    """One thing that happened. `stage` names the step; `quant_type` the recipe it belongs to."""

    kind: EventKind
    message: str
    stage: str | None = None
    quant_type: str | None = None
    fraction: float | None = None  # progress in [0, 1]
    seconds: float | None = None  # duration, on stage_end
    data: dict | None = None  # figures for machine consumers (tracking)
    time: float = field(default_factory=time.time)


Sink = Callable[[Event], None]
MARKS = {"stage_start": "▶", "warning": "!", "error": "✗", "log": " "}


def format_line(event: Event) -> str | None:
    """One log line for an event, as the CLI and the Space show it; None for events that are not lines
    (results, and progress short of completion)."""
    prefix = f"[{event.quant_type}] " if event.quant_type else ""
    if event.kind == "progress":
        return f"{prefix}  {event.stage} {event.message}" if (event.fraction or 0) >= 1.0 else None
    if event.kind == "stage_end":
        return f"{prefix}{'✓' if (event.data or {}).get('ok') else '✗'} {event.message}"
    mark = MARKS.get(event.kind)
    return f"{prefix}{mark} {event.message}" if mark else None


class EventStream:
    """Fan-out of events to sinks, with stage timing and secret scrubbing."""

    def __init__(self, *sinks: Sink, cancel: CancelToken | None = None):
        self._sinks: list[Sink] = list(sinks)
        self._secrets: set[str] = set()
        self.stage_seconds: dict[tuple[str | None, str], float] = {}
        self.cancel = cancel or CancelToken()

    def checkpoint(self) -> None:
        """Where a stopped job ends: raises JobCancelled in the job's thread once a stop was asked for."""
        self.cancel.check()

    def subscribe(self, sink: Sink) -> None:
        self._sinks.append(sink)

    def add_secret(self, secret: str | None) -> None:
        """Never let this string reach a sink (tokens)."""
        if secret:
            self._secrets.add(secret)

    def scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        return text

    def scrub_data(self, value: Any) -> Any:
        """Strings anywhere inside event data (dicts, lists, dataclass fields stay as objects) scrubbed."""
        if isinstance(value, str):
            return self.scrub(value)
        if isinstance(value, dict):
            return {k: self.scrub_data(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(self.scrub_data(v) for v in value)
        return value

    def emit(self, event: Event) -> None:
        self.checkpoint()
        if self._secrets:
            event = replace(event, message=self.scrub(event.message), data=self.scrub_data(event.data))
        for sink in list(self._sinks):
            try:
                sink(event)
            except Exception as exc:  # a consumer's bug must not fail the job
                self._sinks.remove(sink)
                self.emit(Event("warning", f"an event consumer failed and was detached: {exc}"))

    def log(self, message: str, *, quant_type: str | None = None, data: dict | None = None) -> None:
        self.emit(Event("log", message, quant_type=quant_type, data=data))

    def warn(self, message: str, *, quant_type: str | None = None) -> None:
        self.emit(Event("warning", message, quant_type=quant_type))

    def progress(self, stage: str, done: int, total: int, *, quant_type: str | None = None) -> None:
        fraction = done / total if total else 1.0
        self.emit(Event("progress", f"{done}/{total}", stage=stage, quant_type=quant_type, fraction=fraction))

    @contextmanager
    def stage(self, name: str, message: str, *, quant_type: str | None = None) -> Iterator[None]:
        """Emit start and end of a step and remember how long it took (also when it fails)."""
        self.emit(Event("stage_start", message, stage=name, quant_type=quant_type))
        started = time.perf_counter()
        ok = False
        try:
            yield
            ok = True
        finally:
            seconds = time.perf_counter() - started
            self.stage_seconds[(quant_type, name)] = seconds
            status = "done" if ok else "failed"
            self.emit(
                Event(
                    "stage_end",
                    f"{name} {status} in {seconds:.1f}s",
                    stage=name,
                    quant_type=quant_type,
                    seconds=seconds,
                    data={"ok": ok},
                )
            )

    def seconds_for(self, quant_type: str | None) -> dict[str, float]:
        """Durations of the stages run for one recipe (None: the shared stages)."""
        return {stage: round(s, 3) for (qt, stage), s in self.stage_seconds.items() if qt == quant_type}
