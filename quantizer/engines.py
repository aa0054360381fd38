"""The quantize stage: the whole-model engine and the streaming engine behind one interface.

Each engine writes one type's output into its staging folder and returns a frozen `Quantized`. The whole-model
engine loads the model (`whole_model.py`); the streaming engine reads it shard by shard (`streaming.py`) and, as
each output shard is final, reads its header for the serving check, feeds the layer-by-layer evaluator and, when
the output is uploaded as it goes, sends the shard to the Hub and deletes it here.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

from . import int4, serving
from .errors import QuantizationError, QuantizerError
from .events import EventStream
from .experts import covering
from .hardware import available_memory_bytes, folder_bytes
from .hub import Upload
from .int4 import Int4Choice, mixed
from .int4.mixed import MixedPlan
from .layers import LayerCount, planned_linear_layers
from .layerwise import LayerwiseEvaluator, LayerwiseFigures
from .measurements import Measurements
from .plan import STREAMING, WHOLE, JobPlan, TypePlan
from .report import human_bytes
from .safetensors_io import weights_bytes
from .shard_sensitivity import ShardSensitivity
from .source import Fetched, copy_side_files
from .streaming import ShardPlan, stream_quantize
from .whole_model import quantize_and_save


@dataclass(frozen=True, kw_only=True)
class Quantized:
    """What the quantize stage wrote and measured on the way."""

    counts: LayerCount
    notes: tuple[str, ...]  # what quantizing used and checked: calibration, layers left alone, the packer's checks
    output_bytes: int  # the output's weights, the shards uploaded on the way included
    peak_disk_bytes: int | None = None  # streamed: the job's folders at their fullest
    shard_headers: tuple[dict[str, str], ...] = ()  # streamed: each shard's header, read before it could go
    layer_errors: dict[str, float] = field(default_factory=dict)  # streamed: sampled layers' output error
    layerwise: LayerwiseFigures | None = None  # streamed: both models run one decoder layer at a time
    layerwise_missing: str | None = None  # why the layer-by-layer evaluator stopped, if it did
    mixed: MixedPlan | None = None  # mixed precision: which layers stayed int8, and every layer's sensitivity


@dataclass(frozen=True, kw_only=True)
class TypeJob:
    """One type's work, as the stages see it."""

    plan: JobPlan
    type: TypePlan
    fetched: Fetched
    measurements: Measurements
    events: EventStream
    staging: Path
    workdir: Path  # the job's folder (its size counts in a streamed job's disk peak)
    upload: Upload | None = None  # open while streamed shards are uploaded as they are written

    def int4_choice(self) -> Int4Choice | None:
        """The planned int4 choice with the calibration tokens, once they are measured."""
        choice = self.type.int4
        if choice is None or not choice.calibrated:
            return choice
        return replace(choice, calibration=self.measurements.calibration)


class Engine(Protocol):
    def quantize(self, job: TypeJob) -> Quantized: ...


def planned_notes(counts: LayerCount, choice: Int4Choice | None) -> tuple[str, ...]:
    calibrated = tuple(choice.notes()) if choice else ()
    skipped = (f"left in the source dtype: {', '.join(counts.skipped)}",) if counts.skipped else ()
    return (*calibrated, *skipped, *counts.notes)


class WholeModelEngine:
    """Loads the model (transformers' TorchAoConfig, or int4 values chosen here) and saves it."""

    def quantize(self, job: TypeJob) -> Quantized:
        plan, tp = job.plan, job.type
        choice = job.int4_choice()
        saved = quantize_and_save(
            job.fetched.folder,
            job.staging,
            covering(tp.config, plan.info.config) if tp.quantizes_experts else tp.config,
            plan.hardware,
            job.events,
            tp.name,
            choice,
            experts_forward=tp.recipe.experts_forward if tp.quantizes_experts else None,
        )
        return Quantized(
            counts=saved.counts,
            notes=planned_notes(saved.counts, choice),
            output_bytes=weights_bytes(job.staging),
            mixed=saved.mixed,
        )


