"""The CLI's `--on-jobs FLAVOR`: check the source, show the flavor, its price and the estimated cost, start the Job,
stream its log, cancel it on Ctrl-C, and hand back its report as a local job would."""

from __future__ import annotations

import contextlib
import itertools
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from . import hf_jobs, settings, tracking
from .errors import InputError, QuantizerError
from .events import EventStream
from .hub import Hub
from .report import Report
from .source import open_source
from .spec import JobSpec


@dataclass(frozen=True, kw_only=True)
class JobsOptions:
    flavor: str
    image: str | None = None  # None: QUANTIZER_JOBS_IMAGE, else this Space's own image
    timeout: int | None = None  # seconds; None: from the estimate
    namespace: str | None = None  # who the Job runs and is billed under; None: the token's owner


def image_for(asked: str | None) -> str:
    """The Docker image the Job runs: the one asked for, the host's, or this Space's own (on a Space)."""
    image = asked or settings.get("QUANTIZER_JOBS_IMAGE")
    if image:
        return image
    if space := settings.get("SPACE_ID"):
        return f"hf.co/spaces/{space}"
    raise InputError(
        "a Job runs in a Docker image that holds this tool: pass --jobs-image hf.co/spaces/OWNER/NAME (this Space "
        "or your duplicate of it), or set QUANTIZER_JOBS_IMAGE."
    )


@dataclass(frozen=True, kw_only=True)
class Target:
    """Where Jobs run, settled once for a job or a whole batch: the flavor, the image, the account."""

    flavor: hf_jobs.Flavor
    image: str
    namespace: str  # who the Jobs run and are billed under
    timeout: int | None  # seconds asked for; None: from each Job's estimate


def resolve(options: JobsOptions, hub: Hub) -> Target:
    """The token's account, the flavor from the Hub's list and the image: one look-up each, whatever the batch."""
    identity = hub.whoami()
    return Target(
        flavor=hf_jobs.flavor_named(hub, options.flavor),
        image=image_for(options.image),
        namespace=options.namespace or identity.name,
        timeout=options.timeout,
    )


@dataclass(frozen=True, kw_only=True)
class Prepared:
    """A Job ready to start: checked, priced and given its deadline."""

    spec: JobSpec
    target: Target
    estimate: hf_jobs.CostEstimate
    timeout: int


def prepare(spec: JobSpec, target: Target, hub: Hub) -> Prepared:
    """Every check a local job makes before any work, plus the Job's: the flags make sense on a Job, the source
    exists and is a model this tool takes; then the price and the estimate."""
    hf_jobs.job_argv(spec)  # refuses what a Job cannot do, before the source is looked at
    info = open_source(spec.source, hub, allow_local=False).inspect()
    estimate = hf_jobs.estimate(target.flavor, info.weight_bytes, hf_jobs.type_names(spec))
    return Prepared(
        spec=spec, target=target, estimate=estimate, timeout=hf_jobs.timeout_seconds(estimate, target.timeout)
    )


def start(prepared: Prepared, hub: Hub) -> Iterator[str | hf_jobs.Submitted]:
    """Say the price and the estimate, start the Job, say where it is; the Job last."""
    yield f"on Hugging Face Jobs: {prepared.estimate.text()}"
    job = hf_jobs.submit(
        hub,
        prepared.spec,
        prepared.target.flavor,
        image=prepared.target.image,
        timeout=prepared.timeout,
        namespace=prepared.target.namespace,
    )
    yield f"started the Job {job.url} (timeout {job.timeout_seconds // 60} min); its log follows"
    yield job


def outcome_report(outcome: hf_jobs.RemoteOutcome) -> Report:
    """The Job's report; a Job that ended without one (cancelled, killed, failed to start) is an error that says
    how it ended and where its log is."""
    if outcome.report is not None:
        return outcome.report
    how = outcome.stage.lower() + (f" ({outcome.message})" if outcome.message else "")
    raise QuantizerError(f"the Job {outcome.job.url} ended {how} without a report; its log is on that page.")


def recorded(report: Report, spec: JobSpec, events: EventStream, *, user: str | None) -> Report:
    """The Job's report, recorded in Trackio here as a local job's is (unless the job asked for no tracking)."""
    if spec.track:
        report.tracking = tracking.record_report(report, events, spec.trackio_project, user=user)
    return report


