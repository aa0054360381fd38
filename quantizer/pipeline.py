"""The one flow that both the CLI and the Space call: preflight, fetch, then per type quantize → verify → publish.

`run(spec, events)` never prints and never exits; it returns a `Report` with one result per
quantization type and emits events as it goes. Bad input raises an `InputError` before any work
(nothing downloaded, nothing created); a type that fails is recorded as failed, leaves nothing
behind, and the next type still runs.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torchao.core.config import AOBaseConfig

from . import compute, coverage, int4, resources, serving
from . import recipes as recipe_registry
from .bounds import check_config_fits_files
from .cancel import JobCancelled
from .engine import copy_side_files, quantize_and_save
from .errors import InputError, OutputExistsError, QuantizationError, QuantizerError, SourceError
from .events import Event, EventStream
from .experts import covering
from .hardware import Hardware, PeakGPU, PeakRSS, available_memory_bytes, detect, folder_bytes
from .hub import AuthError, Hub, Identity, Upload
from .hub_texts import JobTexts, job_texts
from .int4 import Int4Choice, Int4Method
from .layers import LayerCount, WeightShare, planned_linear_layers
from .layerwise import LayerwiseEvaluator
from .naming import split_repo_id, target_for
from .publish import Publisher
from .recipes import DEFAULT_GROUP_SIZE, Recipe, choose_group_size
from .report import RecipeResult, Report, config_repr, human_bytes
from .safetensors_io import weights_bytes
from .serving import VllmCheck
from .source import Fetched, Source, SourceInfo, open_source
from .spec import JobSpec
from .streaming import stream_quantize
from .texts import (
    EvalData,
    build_eval_data,
    calibration_ids,
)
from .tracking import Tracker
from .verify import Figures, VerifyResult, check_sane, load_tokenizer, reference_figures, verify_output, verify_streamed

__all__ = ["JobSpec", "Plan", "preflight", "run"]


@dataclass(frozen=True, kw_only=True)
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
    int4_method: Int4Method | None = None  # for the int4 types whose format takes values chosen here
    int4_estimated_seconds: float | None = None  # the calibrated method's time, estimated on this machine
    streaming: bool = False
    source_fits: bool = True  # the source can be loaded as a whole (for the reference pass)
    private: bool = False  # the targets are created private
    upload_as_it_goes: bool = False  # streamed shards are uploaded and deleted as they are written
    layerwise: bool = False  # streamed: both models also run one decoder layer at a time (when memory allows)
    shares: dict[str, WeightShare] = field(default_factory=dict)  # quant type -> its planned share of the weights
    has_experts: bool = False  # a mixture of experts with 3-D expert weights
    texts: JobTexts  # what the job is evaluated and calibrated on
    allow_partial: bool = False  # keep an output with less than half of its Linear-like weights quantized
    compute: str = ""  # the dtype forward passes run in, and why (`compute.reason`)
    upcast: float = 1.0  # the source's bytes, times this, once upcast for computing

    @property
    def upcast_output(self) -> float:
        """How many times an output's bytes a reloaded output takes once upcast (quantized weights dequantized:
        up to float32 bytes per int4 value stored in a byte)."""
        return 1.0 if self.upcast == 1.0 else 4.0

    def quantizes_experts(self, recipe: Recipe) -> bool:
        return self.has_experts and recipe.experts_reason(self.hardware) is None

    def int4_for(self, recipe: Recipe, calibration: torch.Tensor | None) -> Int4Choice | None:
        """The int4 method and format of one type on this job; None for the types that are not int4."""
        storage = recipe.int4_format(self.hardware)
        if storage is None:
            return None
        method = self.int4_method if self.int4_method and storage.takes_calibrated(self.hardware.device) else int4.RTN
        return Int4Choice(
            method=method,
            format=storage,
            group_size=self.group_size,
            dynamic_activations=recipe.dynamic_activations,
            calibration=calibration if method.calibrated else None,
            calibration_name=self.texts.calibration_name,
        )


def layerwise_memory_budget() -> int:
    """How much weight the layer-by-layer evaluator may hold waiting for a layer's last tensor: a quarter of
    what is free, so the streaming engine keeps its two shards."""
    return available_memory_bytes() // 4


def check_options(spec: JobSpec) -> None:
    recipe_registry.check_group_size_value(spec.group_size or DEFAULT_GROUP_SIZE)
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


def preflight(spec: JobSpec, events: EventStream, hub: Hub, workdir: Path) -> Plan:
    """Every check that can fail on bad input, before anything is downloaded, created or written."""
    hardware = detect(spec.device)
    recipes = recipe_registry.resolve(spec.quant_types)
    recipe_registry.check_supported(recipes, hardware)
    check_options(spec)
    if spec.public and not spec.token:
        raise AuthError("sign in with Hugging Face first: jobs on this shared Space run for signed-in visitors only.")
    # a bad token is reported before anything else; a shared Space knows every visitor by name
    identity = hub.whoami() if spec.push or spec.public else None
    source = open_source(spec.source, hub, allow_local=not spec.public)
    info = source.inspect()
    if spec.max_source_bytes and info.weight_bytes > spec.max_source_bytes:
        raise SourceError(
            f"{info.ref} has {human_bytes(info.weight_bytes)} of weights; this Space takes sources up to "
            f"{human_bytes(spec.max_source_bytes)}: duplicate the Space onto larger hardware, or use the CLI."
        )
    check_config_fits_files(info.config, info.weight_bytes, info.ref)  # before the model is built, even on meta
    covered = coverage.planned(info, recipes, hardware, spec.allow_partial, events)
    private = spec.private if spec.private is not None else (info.private or info.gated)
    if spec.push:
        targets = push_targets(spec, identity, info, recipes)
    else:
        targets = {r.name: target_for(spec.target, info.name, r, len(recipes) > 1) for r in recipes}
    notes: list[str] = []
    if spec.push and private and spec.private is None:
        why = "the target repo is private because the source is " + ("private" if info.private else "gated")
        notes.append(why)
        events.log(why)
    group_size = spec.group_size or DEFAULT_GROUP_SIZE
    if any(r.needs_divisible_groups(hardware) for r in recipes):
        layers = planned_linear_layers(info.config)
        group_size, note = choose_group_size(layers, group_size, explicit=spec.group_size is not None)
        if note:
            notes.append(note)
            events.warn(note)
    upcast = compute.upcast_factor(info.config, hardware.device)
    compute_note = compute.reason(compute.stored_dtype(info.config), hardware.device)
    events.log(compute_note)
    source_fits = resources.fits_in_memory(info.weight_bytes, upcast)
    streaming = spec.streaming if spec.streaming is not None else not source_fits
    if streaming:
        check_streamable(info)
        coverage.check_streaming(info, recipes, hardware, covered.has_experts)
        events.log(
            f"streaming engine: one shard at a time ({info.weight_bytes / 1e9:.2f} GB of weights"
            f"{'' if source_fits else ', more than this machine can load at once'})"
        )
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
    int4_method = choice.method
    if choice.reason:
        notes.append(choice.reason)
        events.log(choice.reason)
    check_targets_free(spec, hub, targets)
    texts = job_texts(spec, workdir, calibrated=bool(int4_method and int4_method.calibrated))
    upload_as_it_goes = streaming and spec.push and spec.local_dir is None
    layerwise_bytes, layerwise = 0, False
    if streaming:
        shard = info.largest_weight_file
        layerwise_bytes = resources.layerwise_memory(shard, info.config, spec.eval_tokens)
        layerwise = resources.streaming_memory(shard) + layerwise_bytes <= available_memory_bytes()
        if not layerwise:
            note = (
                f"the layer-by-layer check of both models would need about {layerwise_bytes / 1e9:.2f} GB more "
                "memory than this machine has: verification is the sampled layers' output error"
            )
            notes.append(note)
            events.warn(note)
    needs = resources.estimate(
        info.weight_bytes,
        len(recipes),
        download=info.repo_id is not None,
        keep_outputs=spec.local_dir is not None,
        workdir=workdir,
        output_dir=spec.local_dir,
        streaming_shard=info.largest_weight_file if streaming else None,
        upload_as_it_goes=upload_as_it_goes,
        layerwise_bytes=layerwise_bytes if layerwise else 0,
        upcast=upcast,
    )
    events.log(
        f"{info.weight_bytes / 1e9:.2f} GB of weights: "
        + resources.describe(needs)
        + ("; shards are uploaded as they are written" if upload_as_it_goes else "")
    )
    resources.check(needs)
    return Plan(
        hardware=hardware,
        source=source,
        info=info,
        recipes=recipes,
        targets=targets,
        group_size=group_size,
        notes=notes,
        identity=identity,
        int4_method=int4_method,
        int4_estimated_seconds=choice.estimated_seconds,
        streaming=streaming,
        source_fits=source_fits,
        private=private,
        upload_as_it_goes=upload_as_it_goes,
        layerwise=layerwise,
        shares=covered.shares,
        has_experts=covered.has_experts,
        texts=texts,
        allow_partial=spec.allow_partial,
        compute=compute_note,
        upcast=upcast,
    )


def check_streamable(info: SourceInfo) -> None:
    if not info.safetensors:
        raise InputError(
            f"{info.ref} stores its weights as PyTorch .bin files; the streaming engine (needed for a "
            "model this large) reads safetensors only: convert the checkpoint to safetensors first."
        )


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


@dataclass(frozen=True, kw_only=True)
class Measurements:
    """What every type of a job is measured and calibrated on, prepared once."""

    data: EvalData
    reference: Figures | None  # the source's figures; None when the source is never in memory as a whole
    calibration: torch.Tensor | None  # token ids of plan.texts.calibration_text; None: no calibrated method


def prepare_measurements(spec: JobSpec, plan: Plan, fetched: Fetched, events: EventStream) -> Measurements:
    texts = plan.texts
    tokenizer = load_tokenizer(fetched.folder)
    data = build_eval_data(tokenizer, texts.eval_text, spec.eval_tokens)
    calibration = None
    if texts.calibration_text is not None:  # only a job with a calibrated int4 method has one
        calibration = calibration_ids(tokenizer, texts.calibration_text, spec.calibration_tokens)
    whole_source = plan.source_fits and fetched.weights_here
    reference = reference_figures(fetched.folder, plan.hardware, data, events) if whole_source else None
    return Measurements(
        data=data,
        reference=reference,
        calibration=calibration,
    )


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
        report = Report(
            source=plan.info.ref, revision=plan.info.revision, device=plan.hardware.device, hardware=plan.hardware.name
        )
        with events.stage("fetch", "getting the model files"):
            fetched = plan.source.fetch(workdir, events, weights=not plan.streaming)
        measurements = prepare_measurements(spec, plan, fetched, events)
        if measurements.reference:
            report.ppl_source, report.sample_source = measurements.reference.ppl, measurements.reference.sample
        report.eval_text, report.calibration_text = plan.texts.eval_name, plan.texts.calibration_name
        report.compute = plan.compute
        report.seconds = events.seconds_for(None)
        publisher = Publisher(
            spec=spec,
            info=plan.info,
            hardware=plan.hardware,
            hub=hub,
            events=events,
            workdir=workdir,
            private=plan.private,
            eval_name=plan.texts.eval_name,
        )
        for recipe in plan.recipes:
            job = RecipeJob(
                spec=spec,
                plan=plan,
                recipe=recipe,
                fetched=fetched,
                measurements=measurements,
                events=events,
                publisher=publisher,
            )
            result = job.run(tracker)
            report.results.append(result)
            events.emit(
                Event("result", f"{recipe.name}: {result.status}", quant_type=recipe.name, data={"result": result})
            )
        report.tracking = tracker.where() if tracker.recorded and tracker.enabled else None
    finally:
        events.cancel.release()
        shutil.rmtree(workdir, ignore_errors=True)
    return report


@dataclass(kw_only=True)
class RecipeJob:
    """One quantization type: quantize, verify, publish. Never leaves half an output."""

    spec: JobSpec
    plan: Plan
    recipe: Recipe
    fetched: Fetched
    measurements: Measurements
    events: EventStream
    publisher: Publisher
    upload: Upload | None = None  # the target, open while streamed shards are uploaded as they are written
    uploaded_bytes: int = 0
    peak_disk_bytes: int | None = None
    shard_headers: list[dict[str, str]] = field(default_factory=list)  # streamed shards' headers, read as written

    def run(self, tracker: Tracker) -> RecipeResult:
        publisher = self.publisher
        recipe, events = self.recipe, self.events
        int4_choice = self.plan.int4_for(recipe, self.measurements.calibration)
        config = recipe.config(self.plan.hardware, self.plan.group_size)
        if int4_choice:
            config = int4_choice.config(config)
        result = self.new_result(config, int4_choice)
        events.log(f"{recipe.name}: {result.format}", quant_type=recipe.name)
        kernel_note = compute.int8_matmul_note(self.plan.hardware.device) if recipe.int8_matmul else None
        if kernel_note:
            result.notes.append(kernel_note)
            events.warn(kernel_note, quant_type=recipe.name)
        user = self.plan.identity.name if self.plan.identity else None
        tracker.start(self.plan.info, result, self.plan.hardware.name, user=user, private=self.plan.private)
        peak, peak_gpu = PeakRSS(), PeakGPU(self.plan.hardware)
        peak.reset()
        peak_gpu.reset()
        staging = publisher.staging_folder(recipe, result.target_repo)
        try:
            counts, result.verify = self.quantize_and_verify(staging, config, int4_choice)
            if counts.skipped:
                result.notes.append(f"left in the source dtype: {', '.join(counts.skipped)}")
            if counts.share is not None:
                result.quantized_share = counts.share.fraction
                coverage.check_written(counts.share, recipe.name, self.plan.allow_partial)
            result.notes.extend(counts.notes)
            check_sane(result.verify, recipe.name)
            result.output_bytes = weights_bytes(staging) + self.uploaded_bytes
            result.size_ratio = result.output_bytes / result.source_bytes if result.source_bytes else None
            result.seconds = events.seconds_for(recipe.name)
            result.peak_rss_bytes, result.peak_gpu_bytes = peak.peak_bytes(), peak_gpu.peak_bytes()
            result.peak_disk_bytes = self.peak_disk_bytes
            result.vllm = self.check_vllm(staging)
            publisher.publish(staging, recipe, result, self.upload)
            result.status = "ok"
        except JobCancelled:
            result.status, result.error = "cancelled", events.cancel.reason or "the job was stopped"
            raise
        except QuantizerError as exc:
            self.fail(result, events.scrub(str(exc)))
        except Exception as exc:  # an unexpected failure still ends this type cleanly
            self.fail(result, events.scrub(f"unexpected error: {type(exc).__name__}: {exc}"))
            if self.spec.debug:  # the caller prints the traceback (scrubbed)
                raise
        finally:
            if self.upload is not None and result.status != "ok":
                self.upload.abandon()  # nothing was committed; a repo this job created goes again
            shutil.rmtree(staging, ignore_errors=True)
            result.seconds = events.seconds_for(recipe.name)
            result.peak_rss_bytes, result.peak_gpu_bytes = peak.peak_bytes(), peak_gpu.peak_bytes()
            tracker.finish(result)
        return result

    def new_result(self, config: AOBaseConfig, int4_choice: Int4Choice | None) -> RecipeResult:
        plan, recipe = self.plan, self.recipe
        result = RecipeResult(
            quant_type=recipe.name,
            suffix=recipe.suffix,
            torchao_config=config_repr(config),
            format=recipe.format_on(plan.hardware),
            device=plan.hardware.device,
            group_size=plan.group_size if int4_choice else None,
            target_repo=plan.targets[recipe.name],
            source_bytes=plan.info.weight_bytes,
            notes=list(plan.notes) if int4_choice else [],
            int4_method=int4_choice.label if int4_choice else None,
            int4_estimated_seconds=(
                round(plan.int4_estimated_seconds, 1)
                if int4_choice and int4_choice.method.calibrated and plan.int4_estimated_seconds
                else None
            ),
            quantized_share=plan.shares[recipe.name].fraction if recipe.name in plan.shares else None,
        )
        if int4_choice:
            result.notes.extend(int4_choice.notes())
        return result

    def quantize_and_verify(
        self, staging: Path, config: AOBaseConfig, int4_choice: Int4Choice | None
    ) -> tuple[LayerCount, VerifyResult]:
        plan, recipe, events, m = self.plan, self.recipe, self.events, self.measurements
        experts = plan.quantizes_experts(recipe)
        if not plan.streaming:
            counts = quantize_and_save(
                self.fetched.folder,
                staging,
                covering(config, plan.info.config) if experts else config,
                plan.hardware,
                events,
                recipe.name,
                int4_choice,
                experts_forward=recipe.experts_forward if experts else None,
            )
            return counts, verify_output(staging, plan.hardware, m.data, m.reference, events, recipe.name)
        evaluator = None
        if plan.layerwise and (m.reference is None or plan.upload_as_it_goes):  # nothing can be loaded whole later
            evaluator = LayerwiseEvaluator(plan.info.config, m.data, layerwise_memory_budget())
        if plan.upload_as_it_goes:
            self.upload = self.publisher.open_upload(recipe, plan.targets[recipe.name])
        streamed = self.stream(staging, config, int4_choice, evaluator)
        if m.reference is not None and not plan.upload_as_it_goes:
            full = verify_output(staging, plan.hardware, m.data, m.reference, events, recipe.name)
            layers = f"; output error of {len(streamed.layer_errors)} sampled Linear layers"
            return streamed.counts, replace(full, checked=full.checked + layers, layer_errors=streamed.layer_errors)
        no_reload_because = (
            "the output was uploaded as it was written"
            if plan.upload_as_it_goes
            else None
            if resources.fits_in_memory(streamed.output_bytes, plan.upcast_output)
            else "the output is larger than memory"
        )
        verified = verify_streamed(
            staging,
            plan.hardware,
            m.data,
            events,
            recipe.name,
            streamed.layer_errors,
            no_reload_because,
            streamed.counts,
            layerwise=evaluator.result() if evaluator else None,
            layerwise_missing=evaluator.stopped
            if evaluator
            else None
            if plan.layerwise
            else "the layer-by-layer check of both models did not fit in memory",
        )
        return streamed.counts, verified

    def stream(
        self, staging: Path, config: AOBaseConfig, int4_choice: Int4Choice | None, evaluator: LayerwiseEvaluator | None
    ):
        """The shard-by-shard engine; int4 values chosen here go through the choice's per-tensor path. Each
        finished shard feeds the layer-by-layer evaluator and, when uploading as it goes, leaves the disk."""
        plan, recipe, events = self.plan, self.recipe, self.events
        custom = int4.made_here(int4_choice, plan.hardware.device)
        folders = [self.publisher.workdir, *([staging] if not staging.is_relative_to(self.publisher.workdir) else [])]

        def written(source_file: Path, output_file: Path) -> None:
            self.shard_headers.append(serving.shard_header(output_file))
            if evaluator is not None:
                evaluator.feed(source_file, output_file)
            now = sum(folder_bytes(folder) for folder in folders)
            self.peak_disk_bytes = max(self.peak_disk_bytes or 0, now)
            if self.upload is not None:
                size = output_file.stat().st_size
                if self.upload.send(output_file, output_file.name):
                    output_file.unlink()
                    self.uploaded_bytes += size
                    events.log(f"uploaded {output_file.name} ({human_bytes(size)})", quant_type=recipe.name)

        with events.stage("quantize", "quantizing shard by shard (streaming)", quant_type=recipe.name):
            try:
                streamed = stream_quantize(
                    self.fetched.folder,
                    staging,
                    plan.info.config,
                    config,
                    events,
                    recipe.name,
                    quantize=custom.quantize_tensor if custom else None,
                    shard_path=self.fetched.shard,
                    release=self.fetched.release,
                    written=written,
                    quantize_experts=plan.quantizes_experts(recipe),
                    experts_forward=recipe.experts_forward,
                )
            except QuantizerError:
                raise
            except Exception as exc:
                raise QuantizationError(f"torchao could not quantize the model with {recipe.name}: {exc}") from exc
            copy_side_files(self.fetched.folder, staging)
        return streamed

    def check_vllm(self, staging: Path) -> VllmCheck:
        """Whether vLLM can serve this output, from its config.json and its shards' headers."""
        headers = self.shard_headers if self.plan.streaming else serving.folder_headers(staging)
        config = json.loads((staging / "config.json").read_text())
        return serving.check_vllm(config, headers, experts_quantized=self.plan.quantizes_experts(self.recipe))

    def fail(self, result: RecipeResult, message: str) -> None:
        result.status, result.error = "failed", message
        self.events.emit(Event("error", message, quant_type=self.recipe.name))
