"""What preflight decides, frozen: one `TypePlan` per quantization type inside the job's `JobPlan`.

A type's plan is everything the card, the report and the stages need to know before any weight is touched: the final
torchao config, the int4 choice, the engine, how the output will be verified and why, where it goes, and the notes
that belong to that type. `plan_type` builds one from plain values, so a test can plan any type on any hardware.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torchao.core.config import AOBaseConfig

from . import compute, int4
from .hardware import Hardware
from .hub import Identity
from .hub_texts import JobTexts
from .int4 import Int4Choice, MethodChoice
from .layers import WeightShare
from .recipes import Recipe
from .source import Source, SourceInfo

WHOLE, STREAMING = "whole", "streaming"  # the engines (`engines.ENGINES`)
RELOAD = "reload"  # stock transformers reloads the output; compared with the source's figures
RELOAD_AND_SAMPLED = "reload and sampled layers"  # streamed, then reloaded whole (the source was measured whole)
STREAMED = "streamed"  # sampled layers' error, both models layer by layer when memory allows, a reload when it fits


@dataclass(frozen=True, kw_only=True)
class Verification:
    """How a type's output is checked, and why that way."""

    mode: str  # RELOAD, RELOAD_AND_SAMPLED or STREAMED
    reason: str
    layerwise: bool = False  # STREAMED: both models run one decoder layer at a time, fed the shards as written
    layerwise_missing: str | None = None  # STREAMED without it: why not

    @property
    def feeds_layerwise(self) -> bool:
        return self.mode == STREAMED and self.layerwise


@dataclass(frozen=True, kw_only=True)
class Output:
    """Where a type's output goes."""

    target: str  # the repo id when pushing, else the folder's name
    push: bool
    local_folder: Path | None  # kept on this machine (save-only, or --output-dir with a push)
    upload_as_it_goes: bool = False  # streamed shards go to the Hub as they are written, and leave the disk
    private: bool = False


@dataclass(frozen=True, kw_only=True)
class TypePlan:
    recipe: Recipe
    config: AOBaseConfig  # what config.json declares
    format: str  # what is stored and where it loads (`Recipe.format_on`)
    int4: Int4Choice | None  # int4 types only; its calibration tokens are added once they are measured
    int4_estimated_seconds: float | None  # a calibrated method's time, estimated on this machine
    group_size: int | None  # int4 types only
    engine: str  # WHOLE or STREAMING
    quantizes_experts: bool  # a mixture of experts whose 3-D expert weights this type quantizes
    verification: Verification
    output: Output
    share: WeightShare | None  # the planned share of the Linear-like weights
    notes: tuple[str, ...]  # what the card and the report say about this type, as planned
    warnings: tuple[
        str, ...
    ] = ()  # of the notes, those the type warns about when it starts (preflight logged the rest)

    @property
    def name(self) -> str:
        return self.recipe.name


@dataclass(frozen=True, kw_only=True)
class JobPlan:
    """What preflight decided for the whole job: nothing here has touched weights or written outside the job folder."""

    hardware: Hardware
    source: Source
    info: SourceInfo
    identity: Identity | None
    types: tuple[TypePlan, ...]
    texts: JobTexts  # what the job is evaluated and calibrated on
    streaming: bool  # the source is read shard by shard (fetched without its weights when it is on the Hub)
    measures_source: bool  # the source is loaded whole once for its reference figures
    private: bool
    allow_partial: bool
    speed_only: bool = False  # the quality floors reported, not enforced (save-only timing runs on random weights)
    compute: str  # the dtype forward passes run in, and why (`compute.reason`)
    upcast: float  # the source's bytes, times this, once upcast for computing

    @property
    def upcast_output(self) -> float:
        """How many times an output's bytes a reloaded output takes once upcast (quantized weights dequantized:
        up to float32 bytes per int4 value stored in a byte)."""
        return 1.0 if self.upcast == 1.0 else 4.0


@dataclass(frozen=True, kw_only=True)
class Int4Plan:
    """The job's int4 decision, shared by its int4 types."""

    choice: MethodChoice  # the method, why, and a calibrated method's estimated time (`int4.choose_method`)
    group_size: int
    group_note: str | None = None
    calibration_name: str | None = None
    mixed_bits: float | None = None  # mixed precision's budget (`int4.mixed`), bits per Linear weight

    @property
    def calibrated(self) -> bool:
        """The job needs calibration tokens: a calibrated method, or mixed precision's sensitivity pass."""
        method = self.choice.method
        return bool(method and method.calibrated) or self.mixed_bits is not None


def plan_type(
    recipe: Recipe,
    *,
    hardware: Hardware,
    int4_plan: Int4Plan,
    engine: str,
    verification: Verification,
    output: Output,
    job_notes: tuple[str, ...] = (),
    share: WeightShare | None = None,
    has_experts: bool = False,
) -> TypePlan:
    """One type's plan from the job's decisions: its config, int4 choice and the notes that belong to it."""
    storage = recipe.int4_format(hardware)
    notes = list(job_notes)
    choice = None
    config = recipe.config(hardware, int4_plan.group_size)
    if storage is not None:
        planned = int4_plan.choice.method
        method = planned if planned and storage.takes_calibrated(hardware.device) else int4.RTN
        choice = Int4Choice(
            method=method,
            format=storage,
            group_size=int4_plan.group_size,
            dynamic_activations=recipe.dynamic_activations,
            calibration_name=int4_plan.calibration_name,
            mixed_bits=int4_plan.mixed_bits if method is planned else None,
        )
        config = choice.config(config)
        notes += [int4_plan.group_note] if int4_plan.group_note else []
        notes += [int4_plan.choice.reason] if int4_plan.choice.reason and method is planned else []
    kernel_note = compute.int8_matmul_note(hardware.device) if recipe.int8_matmul else None
    return TypePlan(
        recipe=recipe,
        config=config,
        format=recipe.format_on(hardware),
        int4=choice,
        int4_estimated_seconds=(
            round(int4_plan.choice.estimated_seconds, 1)
            if choice and choice.method.calibrated and int4_plan.choice.estimated_seconds
            else None
        ),
        group_size=int4_plan.group_size if choice else None,
        engine=engine,
        quantizes_experts=has_experts and recipe.experts_reason(hardware) is None,
        verification=verification,
        output=output,
        share=share,
        notes=(*notes, *([kernel_note] if kernel_note else [])),
        warnings=(kernel_note,) if kernel_note else (),
    )
