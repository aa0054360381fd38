"""The verify stage: check a type's output the way its plan says (`plan.Verification`), then decide whether it is
kept and where it can be served."""

from __future__ import annotations

import json
from dataclasses import replace

from . import coverage, resources, serving
from .engines import Quantized, TypeJob
from .errors import VerificationError
from .plan import RELOAD, RELOAD_AND_SAMPLED
from .serving import VllmCheck
from .verify import VerifyResult, check_sane, verify_output, verify_streamed


def verify(job: TypeJob, quantized: Quantized) -> VerifyResult:
    """The output's figures against the source's, measured as the plan's verification mode says."""
    plan, tp, m, events = job.plan, job.type, job.measurements, job.events
    mode = tp.verification.mode
    if mode in (RELOAD, RELOAD_AND_SAMPLED):
        full = verify_output(job.staging, plan.hardware, m.data, m.reference, events, tp.name)
        if mode == RELOAD:
            return full
        layers = f"; output error of {len(quantized.layer_errors)} sampled Linear layers"
        return replace(full, checked=full.checked + layers, layer_errors=quantized.layer_errors)
    no_reload_because = (
        "the output was uploaded as it was written"
        if tp.output.upload_as_it_goes
        else None
        if resources.fits_in_memory(quantized.output_bytes, plan.upcast_output)
        else "the output is larger than memory"
    )
    return verify_streamed(
        job.staging,
        plan.hardware,
        m.data,
        events,
        tp.name,
        quantized.layer_errors,
        no_reload_because,
        quantized.counts,
        layerwise=quantized.layerwise,
        layerwise_missing=quantized.layerwise_missing or tp.verification.layerwise_missing,
    )


def check_kept(job: TypeJob, quantized: Quantized, verified: VerifyResult) -> str | None:
    """Raise when the output must not be kept: too little of it quantized (unless allowed), or broken. A speed-only
    job keeps a broken output and gets back why a normal job would not have (random weights' next tokens are near
    ties that rounding flips, so they fail the agreement floor while their timings are real)."""
    if quantized.counts.share is not None:
        coverage.check_written(quantized.counts.share, job.type.name, job.plan.allow_partial)
    try:
        check_sane(verified, job.type.name)
    except VerificationError as exc:
        if not job.plan.speed_only:
            raise
        kept = f"speed-only: kept although a normal job would refuse it: {exc}"
        job.events.warn(kept, quant_type=job.type.name)
        return kept
    return None


def serving_check(job: TypeJob, quantized: Quantized) -> VllmCheck:
    """Whether vLLM can serve this output, from its config.json and its shards' headers (a streamed type's read as
    they were written, before an upload could delete them)."""
    headers = list(quantized.shard_headers) if job.plan.streaming else serving.folder_headers(job.staging)
    config = json.loads((job.staging / "config.json").read_text())
    return serving.check_vllm(config, headers, experts_quantized=job.type.quantizes_experts)
