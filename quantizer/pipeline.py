"""The one flow that both the CLI and the Space call: preflight, fetch, quantize, verify, card, save or push.

`run(spec, events)` never prints and never exits; it returns a `Report` with one result per
quantization type and emits events as it goes. Bad input raises an `InputError` before any work
(nothing downloaded, nothing created); a type that fails is recorded as failed, leaves nothing
behind, and the next type still runs.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from . import card as model_card
from . import int4, int4_packed, resources
from . import recipes as recipe_registry
from .engine import (
    CustomInt4,
    LayerCount,
    choose_group_size,
    copy_side_files,
    planned_linear_layers,
    quantize_and_save,
)
from .errors import InputError, OutputExistsError, QuantizationError, QuantizerError
from .events import Event, EventStream
from .hardware import Hardware, PeakRSS, detect
from .hub import AuthError, Hub, Identity, repo_url
from .naming import split_repo_id, target_for
from .recipes import DEFAULT_GROUP_SIZE, Recipe
from .report import RecipeResult, Report, config_repr
from .source import HubSource, Source, SourceInfo, open_source
from .streaming import stream_quantize
from .tracking import Tracker
from .verify import (
    DEFAULT_EVAL_TOKENS,
    EvalData,
    Figures,
    VerifyResult,
    build_eval_data,
    check_sane,
    default_eval_text,
    load_tokenizer,
    reference_figures,
    verify_output,
    verify_streamed,
)

DEFAULT_OUTPUT_DIR = Path("out")


@dataclass
class JobSpec:
    """Everything a job needs to know; the CLI's flags and the UI's form both map onto this."""

    source: str
    target: str | None = None
    quant_types: list[str] = field(default_factory=lambda: ["int8_weight_only"])
    group_size: int | None = None  # None: the default, adjusted automatically to fit the model
    device: str = "auto"
    save_only: bool = False
    output_dir: Path | None = None  # save-only: default ./out; a push keeps a local copy only when given
    overwrite: bool = False
    token: str | None = None
    private: bool = False
    eval_text: Path | None = None
    eval_tokens: int = DEFAULT_EVAL_TOKENS
    debug: bool = False  # re-raise unexpected errors instead of recording them
    int4_method: str | None = None  # rtn | asym | gptq; None: the best that fits the time budget here
    calibration_text: Path | None = None  # for gptq; default: the half of pydoc topics not used for evaluation
    calibration_tokens: int = int4.DEFAULT_CALIBRATION_TOKENS
    streaming: bool | None = None  # shard-by-shard engine; None: when the model does not fit in memory
    track: bool = True  # record each type as a Trackio run
    trackio_project: str | None = None  # default: $QUANTIZER_TRACKIO_PROJECT or "quantizer"

    @property
    def push(self) -> bool:
        return not self.save_only

    @property
    def local_dir(self) -> Path | None:
        """Where outputs are kept on this machine, if anywhere."""
        return Path(self.output_dir) if self.output_dir else (None if self.push else DEFAULT_OUTPUT_DIR)


@dataclass
class Plan:
    """What preflight decided: nothing here has touched weights or written anything outside the job folder."""

    hardware: Hardware
    source: Source
    info: SourceInfo
    recipes: list[Recipe]
    targets: dict[str, str]  # quant type -> target (repo id when pushing, folder name when saving)
    group_size: int
    notes: list[str]
    identity: Identity | None = None
    int4_method: str | None = None  # for the types that store Intx int4 on this hardware
    streaming: bool = False
    source_fits: bool = True  # the source can be loaded as a whole (for the reference pass)

    def custom_int4(self, recipe: Recipe) -> bool:
        return self.int4_method in ("asym", "gptq") and self.hardware.device in recipe.intx_on


def gptq_budget_seconds() -> float:
    return float(os.environ.get("QUANTIZER_GPTQ_BUDGET", int4.DEFAULT_GPTQ_BUDGET_SECONDS))


def choose_int4_method(
    spec: JobSpec, recipes: list[Recipe], hardware: Hardware, config: dict, streaming: bool = False
) -> tuple[str | None, str]:
    """The int4 method and a sentence saying why; GPTQ by default when it fits the time budget here."""
    intx = [r for r in recipes if hardware.device in r.intx_on]
    tile_packed = [r for r in recipes if r.uses_group_size and hardware.device not in r.intx_on]
    if spec.int4_method and spec.int4_method != "rtn" and tile_packed and not intx:
        raise InputError(
            f"--int4-method {spec.int4_method} computes portable Intx int4; on CUDA int4_weight_only "
            "is written tile-packed with torchao's own qparams: use --int4-method rtn, or --device cpu."
        )
    if not intx:
        return None, ""
    if spec.int4_method:
        return spec.int4_method, f"int4 method {spec.int4_method} (as asked)"
    if streaming:
        return "asym", "int4 method asym: GPTQ needs the whole model in memory, and this job streams it"
    minutes = int4.estimated_gptq_seconds_from_config(config) / 60
    budget = gptq_budget_seconds() / 60
    if minutes <= budget:
        return "gptq", f"int4 method gptq, the most accurate (about {minutes:.0f} min on 2 CPU cores)"
    return "asym", (
        f"int4 method asym: GPTQ would take about {minutes:.0f} min (more than {budget:.0f}); "
        "pass --int4-method gptq to use it anyway"
    )


def check_options(spec: JobSpec) -> None:
    recipe_registry.check_group_size_value(spec.group_size or DEFAULT_GROUP_SIZE)
    if spec.int4_method is not None and spec.int4_method not in int4.METHODS:
        raise InputError(f"unknown int4 method '{spec.int4_method}': choose one of {', '.join(int4.METHODS)}.")
    if spec.calibration_text and not Path(spec.calibration_text).is_file():
        raise InputError(f"calibration text '{spec.calibration_text}' is not a file: give a UTF-8 text file.")
    if spec.calibration_tokens < 256:
        raise InputError("--calibration-tokens must be at least 256.")
    if spec.eval_tokens < 256:
        raise InputError("--eval-tokens must be at least 256 so perplexity means something.")
    if spec.eval_text and not Path(spec.eval_text).is_file():
        raise InputError(f"evaluation text '{spec.eval_text}' is not a file: give a UTF-8 text file.")


def push_targets(spec: JobSpec, identity: Identity, info: SourceInfo, recipes: list[Recipe]) -> dict[str, str]:
    """Targets as full repo ids in a namespace the token may write to."""
    if not identity.can_write:
        raise AuthError(f"the token of {identity.name} is read-only: pushing needs a token with write access.")
    namespace = split_repo_id(spec.target)[0] if spec.target else None
    namespace = namespace or identity.name
    if namespace not in identity.namespaces:
        raise AuthError(
            f"{identity.name} cannot write to '{namespace}': choose your own namespace or one of your "
            f"organisations ({', '.join(identity.namespaces)})."
        )
    several = len(recipes) > 1
    return {r.name: f"{namespace}/{target_for(spec.target, info.name, r, several).split('/')[-1]}" for r in recipes}


def preflight(spec: JobSpec, events: EventStream, hub: Hub, workdir: Path) -> Plan:
    """Every check that can fail on bad input, before anything is downloaded, created or written."""
    hardware = detect(spec.device)
    recipes = recipe_registry.resolve(spec.quant_types)
    recipe_registry.check_supported(recipes, hardware)
    check_options(spec)
    identity = hub.whoami() if spec.push else None  # a bad token is reported before anything else
    source = open_source(spec.source, hub)
    info = source.inspect()
    if identity:
        targets = push_targets(spec, identity, info, recipes)
    else:
        targets = {r.name: target_for(spec.target, info.name, r, len(recipes) > 1) for r in recipes}
    notes: list[str] = []
    group_size = spec.group_size or DEFAULT_GROUP_SIZE
    if any(r.needs_divisible_groups(hardware) for r in recipes):
        layers = planned_linear_layers(info.config)
        group_size, note = choose_group_size(layers, group_size, explicit=spec.group_size is not None)
        if note:
            notes.append(note)
            events.warn(note)
    source_fits = resources.fits_in_memory(info.weight_bytes)
    streaming = spec.streaming if spec.streaming is not None else not source_fits
    if streaming:
        check_streamable(spec, info)
        events.log(
            f"streaming engine: one shard at a time ({info.weight_bytes / 1e9:.2f} GB of weights"
            f"{'' if source_fits else ', more than this machine can load at once'})"
        )
    int4_method, why = choose_int4_method(spec, recipes, hardware, info.config, streaming)
    if why:
        notes.append(why)
        events.log(why)
    for target in targets.values():
        if spec.local_dir is not None:
            out = local_folder(spec, target)
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
    resources.check(
        resources.estimate(
            info.weight_bytes,
            len(recipes),
            download=info.repo_id is not None,
            keep_outputs=spec.local_dir is not None,
            workdir=workdir,
            output_dir=spec.local_dir,
            streaming_shard=info.largest_weight_file if streaming else None,
        )
    )
    return Plan(
        hardware, source, info, recipes, targets, group_size, notes, identity, int4_method, streaming, source_fits
    )


def check_streamable(spec: JobSpec, info: SourceInfo) -> None:
    if not info.safetensors:
        raise InputError(
            f"{info.ref} stores its weights as PyTorch .bin files; the streaming engine (needed for a "
            "model this large) reads safetensors only: convert the checkpoint to safetensors first."
        )
    if spec.int4_method == "gptq":
        raise InputError(
            "--int4-method gptq needs the whole model in memory; with the streaming engine use asym (or rtn)."
        )


def local_folder(spec: JobSpec, target: str) -> Path:
    assert spec.local_dir is not None
    return spec.local_dir / split_repo_id(target)[1]


def weights_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def run(spec: JobSpec, events: EventStream | None = None) -> Report:
    """Run a whole job. Raises InputError on bad input (nothing written); otherwise returns the report."""
    events = events or EventStream()
    events.add_secret(spec.token)
    hub = Hub(spec.token, events)
    tracker = Tracker(events, spec.trackio_project, enabled=spec.track)
    events.subscribe(tracker)
    workdir = Path(tempfile.mkdtemp(prefix="quantizer-job-"))
    try:
        with events.stage("preflight", f"checking {spec.source}"):
            plan = preflight(spec, events, hub, workdir)
        report = Report(
            source=plan.info.ref, revision=plan.info.revision, device=plan.hardware.device, hardware=plan.hardware.name
        )
        with events.stage("fetch", "getting the model files"):
            if plan.streaming and isinstance(plan.source, HubSource):
                source_dir = plan.source.fetch_side_files(workdir, events)
            else:
                source_dir = plan.source.fetch(workdir, events)
        text = Path(spec.eval_text).read_text(encoding="utf-8") if spec.eval_text else default_eval_text()
        tokenizer = load_tokenizer(source_dir)
        data = build_eval_data(tokenizer, text, spec.eval_tokens)
        calibration = None
        if plan.int4_method == "gptq":
            calibration_text = (
                Path(spec.calibration_text).read_text(encoding="utf-8")
                if spec.calibration_text
                else int4.default_calibration_text()
            )
            calibration = int4.calibration_ids(tokenizer, calibration_text, spec.calibration_tokens)
        # a streamed Hub source is never on disk as a whole, so it is compared layer by layer only
        whole_source = plan.source_fits and not (plan.streaming and isinstance(plan.source, HubSource))
        reference = reference_figures(source_dir, plan.hardware, data, events) if whole_source else None
        if reference:
            report.ppl_source, report.sample_source = reference.ppl, reference.sample
        report.seconds = events.seconds_for(None)
        for recipe in plan.recipes:
            job = RecipeJob(spec, plan, recipe, source_dir, workdir, hub, events, tracker, calibration)
            result = job.run(data, reference)
            report.results.append(result)
            events.emit(
                Event("result", f"{recipe.name}: {result.status}", quant_type=recipe.name, data={"result": result})
            )
        report.tracking = tracker.where() if tracker.recorded and tracker.enabled else None
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return report


@dataclass
class RecipeJob:
    """One quantization type: quantize, verify, card, then push and/or keep. Never leaves half an output."""

    spec: JobSpec
    plan: Plan
    recipe: Recipe
    source_dir: Path
    workdir: Path
    hub: Hub
    events: EventStream
    tracker: Tracker
    calibration: torch.Tensor | None = None

    def custom_int4(self) -> CustomInt4 | None:
        if self.recipe.packed_on_cpu and not self.plan.hardware.is_cuda:
            return CustomInt4("tile_packed", self.plan.group_size, dynamic_activations=False)
        if not self.plan.custom_int4(self.recipe):
            return None
        return CustomInt4(
            self.plan.int4_method, self.plan.group_size, self.recipe.dynamic_activations, self.calibration
        )

    def int4_method_name(self, custom: CustomInt4 | None) -> str | None:
        """How the int4 values were chosen: rtn/asym/gptq for Intx, tinygemm for the tile-packed format."""
        if not self.recipe.uses_group_size:
            return None
        if self.recipe.tile_packed(self.plan.hardware):
            return "tinygemm"
        return custom.method if custom else "rtn"

    def calibration_note(self) -> str:
        where = (
            Path(self.spec.calibration_text).name
            if self.spec.calibration_text
            else "the second half of Python's pydoc topics (disjoint from the evaluation text)"
        )
        tokens = self.calibration.numel() if self.calibration is not None else 0
        return f"int4 qparams by GPTQ on {tokens} calibration tokens of {where}"

    def run(self, data: EvalData, reference: Figures) -> RecipeResult:
        plan, recipe, events = self.plan, self.recipe, self.events
        custom = self.custom_int4()
        config = (
            int4.declared_config(plan.group_size, recipe.dynamic_activations)
            if custom and custom.method in ("asym", "gptq")  # Intx with our qparams; tile-packed keeps its config
            else recipe.config(plan.hardware, plan.group_size)
        )
        result = RecipeResult(
            quant_type=recipe.name,
            suffix=recipe.suffix,
            torchao_config=config_repr(config),
            format=recipe.format_on(plan.hardware),
            device=plan.hardware.device,
            group_size=plan.group_size if recipe.uses_group_size else None,
            target_repo=plan.targets[recipe.name],
            source_bytes=plan.info.weight_bytes,
            notes=list(plan.notes) if recipe.uses_group_size else [],
            int4_method=self.int4_method_name(custom),
        )
        if custom and custom.method == "gptq":
            result.notes.append(self.calibration_note())
        events.log(f"{recipe.name}: {result.format}", quant_type=recipe.name)
        self.tracker.start(plan.info, result, plan.hardware.name)
        peak = PeakRSS()
        peak.reset()
        staging = self.staging_folder()
        try:
            if plan.streaming:
                counts, result.verify = self.stream(staging, config, custom, data, reference)
            else:
                counts = quantize_and_save(self.source_dir, staging, config, plan.hardware, events, recipe.name, custom)
                result.verify = verify_output(staging, plan.hardware, data, reference, events, recipe.name)
            if counts.skipped:
                result.notes.append(f"left in the source dtype: {', '.join(counts.skipped)}")
            result.notes.extend(counts.notes)
            check_sane(result.verify, recipe.name)
            result.output_bytes = weights_bytes(staging)
            result.size_ratio = result.output_bytes / result.source_bytes if result.source_bytes else None
            result.seconds = events.seconds_for(recipe.name)
            result.peak_rss_bytes = peak.peak_bytes()
            self.write_card(staging, result)
            if self.spec.push:
                self.push(staging, result)
            if self.spec.local_dir is not None:
                final = local_folder(self.spec, result.target_repo)
                replace_folder(staging, final)
                result.output_dir = str(final)
            result.status = "ok"
        except QuantizerError as exc:
            self.fail(result, events.scrub(str(exc)))
        except Exception as exc:  # an unexpected failure still ends this type cleanly
            self.fail(result, events.scrub(f"unexpected error: {type(exc).__name__}: {exc}"))
            if self.spec.debug:
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            result.seconds = events.seconds_for(recipe.name)
            result.peak_rss_bytes = peak.peak_bytes()
            self.tracker.finish(result)
        return result

    def stream(
        self, staging: Path, config, custom: CustomInt4 | None, data: EvalData, reference: Figures | None
    ) -> tuple[LayerCount, VerifyResult]:
        """The shard-by-shard engine, then the verification that fits: a full comparison when the source fits
        in memory, else the sampled layers' errors plus a stock reload of the output."""
        plan, recipe, events = self.plan, self.recipe, self.events
        quantize = None
        if custom and custom.method == "tile_packed":

            def quantize(weight: torch.Tensor) -> torch.Tensor:
                return int4_packed.build(weight, custom.group_size)[0]

        elif custom:  # asym int4 is per tensor, so it streams; GPTQ is refused in preflight

            def quantize(weight: torch.Tensor) -> torch.Tensor:
                quant = int4.quantize_asym(weight, custom.group_size)
                return int4.intx_tensor(quant, custom.group_size, weight.dtype, custom.dynamic_activations)

        shard_path, release = None, None
        if isinstance(plan.source, HubSource):
            shards = self.workdir / "shards"
            source = plan.source

            def shard_path(name: str) -> Path:
                return source.download_shard(name, shards)

            def release(name: str) -> None:
                (shards / name).unlink(missing_ok=True)

        with events.stage("quantize", "quantizing shard by shard (streaming)", quant_type=recipe.name):
            try:
                streamed = stream_quantize(
                    self.source_dir,
                    staging,
                    plan.info.config,
                    config,
                    events,
                    recipe.name,
                    quantize=quantize,
                    shard_path=shard_path,
                    release=release,
                )
            except QuantizerError:
                raise
            except Exception as exc:
                raise QuantizationError(f"torchao could not quantize the model with {recipe.name}: {exc}") from exc
            copy_side_files(self.source_dir, staging)
        if reference is not None:
            full = verify_output(staging, plan.hardware, data, reference, events, recipe.name)
            layers = f"; output error of {len(streamed.layer_errors)} sampled Linear layers"
            return streamed.counts, replace(full, checked=full.checked + layers, layer_errors=streamed.layer_errors)
        output_fits = resources.fits_in_memory(weights_bytes(staging))
        return streamed.counts, verify_streamed(
            staging, plan.hardware, data, events, recipe.name, streamed.layer_errors, output_fits, streamed.counts
        )

    def staging_folder(self) -> Path:
        """A fresh folder beside the final place (so the final move is a rename), or in the job folder."""
        if self.spec.local_dir is None:
            return Path(tempfile.mkdtemp(prefix=f"{self.recipe.suffix}-", dir=self.workdir))
        parent = local_folder(self.spec, self.plan.targets[self.recipe.name]).parent
        parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{self.recipe.suffix}.partial-", dir=parent))

    def write_card(self, folder: Path, result: RecipeResult) -> None:
        with self.events.stage("card", "writing the model card", quant_type=self.recipe.name):
            card = model_card.render(
                self.plan.info,
                self.recipe,
                result,
                made_on_hardware=self.plan.hardware,
                eval_text_name=Path(self.spec.eval_text).name if self.spec.eval_text else "Python's pydoc topics",
                source_dtype=str(
                    self.plan.info.config.get("torch_dtype") or self.plan.info.config.get("dtype") or "the source dtype"
                ),
            )
            if self.spec.push:
                self.hub.call("validating the model card", card.validate)
            card.save(folder / "README.md")

    def push(self, folder: Path, result: RecipeResult) -> None:
        info, target = self.plan.info, result.target_repo
        revision = f" at {info.revision[:12]}" if info.revision else ""
        message = f"Quantize {info.ref}{revision} with torchao {self.recipe.name}"
        description = f"torchao config: {result.torchao_config}\n\n{model_card.reproduce_command(info, result)}"
        with self.events.stage("push", f"pushing to {target} in one commit", quant_type=self.recipe.name):
            url, _ = self.hub.push(
                folder,
                target,
                private=self.spec.private,
                message=message,
                description=description,
                replace=self.spec.overwrite,
            )
        result.url = url
        self.events.log(f"pushed {repo_url(target)}", quant_type=self.recipe.name)

    def fail(self, result: RecipeResult, message: str) -> None:
        result.status, result.error = "failed", message
        self.events.emit(Event("error", message, quant_type=self.recipe.name))


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
