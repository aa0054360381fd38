"""Every job recorded in Trackio: one run per quantization type, with its config, stage times and figures.

Local by default (SQLite under TRACKIO_DIR, else HF_HOME/trackio); with TRACKIO_SPACE_ID set the
runs sync to that Trackio Space. Tracking never fails or slows a job: if Trackio cannot write,
the job goes on and says so once. Nothing it records contains the token (messages are scrubbed).
"""

from __future__ import annotations

import contextlib
import io
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict
from importlib.metadata import version
from pathlib import Path
from typing import Any

from . import settings
from .events import Event, EventStream
from .report import RecipeResult, Report
from .source import SourceInfo

HIDDEN = "(private)"
PROJECT_ENV = "QUANTIZER_TRACKIO_PROJECT"
VERIFY_METRICS = (
    "logits_rel_err",
    "top1_agreement",
    "ppl_source",
    "ppl_quantized",
    "ppl_delta_pct",
    "quantized_linear",
    "skipped_linear",
)


def project_name(explicit: str | None = None) -> str:
    return explicit or settings.get(PROJECT_ENV)


def store_dir() -> Path:
    """Where Trackio keeps its SQLite files (it reads TRACKIO_DIR once, when imported)."""
    from trackio.utils import TRACKIO_DIR

    return Path(TRACKIO_DIR)


def store_path(project: str) -> Path:
    from trackio.sqlite_storage import SQLiteStorage

    return SQLiteStorage.get_project_db_path(project)


@contextlib.contextmanager
def quiet() -> Iterator[list[warnings.WarningMessage]]:
    """Trackio prints its own progress to stdout (which carries --json) and warns instead of raising: swallow
    the prints (the CLI says where runs went) and hand the warnings to the caller."""
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("always")
        yield caught