@dataclass
class ShardSink:
    """What happens to each finished output shard of a streamed type: header read, layer-by-layer evaluation,
    disk peak, and (uploading as it goes) sent to the Hub and deleted here."""

    job: TypeJob
    evaluator: LayerwiseEvaluator | None
    headers: list[dict[str, str]] = field(default_factory=list)
    uploaded_bytes: int = 0
    peak_disk_bytes: int = 0

    def __call__(self, source_file: Path, output_file: Path) -> None:
        job = self.job
        self.headers.append(serving.shard_header(output_file))
        if self.evaluator is not None:
            self.evaluator.feed(source_file, output_file)
        folders = [job.workdir, *([job.staging] if not job.staging.is_relative_to(job.workdir) else [])]
        self.peak_disk_bytes = max(self.peak_disk_bytes, sum(folder_bytes(folder) for folder in folders))
        if job.upload is not None:
            size = output_file.stat().st_size
            if job.upload.send(output_file, output_file.name):
                output_file.unlink()
                self.uploaded_bytes += size
                job.events.log(f"uploaded {output_file.name} ({human_bytes(size)})", quant_type=job.type.name)


def layerwise_memory_budget() -> int:
    """How much weight the layer-by-layer evaluator may hold waiting for a layer's last tensor: a quarter of
    what is free, so the streaming engine keeps its two shards."""
    return available_memory_bytes() // 4


class StreamingEngine:
    """Shard by shard, tensor by tensor; int4 values chosen here go through the choice's per-tensor path."""

    def quantize(self, job: TypeJob) -> Quantized:
        plan, tp, events = job.plan, job.type, job.events
        choice = job.int4_choice()
        custom = int4.made_here(choice, plan.hardware.device)
        feeds = tp.verification.feeds_layerwise
        evaluator = (
            LayerwiseEvaluator(plan.info.config, job.measurements.data, layerwise_memory_budget()) if feeds else None
        )
        sink = ShardSink(job, evaluator)
        with events.stage("quantize", "quantizing shard by shard (streaming)", quant_type=tp.name):
            mixed_plan = streamed_mixed_plan(job, custom) if custom and custom.mixed_bits is not None else None
            config = mixed.declared_config(mixed_plan, tp.config) if mixed_plan else tp.config
            try:
                streamed = stream_quantize(
                    job.fetched.folder,
                    job.staging,
                    plan.info.config,
                    config,
                    events,
                    tp.name,
                    quantize=custom.tensor_quantizer(mixed_plan.kept if mixed_plan else ()) if custom else None,
                    shard_path=job.fetched.shard,
                    release=job.fetched.release,
                    written=sink,
                    quantize_experts=tp.quantizes_experts,
                    experts_forward=tp.recipe.experts_forward,
                )
            except QuantizerError:
                raise
            except Exception as exc:
                raise QuantizationError(f"torchao could not quantize the model with {tp.name}: {exc}") from exc
            copy_side_files(job.fetched.folder, job.staging)
        return Quantized(
            counts=streamed.counts,
            notes=(*planned_notes(streamed.counts, choice), *([mixed_plan.summary()] if mixed_plan else [])),
            mixed=mixed_plan,
            output_bytes=weights_bytes(job.staging) + sink.uploaded_bytes,
            peak_disk_bytes=sink.peak_disk_bytes,
            shard_headers=tuple(sink.headers),
            layer_errors=streamed.layer_errors,
            layerwise=evaluator.result() if evaluator else None,
            layerwise_missing=evaluator.stopped if evaluator else None,
        )


def streamed_mixed_plan(job: TypeJob, choice: Int4Choice) -> MixedPlan:
    """Mixed precision's plan for a streamed model: its calibration pass reads the source's shards once before they
    are quantized (a Hub source's shards are downloaded for it, and again for quantizing)."""
    info, events = job.plan.info, job.events
    layers = planned_linear_layers(info.config)
    measured = ShardSensitivity(info.config, [layer.name for layer in layers], choice.calibration, choice.group_size)
    events.log("mixed precision: measuring each layer's sensitivity, shard by shard", quant_type=job.type.name)
    shards = ShardPlan.of(job.fetched.folder).shards
    for number, shard in enumerate(shards, 1):
        events.checkpoint()
        measured.feed(job.fetched.shard(shard))
        job.fetched.release(shard)
        events.progress("sensitivity", number, len(shards), quant_type=job.type.name)
    shapes = {layer.name: (layer.out_features, layer.in_features) for layer in layers}
    return mixed.choose(measured.result(), shapes, choice.mixed_bits, choice.group_size)


ENGINES: dict[str, Engine] = {WHOLE: WholeModelEngine(), STREAMING: StreamingEngine()}


def quantize(job: TypeJob) -> Quantized:
    """The quantize stage: the type's planned engine writes its output into `job.staging`."""
    return ENGINES[job.type.engine].quantize(job)
