"""The one flow that both the CLI and the Space call: preflight, fetch, measure, then each type's stages.

`run(spec, events)` never prints and never exits; it returns a `Report` with one result per
quantization type and emits events as it goes. Bad input raises an `InputError` before any work
(nothing downloaded, nothing created); a type that fails is recorded as failed, leaves nothing
behind, and the next type still runs.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from .events import Event, EventStream
from .hub import Hub
from .measurements import Measurements, prepare_measurements
from .plan import JobPlan
from .preflight import preflight
from .publish import Publisher
from .report import RecipeResult, Report
from .spec import JobSpec
from .tracking import Tracker
from .typejob import TypeRun

__all__ = ["JobSpec", "run"]


def run(spec: JobSpec, events: EventStream | None = None) -> Report:
    """Run a whole job. Raises InputError on bad input (nothing written); otherwise returns the report."""
    events = events or EventStream()
    events.add_secret(spec.token)
    events.cancel.bind(spec.deadline_seconds)  # a Stop, a closed tab or the deadline ends the job from here on
    hub = Hub(spec.token, events)
    tracker = Tracker(events, spec.trackio_project, enabled=spec.track)
    events.subscribe(tracker)
    workdir = Path(tempfile.mkdtemp(prefix="quantizer-job-"))
    try:
        with events.stage("preflight", f"checking {spec.source}"):
            plan = preflight(spec, events, hub, workdir)
        with events.stage("fetch", "getting the model files"):
            fetched = plan.source.fetch(workdir, events, weights=not plan.streaming)
        measurements = prepare_measurements(spec, plan, fetched, events)
        shared_seconds = events.seconds_for(None)
        publisher = Publisher(spec=spec, plan=plan, hub=hub, events=events, workdir=workdir)
        results = []
        for type_plan in plan.types:
            run_type = TypeRun(
                plan=plan,
                type=type_plan,
                fetched=fetched,
                measurements=measurements,
                events=events,
                publisher=publisher,
                debug=spec.debug,
            )
            result = run_type.run(tracker)
            results.append(result)
            summary = f"{type_plan.name}: {result.status}"
            events.emit(Event("result", summary, quant_type=type_plan.name, data={"result": result}))
        tracking = tracker.where() if tracker.recorded and tracker.enabled else None
        return job_report(plan, measurements, results, shared_seconds, tracking)
    finally:
        events.cancel.release()
        shutil.rmtree(workdir, ignore_errors=True)


def job_report(
    plan: JobPlan,
    measurements: Measurements,
    results: list[RecipeResult],
    shared_seconds: dict[str, float],
    tracking: str | None,
) -> Report:
    reference = measurements.reference
    return Report(
        source=plan.info.ref,
        revision=plan.info.revision,
        device=plan.hardware.device,
        hardware=plan.hardware.name,
        results=results,
        seconds=shared_seconds,
        ppl_source=reference.ppl if reference else None,
        sample_source=reference.sample if reference else None,
        eval_text=plan.texts.eval_name,
        calibration_text=plan.texts.calibration_name,
        compute=plan.compute,
        tracking=tracking,
    )
