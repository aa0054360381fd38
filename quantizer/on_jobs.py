"""The CLI's `--on-jobs FLAVOR`: check the source, show the flavor, its price and the estimated cost, start the Job,
stream its log, cancel it on Ctrl-C, and hand back its report as a local job would."""

from __future__ import annotations

import sys
from collections.abc import Callable
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
class Prepared:
    """A Job ready to start: checked, priced and given its deadline."""

    spec: JobSpec
    flavor: hf_jobs.Flavor
    estimate: hf_jobs.CostEstimate
    image: str
    timeout: int
    namespace: str


def prepare(spec: JobSpec, options: JobsOptions, hub: Hub) -> Prepared:
    """Every check a local job makes before any work, plus the Job's: the source exists and is a model this tool
    takes, the flags make sense on a Job, the flavor exists; then the price and the estimate."""
    hf_jobs.job_argv(spec)  # refuses what a Job cannot do, before anything else
    identity = hub.whoami()
    info = open_source(spec.source, hub, allow_local=False).inspect()
    flavor = hf_jobs.flavor_named(hub, options.flavor)
    estimate = hf_jobs.estimate(flavor, info.weight_bytes, hf_jobs.type_names(spec))
    return Prepared(
        spec=spec,
        flavor=flavor,
        estimate=estimate,
        image=image_for(options.image),
        timeout=hf_jobs.timeout_seconds(estimate, options.timeout),
        namespace=options.namespace or identity.name,
    )


def start(prepared: Prepared, hub: Hub, say: Callable[[str], None]) -> hf_jobs.Submitted:
    say(f"on Hugging Face Jobs: {prepared.estimate.text()}")
    job = hf_jobs.submit(
        hub,
        prepared.spec,
        prepared.flavor,
        image=prepared.image,
        timeout=prepared.timeout,
        namespace=prepared.namespace,
    )
    say(f"started the Job {job.url} (timeout {job.timeout_seconds // 60} min); its log follows")
    return job


def outcome_report(outcome: hf_jobs.RemoteOutcome) -> Report:
    """The Job's report; a Job that ended without one (cancelled, killed, failed to start) is an error that says
    how it ended and where its log is."""
    if outcome.report is not None:
        return outcome.report
    how = outcome.stage.lower() + (f" ({outcome.message})" if outcome.message else "")
    raise QuantizerError(f"the Job {outcome.job.url} ended {how} without a report; its log is on that page.")


def run_on_jobs(spec: JobSpec, options: JobsOptions, events: EventStream) -> Report:
    """One job on Jobs, from the CLI: the log streams to stderr; Ctrl-C cancels the Job."""
    hub = Hub(spec.token, events)

    def say(line: str) -> None:
        print(events.scrub(line), file=sys.stderr, flush=True)

    prepared = prepare(spec, options, hub)
    job = start(prepared, hub, say)
    return recorded(follow_or_cancel(job, hub, say), spec, events, user=prepared.namespace)


def recorded(report: Report, spec: JobSpec, events: EventStream, *, user: str | None) -> Report:
    """The Job's report, recorded in Trackio here as a local job's is (unless the job asked for no tracking)."""
    if spec.track:
        report.tracking = tracking.record_report(report, events, spec.trackio_project, user=user)
    return report


def follow_or_cancel(job: hf_jobs.Submitted, hub: Hub, say: Callable[[str], None]) -> Report:
    try:
        outcome = hf_jobs.follow(hub, job, say)
    except KeyboardInterrupt:
        say(f"cancelling the Job {job.url}")
        hf_jobs.cancel(hub, job)
        info = hf_jobs.wait_until_ended(hub, job)
        say(f"the Job ended {str(info.status.stage).lower()}")
        raise
    return outcome_report(outcome)
