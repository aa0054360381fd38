"""One type of a job, as a sequence: quantize → verify → publish, each stage returning its own frozen result.

The type's `RecipeResult` is built from its plan and those results (`planned_result`, then `measured_result` for the
card, then the publish stage's place). A type that fails is recorded with what its stages measured before the
failure, leaves nothing behind, and the next type still runs.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field, replace

from . import card
from .cancel import JobCancelled
from .engines import Quantized, TypeJob, quantize
from .errors import QuantizerError
from .events import Event, EventStream
from .hardware import PeakGPU, PeakRSS
from .measurements import Measurements
from .plan import JobPlan, TypePlan
from .publish import Published, Publisher
from .report import RecipeResult, config_repr
from .serving import VllmCheck
from .source import Fetched
from .tracking import Tracker
from .verification import check_kept, serving_check, verify
from .verify import VerifyResult


def planned_result(plan: JobPlan, tp: TypePlan) -> RecipeResult:
    """What is known of a type before its work starts: everything its plan says."""
    return RecipeResult(
        quant_type=tp.name,
        suffix=tp.recipe.suffix,
        torchao_config=config_repr(tp.config),
        format=tp.format,
        device=plan.hardware.device,
        group_size=tp.group_size,
        int4_method=tp.int4.label if tp.int4 else None,
        int4_estimated_seconds=tp.int4_estimated_seconds,
        target_repo=tp.output.target,
        source_bytes=plan.info.weight_bytes,
        quantized_share=tp.share.fraction if tp.share else None,
        notes=tp.notes,
        command=card.reproduce_command(plan.info, tp, plan.hardware.device),
    )


@dataclass(frozen=True, kw_only=True)
class Stages:
    """What the stages gave so far; a failed type's result keeps what was measured before the failure."""

    quantized: Quantized | None = None
    verified: VerifyResult | None = None
    vllm: VllmCheck | None = None
    refused_because: str | None = None  # a speed-only job's output that a normal job would have refused, and why


def measured_result(
    planned: RecipeResult, stages: Stages, seconds: dict[str, float], peaks: tuple[int | None, int | None]
) -> RecipeResult:
    """The planned result with what the stages measured (the card describes this)."""
    q = stages.quantized
    output_bytes = q.output_bytes if q else None
    return replace(
        planned,
        output_bytes=output_bytes,
        size_ratio=output_bytes / planned.source_bytes if output_bytes and planned.source_bytes else None,
        seconds=seconds,
        peak_rss_bytes=peaks[0],
        peak_gpu_bytes=peaks[1],
        peak_disk_bytes=q.peak_disk_bytes if q else None,
        quantized_share=q.counts.share.fraction if q and q.counts.share is not None else planned.quantized_share,
        mixed=q.mixed.to_dict() if q and q.mixed else None,
        torchao_config=q.mixed.config_text(planned.torchao_config) if q and q.mixed else planned.torchao_config,
        verify=stages.verified,
        vllm=stages.vllm,
        notes=(*planned.notes, *(q.notes if q else ()), *((stages.refused_because,) if stages.refused_because else ())),
    )


@dataclass(kw_only=True)
class TypeRun:
    """Runs one type's stages in order and records the outcome."""

    plan: JobPlan
    type: TypePlan
    fetched: Fetched
    measurements: Measurements
    events: EventStream
    publisher: Publisher
    debug: bool = False  # an unexpected error is raised on (after being recorded) for its traceback

    def run(self, tracker: Tracker) -> RecipeResult:
        tp, events = self.type, self.events
        planned = planned_result(self.plan, tp)
        events.log(f"{tp.name}: {planned.format}", quant_type=tp.name)
        for warning in tp.warnings:
            events.warn(warning, quant_type=tp.name)
        user = self.plan.identity.name if self.plan.identity else None
        tracker.start(self.plan.info, planned, self.plan.hardware.name, user=user, private=self.plan.private)
        peaks = Peaks(PeakRSS(), PeakGPU(self.plan.hardware))
        staging = self.publisher.staging_folder(tp.recipe, tp.output.target)
        upload = self.publisher.open_upload(tp.recipe, tp.output.target) if tp.output.upload_as_it_goes else None
        job = TypeJob(
            plan=self.plan,
            type=tp,
            fetched=self.fetched,
            measurements=self.measurements,
            events=events,
            staging=staging,
            workdir=self.publisher.workdir,
            upload=upload,
        )
        outcome = Outcome()
        try:
            self.stages(job, planned, peaks, outcome)
        except JobCancelled:
            outcome.status, outcome.error = "cancelled", events.cancel.reason or "the job was stopped"
            raise
        except QuantizerError as exc:
            self.fail(outcome, events.scrub(str(exc)))
        except Exception as exc:  # an unexpected failure still ends this type cleanly
            self.fail(outcome, events.scrub(f"unexpected error: {type(exc).__name__}: {exc}"))
            if self.debug:  # the caller prints the traceback (scrubbed)
                raise
        finally:
            if upload is not None and outcome.status != "ok":
                upload.abandon()  # nothing was committed; a repo this job created goes again
            shutil.rmtree(staging, ignore_errors=True)
            # built once, from the plan and what the stages gave, with the time and memory of all of them
            published = outcome.published
            result = replace(
                self.measured(planned, outcome.stages, peaks),
                status=outcome.status,
                error=outcome.error,
                url=published.url if published else None,
                output_dir=published.output_dir if published else None,
            )
            tracker.finish(result)
        return result

    def stages(self, job: TypeJob, planned: RecipeResult, peaks: Peaks, outcome: Outcome) -> None:
        """quantize → verify (and the keep and serving checks) → publish, recording each stage's result."""
        outcome.stages = replace(outcome.stages, quantized=quantize(job))
        outcome.stages = replace(outcome.stages, verified=verify(job, outcome.stages.quantized))
        refused = check_kept(job, outcome.stages.quantized, outcome.stages.verified)
        outcome.stages = replace(outcome.stages, refused_because=refused)
        outcome.stages = replace(outcome.stages, vllm=serving_check(job, outcome.stages.quantized))
        described = self.measured(planned, outcome.stages, peaks)  # what the card describes
        outcome.published = self.publisher.publish(job.staging, job.type.recipe, described, job.upload)
        outcome.status = "ok"

    def measured(self, planned: RecipeResult, stages: Stages, peaks: Peaks) -> RecipeResult:
        sizes = (peaks.rss.peak_bytes(), peaks.gpu.peak_bytes())
        return measured_result(planned, stages, self.events.seconds_for(self.type.name), sizes)

    def fail(self, outcome: Outcome, message: str) -> None:
        outcome.status, outcome.error = "failed", message
        self.events.emit(Event("error", message, quant_type=self.type.name))


@dataclass
class Peaks:
    """The type's peak memory, measured from its start."""

    rss: PeakRSS
    gpu: PeakGPU

    def __post_init__(self) -> None:
        self.rss.reset()
        self.gpu.reset()


@dataclass
class Outcome:
    """How far a type got: filled in as its stages finish."""

    stages: Stages = field(default_factory=Stages)
    published: Published | None = None
    status: str = "failed"
    error: str | None = None