class Tracker:
    """Records each recipe of a job as a Trackio run. An event sink for stage durations."""

    def __init__(self, events: EventStream, project: str | None = None, enabled: bool = True):
        self.events = events
        self.project = project_name(project)
        self.enabled = enabled
        self.job_id = uuid.uuid4().hex[:8]
        self.run: Any = None
        self.quant_type: str | None = None
        self.step = 0
        self.recorded: list[str] = []  # run names, for the CLI's closing line
        self.hide_repos = False

    # --- the guard: every Trackio call goes through here ----------------------------------------------------
    def _safely(self, what: str, fn: Callable[[], Any]) -> Any:
        if not self.enabled:
            return None
        try:
            with quiet() as caught:
                value = fn()
            problems = [str(w.message) for w in caught if "trackio" in str(w.filename) or "trackio" in str(w.message)]
            if problems:
                raise RuntimeError(problems[0])
            return value
        except Exception as exc:
            self.disable(f"{what}: {self.events.scrub(str(exc))}")
            return None

    def disable(self, reason: str) -> None:
        if self.enabled:
            self.enabled = False
            self.events.warn(f"Trackio cannot record this job ({reason}); the job goes on without tracking")

    def _writable(self) -> bool:
        if settings.get("TRACKIO_SPACE_ID"):
            return True
        folder = store_dir()
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder / f".write-test-{self.job_id}"
            probe.write_bytes(b"")
            probe.unlink()
            return True
        except OSError as exc:
            self.disable(f"{folder} is not writable: {exc.strerror or exc}")
            return False

    # --- the run ---------------------------------------------------------------------------------------------
    def start(
        self, info: SourceInfo, result: RecipeResult, hardware_name: str, *, user: str | None, private: bool
    ) -> None:
        """Open the run. `user` is whose job it is (a shared Space shows each visitor their own). Runs that sync
        to a Trackio Space are private there, and never name a private repo."""
        if not self.enabled or not self._writable():
            return
        import trackio

        synced = bool(settings.get("TRACKIO_SPACE_ID"))
        self.hide_repos = synced and (private or info.private or info.gated)
        shown_name = "private-model" if self.hide_repos else info.name
        name = f"{shown_name}-{result.suffix}-{time.strftime('%Y%m%d-%H%M%S')}-{self.job_id}"
        config = {
            "user": user,
            "source": HIDDEN if self.hide_repos else info.repo_id or info.ref,
            "revision": info.revision,
            "quant_type": result.quant_type,
            "torchao_config": result.torchao_config,
            "group_size": result.group_size,
            "device": result.device,
            "hardware": hardware_name,
            "target": HIDDEN if self.hide_repos else result.target_repo,
            "job_id": self.job_id,
            **{f"{lib}_version": version(lib) for lib in ("torch", "torchao", "transformers")},
        }
        config = self.events.scrub_data(config)  # a folder name or a path may carry a secret
        name = self.events.scrub(name)
        self.run = self._safely(
            "starting a run",
            lambda: trackio.init(
                project=self.project,
                name=name,
                config=config,
                embed=False,
                auto_log_cpu=False,
                auto_log_gpu=False,
                **({"space_id": settings.get("TRACKIO_SPACE_ID"), "private": True} if synced else {}),
            ),
        )
        if self.run is not None:
            self.quant_type, self.step = result.quant_type, 0
            self.recorded.append(name)

    def log(self, metrics: dict[str, Any]) -> None:
        if self.run is None:
            return
        run = self.run
        self._safely("logging", lambda: run.log(metrics, step=self.step))
        self.step += 1

    def __call__(self, event: Event) -> None:
        """Stage durations of the current recipe, as they happen."""
        if self.run is not None and event.kind == "stage_end" and event.quant_type == self.quant_type:
            self.log({f"seconds/{event.stage}": round(event.seconds or 0.0, 3)})

    def finish(self, result: RecipeResult) -> None:
        if self.run is None:
            return
        import trackio

        metrics: dict[str, Any] = {
            "status": {"ok": "finished", "cancelled": "cancelled"}.get(result.status, "failed"),
            "bytes_in": result.source_bytes,
            "bytes_out": result.output_bytes,
            "size_ratio": result.size_ratio,
            "peak_rss_bytes": result.peak_rss_bytes,
            "target": None if self.hide_repos else result.target_repo,
            "url": None if self.hide_repos else result.url,
        }
        if result.verify:
            verify = asdict(result.verify)
            metrics.update({key: verify[key] for key in VERIFY_METRICS if verify[key] is not None})
        if result.error:
            metrics["error"] = self.events.scrub(result.error)
        self.log(self.events.scrub_data({k: v for k, v in metrics.items() if v is not None}))
        run = self.run
        if not result.ok:
            self._safely(
                "recording the failure",
                lambda: run.alert(
                    title=f"{result.quant_type} failed", text=metrics["error"], level=trackio.AlertLevel.ERROR
                ),
            )
        self._safely("finishing the run", trackio.finish)  # also clears trackio's current run
        self.run, self.quant_type = None, None

    def where(self) -> str:
        if space := settings.get("TRACKIO_SPACE_ID"):
            return f"the Trackio Space {space} (project '{self.project}')"
        return (
            f"Trackio project '{self.project}' in {store_path(self.project)} (open it: trackio show --project "
            f"{self.project})"
        )


def history(project: str | None = None, limit: int = 200, *, user: str | None = None) -> list[dict[str, Any]]:
    """Past runs read back from Trackio's store, newest first: config and final figures merged per run;
    with `user`, only that account's jobs."""
    from trackio.sqlite_storage import SQLiteStorage

    project = project_name(project)
    if not store_path(project).exists():
        return []
    rows = []
    with quiet():
        for run in SQLiteStorage.get_runs(project):
            config = SQLiteStorage.get_run_config(project, run) or {}
            merged: dict[str, Any] = {}
            for entry in SQLiteStorage.get_logs(project, run):
                merged.update(entry)
            if user is None or config.get("user") == user:
                rows.append({"run": run, "created": config.get("_Created", ""), **config, **merged})
    rows.sort(key=lambda row: row["created"], reverse=True)
    return rows[:limit]


def record_report(report: Report, events: EventStream, project: str | None = None, *, user: str | None) -> str | None:
    """A job that ran elsewhere (a Hugging Face Job, which records nothing of its own) recorded here, one run per
    type, as a local job's are. Its source may be private, which the report does not say: a synced Trackio Space
    never names it. Returns where the runs went, or None when nothing was recorded."""
    tracker = Tracker(events, project)
    info = SourceInfo(
        ref=report.source,
        name=report.source.split("/")[-1],
        config={},
        architecture="",
        model_type="",
        weight_files=(),
        weight_bytes=0,
        revision=report.revision,
        repo_id=report.source,
        private=True,
    )
    for result in report.results:
        tracker.start(info, result, report.hardware, user=user, private=True)
        tracker.log({f"seconds/{stage}": seconds for stage, seconds in result.seconds.items()})
        tracker.finish(result)
    return tracker.where() if tracker.recorded else None
