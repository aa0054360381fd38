"""Stopping a job from outside: a Stop button, a closed tab, or a deadline.

`CancelToken.cancel(reason)` ends the job within moments wherever it is. The job's own thread
checks the token at every event it emits and at every tensor, layer, shard and Hub call
(`check`). Work that emits nothing for a while (transformers loading and quantizing a model in
one call) is interrupted by raising `JobCancelled` in that thread asynchronously after a short
grace period. Either way it is raised exactly once, so the clean-up it sets off (removing staging
folders, deleting a repo the job created) runs undisturbed. `JobCancelled` is a BaseException,
like KeyboardInterrupt, so no `except Exception` on the way swallows it.
"""

from __future__ import annotations

import ctypes
import threading
import time

GRACE_SECONDS = 1.5  # how long cooperative checks get before the exception is raised in the thread


class JobCancelled(BaseException):
    """The job was stopped; nothing of it is kept."""

    def __init__(self, reason: str = "the job was stopped"):
        super().__init__(reason)
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


class CancelToken:
    """One job's stop signal, its optional deadline, and the thread to interrupt."""

    def __init__(self) -> None:
        self._requested = threading.Event()
        self._lock = threading.Lock()
        self._delivered = False
        self.reason = ""
        self._thread_id: int | None = None
        self._timer: threading.Timer | None = None

    @property
    def requested(self) -> bool:
        return self._requested.is_set()

    def bind(self, seconds: float | None = None) -> None:
        """Tie the token to the calling thread (the job's) and start its deadline, if any."""
        self._thread_id = threading.get_ident()
        if seconds:
            self._timer = threading.Timer(
                seconds, self.cancel, args=(f"the job ran past its deadline of {seconds:g} s and was stopped",)
            )
            self._timer.daemon = True
            self._timer.start()

    def release(self) -> None:
        """The job is over: no deadline, no interruption any more."""
        if self._timer:
            self._timer.cancel()
        with self._lock:
            self._delivered = True

    def cancel(self, reason: str = "the job was stopped") -> None:
        if self._requested.is_set():
            return
        self.reason = reason
        self._requested.set()
        threading.Thread(target=self._interrupt_later, name="cancel-job", daemon=True).start()

    def check(self) -> None:
        """Raise JobCancelled in the job's thread if a stop was asked for (once)."""
        if not self._requested.is_set() or threading.get_ident() != self._thread_id:
            return
        with self._lock:
            if self._delivered:
                return
            self._delivered = True
        raise JobCancelled(self.reason)

    def _interrupt_later(self) -> None:
        deadline = time.monotonic() + GRACE_SECONDS
        while time.monotonic() < deadline:
            time.sleep(0.05)
            with self._lock:
                if self._delivered:
                    return
        with self._lock:
            if self._delivered or self._thread_id is None:
                return
            self._delivered = True
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self._thread_id), ctypes.py_object(JobCancelled))
