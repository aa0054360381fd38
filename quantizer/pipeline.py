"""The one flow that both the CLI and the Space call: preflight, fetch, quantize, verify, save or push.

`run(spec, events)` never prints and never exits; it returns a `Report` with one result per
quantization type and emits events as it goes. Bad input raises an `InputError` before any work;
a recipe that fails is recorded as failed and the next one still runs.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from . import recipes as recipe_registry
from .engine import choose_group_size, planned_linear_layers, quantize_and_save
from .errors import InputError, OutputExistsError, QuantizerError
from .events import Event, EventStream
from .hardware import Hardware, PeakRSS, detect
from .naming import split_repo_id, target_for
from .recipes import DEFAULT_GROUP_SIZE, Recipe
from .report import RecipeResult, Report, config_repr
from .source import SourceInfo, open_source
from .verify import (
    DEFAULT_EVAL_TOKENS,
    EvalData,
    Figures,
    build_eval_data,
    check_sane,
    default_eval_text,
    load_tokenizer,
    reference_figures,
    verify_output,
)


@dataclass
class JobSpec:
    """Everything a job needs to know; the CLI's flags and the UI's form both map onto this."""

    source: str
    target: str | None = None
    quant_types: list[str] = field(default_factory=lambda: ["int8_weight_only"])
    group_size: int | None = None  # None: the default, adjusted automatically to fit the model
    device: str = "auto"
    save_only: bool = False
    output_dir: Path = Path("out")
    overwrite: bool = False
    token: str | None = None
    private: bool = False
    eval_text: Path | None = None
    eval_tokens: int = DEFAULT_EVAL_TOKENS
    debug: bool = False  # re-raise unexpected errors instead of recording them


@dataclass
class Plan:
    """What preflight decided: nothing here has touched weights or written a file."""

    hardware: Hardware
    info: SourceInfo
    recipes: list[Recipe]
    targets: dict[str, str]  # quant type -> target name
    group_size: int
    notes: list[str]


def preflight(spec: JobSpec, events: EventStream) -> Plan:
    """Every check that can fail on bad input, before anything is downloaded or written."""
    hardware = detect(spec.device)
    recipes = recipe_registry.resolve(spec.quant_types)
    recipe_registry.check_supported(recipes, hardware)
    requested = spec.group_size or DEFAULT_GROUP_SIZE
    recipe_registry.check_group_size_value(requested)
    if spec.eval_tokens < 256:
        raise InputError("--eval-tokens must be at least 256 so perplexity means something.")
    if spec.eval_text and not Path(spec.eval_text).is_file():
        raise InputError(f"evaluation text '{spec.eval_text}' is not a file: give a UTF-8 text file.")
    if not spec.save_only:
        raise InputError(
            "pushing to the Hub is not available in this build: add --save-only to keep the output in --output-dir."
        )
    info = open_source(spec.source).inspect()
    several = len(recipes) > 1
    targets = {r.name: target_for(spec.target, info.name, r, several) for r in recipes}
    notes: list[str] = []
    group_size = requested
    if any(r.uses_group_size for r in recipes):
        layers = planned_linear_layers(info.config)
        group_size, note = choose_group_size(layers, requested, explicit=spec.group_size is not None)
        if note:
            notes.append(note)
            events.warn(note)
    for name in targets.values():
        out = output_folder(spec, name)
        if out.exists() and not spec.overwrite:
            raise OutputExistsError(
                f"output folder '{out}' already exists: pass --overwrite to replace it, "
                "or choose another TARGET or --output-dir."
            )
    return Plan(hardware, info, recipes, targets, group_size, notes)


def output_folder(spec: JobSpec, target: str) -> Path:
    return Path(spec.output_dir) / split_repo_id(target)[1]


def weights_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def run(spec: JobSpec, events: EventStream | None = None) -> Report:
    """Run a whole job. Raises InputError on bad input (nothing written); otherwise returns the report."""
    events = events or EventStream()
    events.add_secret(spec.token)
    with events.stage("preflight", f"checking {spec.source}"):
        plan = preflight(spec, events)
    report = Report(
        source=plan.info.ref, revision=plan.info.revision, device=plan.hardware.device, hardware=plan.hardware.name
    )
    workdir = Path(tempfile.mkdtemp(prefix="quantizer-job-"))
    try:
        with events.stage("fetch", "getting the model files"):
            source_dir = open_source(spec.source).fetch(workdir, events)
        text = Path(spec.eval_text).read_text(encoding="utf-8") if spec.eval_text else default_eval_text()
        data = build_eval_data(load_tokenizer(source_dir), text, spec.eval_tokens)
        reference = reference_figures(source_dir, plan.hardware, data, events)
        report.ppl_source, report.sample_source = reference.ppl, reference.sample
        report.seconds = events.seconds_for(None)
        for recipe in plan.recipes:
            result = run_recipe(spec, plan, recipe, source_dir, data, reference, events)
            report.results.append(result)
            events.emit(
                Event("result", f"{recipe.name}: {result.status}", quant_type=recipe.name, data={"result": result})
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return report


def run_recipe(
    spec: JobSpec, plan: Plan, recipe: Recipe, source_dir: Path, data: EvalData, reference: Figures, events: EventStream
) -> RecipeResult:
    """Quantize, verify and place one output. Failures are recorded in the result, never half-kept."""
    config = recipe.config(plan.hardware, plan.group_size)
    target = plan.targets[recipe.name]
    final = output_folder(spec, target)
    result = RecipeResult(
        quant_type=recipe.name,
        suffix=recipe.suffix,
        torchao_config=config_repr(config),
        format=recipe.format_on(plan.hardware),
        device=plan.hardware.device,
        group_size=plan.group_size if recipe.uses_group_size else None,
        target_repo=target,
        source_bytes=plan.info.weight_bytes,
        notes=list(plan.notes) if recipe.uses_group_size else [],
    )
    events.log(f"{recipe.name}: {result.format}", quant_type=recipe.name)
    peak = PeakRSS()
    peak.reset()
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
    try:
        counts = quantize_and_save(source_dir, staging, config, plan.hardware, events, recipe.name)
        if counts.skipped:
            result.notes.append(f"left in the source dtype: {', '.join(counts.skipped)}")
        result.verify = verify_output(staging, plan.hardware, data, reference, events, recipe.name)
        check_sane(result.verify, recipe.name)
        result.output_bytes = weights_bytes(staging)
        result.size_ratio = result.output_bytes / result.source_bytes if result.source_bytes else None
        replace_folder(staging, final)
        result.output_dir = str(final)
        result.status = "ok"
    except QuantizerError as exc:
        result.status, result.error = "failed", events.scrub(str(exc))
        events.emit(Event("error", result.error, quant_type=recipe.name))
    except Exception as exc:  # an unexpected failure still ends this recipe cleanly
        result.status, result.error = "failed", events.scrub(f"unexpected error: {type(exc).__name__}: {exc}")
        events.emit(Event("error", result.error, quant_type=recipe.name))
        if spec.debug:
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        result.seconds = events.seconds_for(recipe.name)
        result.peak_rss_bytes = peak.peak_bytes()
    return result


def replace_folder(staging: Path, final: Path) -> None:
    """Move a finished output into place; an existing folder (--overwrite) goes only once the new one is ready."""
    if final.exists():
        old = final.with_name(f".{final.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
        staging.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(final)
