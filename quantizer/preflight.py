"""Every check that can fail on bad input, before anything is downloaded, created or written; the result is a frozen
`JobPlan` with one `TypePlan` per type (`plan.py`)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from . import compute, coverage, int4, resources
from . import recipes as recipe_registry
from .bounds import check_config_fits_files
from .errors import AuthError, InputError, OutputExistsError, SourceError
from .events import EventStream
from .hardware import Hardware, available_memory_bytes, detect
from .hub import Hub, Identity
from .hub_texts import job_texts
from .int4 import mixed
from .layers import planned_linear_layers
from .naming import split_repo_id, target_for
from .plan import (
    RELOAD,
    RELOAD_AND_SAMPLED,
    STREAMED,
    STREAMING,
    WHOLE,
    Int4Plan,
    JobPlan,
    Output,
    Verification,
    plan_type,
)
from .recipes import DEFAULT_GROUP_SIZE, Recipe, choose_group_size
from .report import human_bytes
from .source import SourceInfo, open_source
from .spec import JobSpec


def preflight(spec: JobSpec, events: EventStream, hub: Hub, workdir: Path) -> JobPlan:
    """Check the request, the token, the source, the targets and the machine's room, and decide each type's plan."""
    hardware = detect(spec.device)
    recipes = recipe_registry.resolve(spec.quant_types)
    recipe_registry.check_supported(recipes, hardware)
    check_options(spec)
    identity = check_identity(spec, hub)
    source = open_source(spec.source, hub, allow_local=not spec.public)
    info = source.inspect()
    check_source_size(spec, info)
    covered = coverage.planned(info, recipes, hardware, spec.allow_partial, events)
    private, job_notes = privacy(spec, info, events)
    targets = push_targets(spec, identity, info, recipes) if spec.push else local_targets(spec, info, recipes)
    upcast = compute.upcast_factor(info.config, hardware.device)
    compute_note = compute.reason(compute.stored_dtype(info.config), hardware.device)
    events.log(compute_note)
    source_fits = resources.fits_in_memory(info.weight_bytes, upcast)
    streaming = spec.streaming if spec.streaming is not None else not source_fits
    if streaming:
        check_streaming(info, recipes, hardware, covered.has_experts, source_fits, events)
    int4_plan = plan_int4(spec, recipes, hardware, info, streaming, events)
    check_targets_free(spec, hub, targets)
    texts = job_texts(spec, workdir, calibrated=int4_plan.calibrated)
    int4_plan = replace(int4_plan, calibration_name=texts.calibration_name)
    upload_as_it_goes = streaming and spec.push and spec.local_dir is None
    measures_source = source_fits and (not streaming or info.repo_id is None)  # a local source's weights are here
    verification, layerwise_bytes = plan_verification(spec, info, streaming, measures_source, upload_as_it_goes)
    if verification.layerwise_missing:
        job_notes.append(verification.reason)
        events.warn(verification.reason)
    check_room(spec, info, recipes, workdir, streaming, upload_as_it_goes, layerwise_bytes, upcast, events)
    types = tuple(
        plan_type(
            recipe,
            hardware=hardware,
            int4_plan=int4_plan,
            engine=STREAMING if streaming else WHOLE,
            verification=verification,
            output=output_of(spec, targets[recipe.name], upload_as_it_goes, private),
            job_notes=(*job_notes, *option_notes(spec)),
            share=covered.shares.get(recipe.name),
            has_experts=covered.has_experts,
        )
        for recipe in recipes
    )
    return JobPlan(
        hardware=hardware,
        source=source,
        info=info,
        identity=identity,
        types=types,
        texts=texts,
        streaming=streaming,
        measures_source=measures_source,
        private=private,
        allow_partial=spec.allow_partial,
        speed_only=spec.speed_only,
        compute=compute_note,
        upcast=upcast,
    )


def privacy(spec: JobSpec, info: SourceInfo, events: EventStream) -> tuple[bool, list[str]]:
    """Whether the targets are private, and the note that says why when the job decided it."""
    if spec.private is not None:
        return spec.private, []
    private = info.private or info.gated
    if not (spec.push and private):
        return private, []
    note = "the target repo is private because the source is " + ("private" if info.private else "gated")
    events.log(note)
    return private, [note]


def output_of(spec: JobSpec, target: str, upload_as_it_goes: bool, private: bool) -> Output:
    return Output(
        target=target,
        push=spec.push,
        local_folder=spec.local_folder(target) if spec.local_dir is not None else None,
        upload_as_it_goes=upload_as_it_goes,
        private=private,
    )


SPEED_ONLY_NOTE = "speed-only run: the quality checks were measured but not enforced; for timing, not for use"


def option_notes(spec: JobSpec) -> tuple[str, ...]:
    """What the job's options make every output's card say."""
    return (SPEED_ONLY_NOTE,) if spec.speed_only else ()


def check_options(spec: JobSpec) -> None:
    recipe_registry.check_group_size_value(spec.group_size or DEFAULT_GROUP_SIZE)
    if spec.speed_only and (spec.push or spec.public):
        raise InputError(
            "--speed-only is for timing runs on random weights: use it with --save-only (an output that failed "
            "its quality checks is never pushed)."
        )
    if (spec.eval_dataset and spec.eval_text) or (spec.calibration_dataset and spec.calibration_text):
        raise InputError("give a text file or a dataset for evaluation and for calibration, not both.")
    if spec.public and (spec.eval_dataset or spec.calibration_dataset):
        raise InputError(
            "this shared Space measures and calibrates on its own texts: use the command line for datasets."
        )
    if spec.int4_method is not None:
        int4.get_method(spec.int4_method)
    if spec.calibration_text and not Path(spec.calibration_text).is_file():
        raise InputError(f"calibration text '{spec.calibration_text}' is not a file: give a UTF-8 text file.")
    if spec.calibration_tokens < 256:
        raise InputError("--calibration-tokens must be at least 256.")
    if spec.eval_tokens < 256:
        raise InputError("--eval-tokens must be at least 256 so perplexity means something.")
    if spec.eval_text and not Path(spec.eval_text).is_file():
        raise InputError(f"evaluation text '{spec.eval_text}' is not a file: give a UTF-8 text file.")


def check_identity(spec: JobSpec, hub: Hub) -> Identity | None:
    """Who the token is: a bad token is reported before anything else, and a shared Space knows every visitor."""
    if spec.public and not spec.token:
        raise AuthError("sign in with Hugging Face first: jobs on this shared Space run for signed-in visitors only.")
    return hub.whoami() if spec.push or spec.public else None


def check_source_size(spec: JobSpec, info: SourceInfo) -> None:
    if spec.max_source_bytes and info.weight_bytes > spec.max_source_bytes:
        raise SourceError(
            f"{info.ref} has {human_bytes(info.weight_bytes)} of weights; this Space takes sources up to "
            f"{human_bytes(spec.max_source_bytes)}: duplicate the Space onto larger hardware, or use the CLI."
        )
    check_config_fits_files(info.config, info.weight_bytes, info.ref)  # before the model is built, even on meta


def push_targets(spec: JobSpec, identity: Identity, info: SourceInfo, recipes: list[Recipe]) -> dict[str, str]:
    """Targets as full repo ids in a namespace the token may write to."""
    if not identity.can_write:
        raise AuthError(f"the token of {identity.name} is read-only: pushing needs a token with write access.")
    namespace = split_repo_id(spec.target)[0] if spec.target else None
    namespace = namespace or spec.namespace or identity.name
    if namespace not in identity.namespaces:
        raise AuthError(
            f"{identity.name} cannot write to '{namespace}': choose your own namespace or one of your "
            f"organisations ({', '.join(identity.namespaces)})."
        )
    several = len(recipes) > 1
    return {r.name: f"{namespace}/{target_for(spec.target, info.name, r, several).split('/')[-1]}" for r in recipes}


def local_targets(spec: JobSpec, info: SourceInfo, recipes: list[Recipe]) -> dict[str, str]:
    return {r.name: target_for(spec.target, info.name, r, len(recipes) > 1) for r in recipes}


def check_streaming(
    info: SourceInfo,
    recipes: list[Recipe],
    hardware: Hardware,
    has_experts: bool,
    source_fits: bool,
    events: EventStream,
) -> None:
    if not info.safetensors:
        raise InputError(
            f"{info.ref} stores its weights as PyTorch .bin files; the streaming engine (needed for a "
            "model this large) reads safetensors only: convert the checkpoint to safetensors first."
        )
    coverage.check_streaming(info, recipes, hardware, has_experts)
    events.log(
        f"streaming engine: one shard at a time ({info.weight_bytes / 1e9:.2f} GB of weights"
        f"{'' if source_fits else ', more than this machine can load at once'})"
    )


def plan_int4(
    spec: JobSpec, recipes: list[Recipe], hardware: Hardware, info: SourceInfo, streaming: bool, events: EventStream
) -> Int4Plan:
    """The group size every int4 type fits, and the int4 method (GPTQ's time estimated on this machine)."""
    group_size, group_note = spec.group_size or DEFAULT_GROUP_SIZE, None
    if any(r.needs_divisible_groups(hardware) for r in recipes):
        layers = planned_linear_layers(info.config)
        group_size, group_note = choose_group_size(layers, group_size, explicit=spec.group_size is not None)
        if group_note:
            events.warn(group_note)
    formats = {r.name: f for r in recipes if (f := r.int4_format(hardware))}
    # within a deadline, GPTQ may take half of it (the rest: loading, verifying, pushing)
    budget = min(int4.budget_seconds(), spec.deadline_seconds / 2) if spec.deadline_seconds else None
    choice = int4.choose_method(
        spec.int4_method,
        formats,
        info.config,
        streaming=streaming,
        cuda=hardware.is_cuda,
        calibration_tokens=spec.calibration_tokens,
        budget=budget,
    )
    if choice.reason:
        events.log(choice.reason)
    if spec.int4_mixed is not None:
        dynamic = [r.name for r in recipes if r.name in formats and r.dynamic_activations]
        mixed.check_job(
            spec.int4_mixed,
            group_size=group_size,
            formats=formats,
            dynamic_types=dynamic,
            method=choice.method,
            device=hardware.device,
        )
    return Int4Plan(
        choice=choice,
        group_size=group_size,
        group_note=group_note,
        mixed_bits=spec.int4_mixed,
    )


def plan_verification(
    spec: JobSpec, info: SourceInfo, streaming: bool, measures_source: bool, upload_as_it_goes: bool
) -> tuple[Verification, int]:
    """How the outputs are checked, and the memory the layer-by-layer check of both models takes (0 without it)."""
    if not streaming:
        return Verification(mode=RELOAD, reason="stock transformers reloads the output whole"), 0
    if measures_source and not upload_as_it_goes:
        reason = "streamed from a source that also fits in memory: reloaded whole, and sampled layers' error"
        return Verification(mode=RELOAD_AND_SAMPLED, reason=reason), 0
    shard = info.largest_weight_file
    layerwise_bytes = resources.layerwise_memory(shard, info.config, spec.eval_tokens)
    if resources.streaming_memory(shard) + layerwise_bytes <= available_memory_bytes():
        reason = "the source is never in memory whole: both models run one decoder layer at a time"
        return Verification(mode=STREAMED, reason=reason, layerwise=True), layerwise_bytes
    missing = (
        f"the layer-by-layer check of both models would need about {layerwise_bytes / 1e9:.2f} GB more "
        "memory than this machine has: verification is the sampled layers' output error"
    )
    unfit = "the layer-by-layer check of both models did not fit in memory"
    return Verification(mode=STREAMED, reason=missing, layerwise_missing=unfit), 0


def check_room(
    spec: JobSpec,
    info: SourceInfo,
    recipes: list[Recipe],
    workdir: Path,
    streaming: bool,
    upload_as_it_goes: bool,
    layerwise_bytes: int,
    upcast: float,
    events: EventStream,
) -> None:
    """Disk and memory for the whole job, estimated and checked before anything is downloaded."""
    needs = resources.estimate(
        info.weight_bytes,
        len(recipes),
        download=info.repo_id is not None,
        keep_outputs=spec.local_dir is not None,
        workdir=workdir,
        output_dir=spec.local_dir,
        streaming_shard=info.largest_weight_file if streaming else None,
        upload_as_it_goes=upload_as_it_goes,
        layerwise_bytes=layerwise_bytes,
        upcast=upcast,
    )
    events.log(
        f"{info.weight_bytes / 1e9:.2f} GB of weights: "
        + resources.describe(needs)
        + ("; shards are uploaded as they are written" if upload_as_it_goes else "")
    )
    resources.check(needs)


def check_targets_free(spec: JobSpec, hub: Hub, targets: dict[str, str]) -> None:
    for target in targets.values():
        if spec.local_dir is not None:
            out = spec.local_folder(target)
            if out.exists() and not spec.overwrite:
                raise OutputExistsError(
                    f"output folder '{out}' already exists: pass --overwrite to replace it, "
                    "or choose another TARGET or --output-dir."
                )
        if spec.push and not spec.overwrite and hub.exists(target):
            raise OutputExistsError(
                f"the target repo {target} already exists: pass --overwrite to replace its "
                "files in one new commit, or choose another target name."
            )
