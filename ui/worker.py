"""The job boundary: a job runs in a process of its own, and only plain values cross into it and out of it.

On ZeroGPU, `spaces.GPU` runs the decorated generator in a worker process forked from the app, pickling its
arguments and every value it yields; elsewhere the app starts a child process of its own (forked from a server
process that imported the library once, so a job starts in a fraction of a second and inherits none of the web
server's threads). Either way the same generator, `run_job`, runs the job there, and what crosses is picklable:
the `JobSpec` and the job's folder going in, `Event`s and one `Finished` (the report, or a sentence) coming out.

What must act across the boundary acts through the file system or on the process:
- a Stop, a closed tab or the host's deadline writes the job folder's STOP file; a thread in the job's process
  watches for it and cancels the job, which cleans up after itself (`cancel.py`);
- the app kills a child that ignores the stop, outlives its deadline or grows past its memory cap, and removes
  the job's folder (every temporary file of the job is under it: the child's `tempfile.tempdir`);
- any `BaseException` in the job (a Rust library's panic, an out-of-memory error) ends it with a sentence, and a
  process that dies without one (killed, crashed) ends it with a sentence too: the page never waits on a dead job.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import spaces

from quantizer import settings
from quantizer.cancel import CancelToken, JobCancelled
from quantizer.errors import QuantizerError
from quantizer.events import Event, EventStream
from quantizer.pipeline import JobSpec, run
from quantizer.report import Report

from . import limits

STOP_FILE = "STOP"
DONE_FILE = "DONE"  # written by the job's process once the job has ended and cleaned up
STOP_POLL_SECONDS = 0.2
KILL_AFTER_STOP_SECONDS = 20.0  # a stopped job gets this long to clean up (delete a repo it made) before a kill
DEADLINE_GRACE_SECONDS = 30.0  # past its deadline the job stops itself; past this too, it is killed
WATCH_SECONDS = 0.5  # how often the app checks the child's memory and life
MEMORY_SHARE = 0.9  # of the machine's memory, the default cap of a job's process


@dataclass(frozen=True)
class Finished:
    """The last item of a stream: the report, or the sentence that explains why there is none."""

    report: Report | None
    error: str | None = None


# --- inside the job's process ---------------------------------------------------------------------------------
def watch_stop_file(folder: Path, token: CancelToken, done: threading.Event) -> None:
    """Cancel the job when the app writes the STOP file (its text is the reason)."""
    stop = folder / STOP_FILE
    while not done.wait(STOP_POLL_SECONDS):
        if stop.exists():
            with contextlib.suppress(OSError):
                token.cancel(stop.read_text().strip() or "the job was stopped")
            return


def job_thread(spec: JobSpec, token: CancelToken, inbox: queue.Queue) -> None:
    """Run the job and always end the stream with one `Finished`, whatever the job raised."""
    events = EventStream(inbox.put, cancel=token)
    try:
        inbox.put(Finished(run(spec, events)))
    except JobCancelled:
        inbox.put(Finished(None, f"stopped: {token.reason}; nothing was kept"))
    except QuantizerError as exc:
        inbox.put(Finished(None, events.scrub(str(exc))))
    except BaseException as exc:  # a panic in a Rust library, MemoryError...: one sentence, never a trace
        inbox.put(Finished(None, events.scrub(failure_sentence(exc))))


def failure_sentence(exc: BaseException) -> str:
    """One sentence for whatever ended the job: a panic of a Rust library (tokenizers, safetensors) usually means a
    malformed file of the source."""
    kind = type(exc).__name__
    first_line = (str(exc).strip().splitlines() or [""])[0][:300]
    where = " inside a library it called (a file of the source may be malformed)" if "Panic" in kind else ""
    return f"the job failed{where} ({kind}: {first_line}); nothing was kept"


def run_job(spec: JobSpec, folder: str) -> Iterator[Event | Finished]:
    """The job, in whichever process runs it: its events as they happen, then one `Finished`. Closing the generator
    (the app went away) stops the job."""
    path = Path(folder)
    tempfile.tempdir = str(path)  # every temporary file of the job goes under its folder, which the app removes
    token, done = CancelToken(), threading.Event()
    inbox: queue.Queue[Event | Finished] = queue.Queue()
    watcher = threading.Thread(target=watch_stop_file, args=(path, token, done), name="job-stop-file", daemon=True)
    worker = threading.Thread(target=job_thread, args=(spec, token, inbox), name="quantize-job", daemon=True)
    watcher.start()
    worker.start()
    try:
        while True:
            item = inbox.get()
            yield item
            if isinstance(item, Finished):
                return
    finally:
        if worker.is_alive():  # the consumer closed the stream mid-job: stop it and let it clean up
            token.cancel("the page was closed")
            worker.join(KILL_AFTER_STOP_SECONDS)
        done.set()
        with contextlib.suppress(OSError):  # the app may remove the folder now (ZeroGPU's worker lives on)
            (path / DONE_FILE).write_text("")


def zerogpu_seconds(spec: JobSpec, folder: str = "") -> int:
    """The ZeroGPU slot a job asks for (spaces calls this with the job's own arguments): its deadline and a margin,
    within what a slot may last (`limits`)."""
    return limits.slot_seconds(spec.deadline_seconds)


run_on_zerogpu = spaces.GPU(duration=zerogpu_seconds)(run_job)  # unchanged off ZeroGPU


def child_main(spec: JobSpec, folder: str, outbox) -> None:
    """The child process: the job's stream into the queue the app reads."""
    for item in run_job(spec, folder):
        outbox.put(item)


# --- in the app --------------------------------------------------------------------------------------------------
_context_lock = threading.Lock()
_context = None


def child_context():
    """A forkserver that imported the library once: children start fast and with none of the app's threads."""
    global _context
    with _context_lock:
        if _context is None:
            _context = multiprocessing.get_context("forkserver")
            _context.set_forkserver_preload(["quantizer.pipeline", "ui.worker"])
        return _context


def memory_cap_bytes() -> int:
    """The most memory a job's process may hold: QUANTIZER_JOB_MEMORY (bytes), else most of the machine's."""
    value = settings.get("QUANTIZER_JOB_MEMORY")
    return value if value else int(psutil.virtual_memory().total * MEMORY_SHARE)


def tree_rss(process: psutil.Process) -> int:
    total = 0
    for p in (process, *process.children(recursive=True)):
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


def exit_sentence(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        return (
            f"the job's process was ended by signal {-exitcode} before it finished (out of memory, or killed by the "
            "host); nothing was kept"
        )
    return f"the job's process ended (exit code {exitcode}) before it finished; nothing was kept"


def stop_job(folder: Path, reason: str) -> None:
    """Ask the job in `folder` to stop (it reads the STOP file within a fraction of a second)."""
    with contextlib.suppress(OSError):
        (folder / STOP_FILE).write_text(reason)


def run_in_child(spec: JobSpec, folder: Path) -> Iterator[Event | Finished]:
    """The job in a child process of the app's, watched: its memory against the cap, its life, its deadline."""
    context = child_context()
    outbox = context.Queue()
    child = context.Process(target=child_main, args=(spec, str(folder), outbox), name="quantize-job", daemon=True)
    child.start()
    hard_deadline = time.monotonic() + spec.deadline_seconds + DEADLINE_GRACE_SECONDS if spec.deadline_seconds else None
    watch = Watch(folder=folder, process=psutil.Process(child.pid), cap=memory_cap_bytes(), deadline=hard_deadline)
    finished = False
    next_look = time.monotonic() + WATCH_SECONDS
    try:
        while True:
            try:
                item = outbox.get(timeout=WATCH_SECONDS)
            except queue.Empty:
                item = None
            if item is not None:
                yield item
                if isinstance(item, Finished):
                    finished = True
                    return
                if time.monotonic() < next_look:  # a job that talks all the time is looked at all the same
                    continue
            next_look = time.monotonic() + WATCH_SECONDS
            if not child.is_alive():
                yield from last_words(outbox, child.exitcode)
                finished = True
                return
            if why := watch.reason_to_end():
                child.kill()
                child.join(10)
                yield Finished(None, f"{why}; nothing was kept")
                finished = True
                return
    finally:
        if child.is_alive():  # the page went away mid-job: ask, then insist
            if not finished:
                stop_job(folder, "the page was closed")
            child.join(KILL_AFTER_STOP_SECONDS)
            if child.is_alive():
                child.kill()
                child.join(10)
        outbox.close()


def last_words(outbox, exitcode: int | None) -> Iterator[Event | Finished]:
    """What an ended child wrote just before it ended, then its ending in one sentence if it sent none."""
    with contextlib.suppress(queue.Empty):
        while True:
            last = outbox.get(timeout=0.5)
            yield last
            if isinstance(last, Finished):
                return
    yield Finished(None, exit_sentence(exitcode))


@dataclass(kw_only=True)
class Watch:
    """What the app checks of a running job's process each time it looks."""

    folder: Path
    process: psutil.Process
    cap: int  # bytes of memory the process tree may hold
    deadline: float | None  # monotonic time past which the job is ended
    stop_asked: float | None = None  # when the STOP file was first seen

    def reason_to_end(self) -> str | None:
        """Why the job must be killed now (over its memory, past its deadline, deaf to a stop), or None."""
        now = time.monotonic()
        if (self.folder / STOP_FILE).exists() and self.stop_asked is None:
            self.stop_asked = now
        if tree_rss(self.process) > self.cap:
            return f"the job used more than {self.cap / 1e9:.1f} GB of memory and was stopped"
        if self.deadline is not None and now > self.deadline:
            return "the job ran past its deadline and did not stop, so it was ended"
        if self.stop_asked is not None and now - self.stop_asked > KILL_AFTER_STOP_SECONDS:
            return "the job did not stop when asked, so it was ended"
        return None


def stream_isolated(spec: JobSpec, folder: Path) -> Iterator[Event | Finished]:
    """The job's stream from its own process (ZeroGPU's worker, or a child of the app), always ending in one
    `Finished`. The job's folder is gone afterwards, and so is its save-only output folder (the app gives each job
    one of its own) unless some type ended well: a job killed mid-save cannot remove its own staging."""
    kept = False
    try:
        stream = zerogpu_stream(spec, folder) if limits.on_zerogpu() else run_in_child(spec, folder)
        with contextlib.closing(stream):  # closed here, so the job's process is dealt with before its folder goes
            for item in stream:
                if isinstance(item, Finished):
                    kept = item.report is not None and any(r.ok for r in item.report.results)
                yield item
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        if spec.output_dir is not None and not kept:
            shutil.rmtree(spec.output_dir, ignore_errors=True)


def zerogpu_stream(spec: JobSpec, folder: Path) -> Iterator[Event | Finished]:
    """ZeroGPU's worker runs the job; a worker that dies or raises ends the stream with a sentence. The worker
    outlives the job, so the app waits (bounded) for the job to say it has cleaned up before removing its folder."""
    finished = False
    stream = run_on_zerogpu(spec, str(folder))
    try:
        for item in stream:
            yield item
            if isinstance(item, Finished):
                finished = True
                return
    except Exception as exc:  # spaces raises gr.Error("ZeroGPU worker error", ...) when its worker fails
        yield Finished(None, f"the GPU worker failed ({getattr(exc, 'message', None) or exc}); nothing was kept")
        finished = True
    finally:
        if not finished:  # closed mid-job: tell the job (spaces also closes it at its next event)
            stop_job(folder, "the page was closed")
            stream.close()
        deadline = time.monotonic() + KILL_AFTER_STOP_SECONDS
        while not (folder / DONE_FILE).exists() and time.monotonic() < deadline:
            time.sleep(STOP_POLL_SECONDS)
    if not finished:
        yield Finished(None, "the GPU worker ended before the job finished; nothing was kept")