@dataclass(frozen=True, kw_only=True)
class BatchRow:
    """One source's outcome, here or on Jobs: its report, or the sentence that says why there is none."""

    source: str
    report: Report | None = None
    error: str | None = None
    job_url: str | None = None  # the Hugging Face Job that ran it


@dataclass(frozen=True)
class Started:
    spec: JobSpec
    job: hf_jobs.Submitted


class JobsRun:
    """Jobs for the CLI and the Space alike: each one started (saying its price and estimate), then each log
    followed to its report, which is recorded in Trackio. `cancel` reaches every Job started so far, from whichever
    thread calls it (Ctrl-C, the page's Stop, a closed tab)."""

    def __init__(self, target: Target, hub: Hub, events: EventStream) -> None:
        self.target, self.hub, self.events = target, hub, events
        self.started: list[Started] = []

    def launch(self, prepared: Prepared) -> Iterator[str]:
        for item in start(prepared, self.hub):
            if isinstance(item, hf_jobs.Submitted):
                self.started.append(Started(prepared.spec, item))
            else:
                yield item

    def run(self, specs: list[JobSpec], *, stopped: Callable[[], bool] = lambda: False) -> Iterator[str | BatchRow]:
        """A batch: all checked and started first (they run at once), a failed one as its row; then every log."""
        for spec in specs:
            if stopped():
                break
            try:
                yield from self.launch(prepare(spec, self.target, self.hub))
            except QuantizerError as exc:
                yield f"✗ {spec.source}: {exc}"
                yield BatchRow(source=spec.source, error=str(exc))
        yield from self.follow_all(tag=len(specs) > 1)

    def follow_all(self, *, tag: bool) -> Iterator[str | BatchRow]:
        """Each started Job's log lines (tagged with its source in a batch), then its row once it has ended."""
        for run in list(self.started):
            report = None
            for item in hf_jobs.log_lines(self.hub, run.job):
                if isinstance(item, Report):
                    report = item
                else:
                    yield f"[{run.spec.source}] {item}" if tag else item
            try:
                report = outcome_report(hf_jobs.ended(self.hub, run.job, report))
            except QuantizerError as exc:
                yield f"✗ {run.spec.source}: {exc}"
                yield BatchRow(source=run.spec.source, error=str(exc), job_url=run.job.url)
                continue
            recorded(report, run.spec, self.events, user=self.target.namespace)
            yield BatchRow(source=run.spec.source, report=report, job_url=run.job.url)

    def cancel(self) -> None:
        for run in list(self.started):
            with contextlib.suppress(QuantizerError):  # one that has ended already cannot be cancelled
                hf_jobs.cancel(self.hub, run.job)


def print_until_done(jobs: JobsRun, items: Iterator[str | BatchRow], events: EventStream) -> list[BatchRow]:
    """The CLI's side of a `JobsRun`: lines to stderr as they come, the rows kept; Ctrl-C cancels every Job."""
    rows = []
    try:
        for item in items:
            if isinstance(item, BatchRow):
                rows.append(item)
            else:
                print(events.scrub(item), file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        for run in jobs.started:
            print(f"cancelling the Job {run.job.url}", file=sys.stderr, flush=True)
        jobs.cancel()
        for run in jobs.started:
            stage = hf_jobs.wait_until_ended(jobs.hub, run.job).status.stage
            print(f"the Job ended {str(stage).lower()}", file=sys.stderr, flush=True)
        raise
    return rows


def run_on_jobs(spec: JobSpec, options: JobsOptions, events: EventStream) -> Report:
    """One job on Jobs, from the CLI. What stops it from starting raises, as a local job's preflight does."""
    hf_jobs.job_argv(spec)  # refuses what a Job cannot do, before anything is looked up
    hub = Hub(spec.token, events)
    target = resolve(options, hub)
    prepared = prepare(spec, target, hub)
    jobs = JobsRun(target, hub, events)
    (row,) = print_until_done(jobs, itertools.chain(jobs.launch(prepared), jobs.follow_all(tag=False)), events)
    if row.report is None:
        raise QuantizerError(row.error or "the Job ended without a report")
    return row.report
