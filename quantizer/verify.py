"""Prove an output is right: reload it with stock transformers and compare it with the source.

The same fixed inputs go through the source (once per job) and every reloaded output:
logits on a small batch of real text (relative error, top-1 agreement), perplexity on a bounded
number of tokens of real English, and one greedy sample answer. An output that does not reload,
produces non-finite numbers or disagrees with the source almost everywhere is a failed job.
"""

from __future__ import annotations

import gc
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from .compute import to_compute_dtype
from .errors import VerificationError
from .events import EventStream
from .hardware import Hardware
from .int4.packed import dequantize_tile_packed
from .layers import LayerCount, count_linear_layers
from .layerwise import LayerwiseFigures
from .texts import SAMPLE_TOKENS, EvalData

# Below this top-1 agreement an output is broken, not merely lossy (random models still agree far more).
TOP1_FLOOR = 0.2
PPL_RATIO_CEILING = 4.0
LAYER_ERROR_CEILING = 0.5  # a sampled layer whose output is off by half is broken


@dataclass(frozen=True, kw_only=True)
class Figures:
    """What one model produced on the job's EvalData."""

    logits: torch.Tensor  # float32 on CPU
    ppl: float
    sample: str
    tokens_per_second: float  # while generating the sample (batch 1, greedy)
    load_seconds: float = 0.0  # from_pretrained of the folder


FULL_CHECK = "the whole model against the source: logits and top-1 on a fixed batch, perplexity, a sample"


@dataclass(frozen=True, kw_only=True)
class VerifyResult:
    """Verification figures. The comparisons with the source are None when the source was too large to run
    as a whole (streaming); `checked` says what was measured."""

    reload_ok: bool
    logits_rel_err: float | None
    top1_agreement: float | None
    ppl_source: float | None
    ppl_quantized: float | None
    ppl_delta_pct: float | None
    quantized_linear: int
    skipped_linear: int
    sample: str
    sample_source: str
    eval_tokens: int
    load_seconds: float = 0.0
    load_seconds_source: float = 0.0
    tokens_per_second: float = 0.0
    tokens_per_second_source: float = 0.0
    checked: str = FULL_CHECK
    layer_errors: dict[str, float] | None = None  # sampled Linear layers' output error (streaming)


@torch.no_grad()
def measure(model, tokenizer, data: EvalData, events: EventStream, quant_type: str | None) -> Figures:
    device = model.device
    logits = model(data.batch.to(device)).logits.float().cpu()
    total_nll, count = 0.0, 0
    for i, window in enumerate(data.windows):
        ids = window.unsqueeze(0).to(device)
        out = model(ids).logits.float()
        nll = torch.nn.functional.cross_entropy(out[0, :-1], ids[0, 1:], reduction="sum")
        total_nll += nll.item()
        count += ids.shape[1] - 1
        events.progress("perplexity", i + 1, len(data.windows), quant_type=quant_type)
    ppl = math.exp(total_nll / count) if count else float("nan")
    prompt = data.prompt_ids.to(device)
    started = time.perf_counter()
    generated = model.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=SAMPLE_TOKENS,
        min_new_tokens=SAMPLE_TOKENS,  # a fixed length, so tokens per second compare across models
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
    )
    speed = (generated.shape[1] - prompt.shape[1]) / (time.perf_counter() - started)
    new = generated[0, prompt.shape[1] :]
    eos = tokenizer.eos_token_id
    if eos is not None and (new == eos).any():  # the answer ends at the first end-of-sequence
        new = new[: int((new == eos).nonzero()[0])]
    sample = tokenizer.decode(new, skip_special_tokens=True).strip()
    return Figures(logits=logits, ppl=ppl, sample=sample, tokens_per_second=speed)


def load_tokenizer(folder: Path):
    return AutoTokenizer.from_pretrained(folder)


def reference_figures(source_dir: Path, hardware: Hardware, data: EvalData, events: EventStream) -> Figures:
    """Measure the source model once, in its own dtype, and free it again."""
    with events.stage("reference", "measuring the source model"):
        started = time.perf_counter()
        model = AutoModelForCausalLM.from_pretrained(source_dir, dtype="auto", device_map=hardware.device)
        load_seconds = time.perf_counter() - started
        to_compute_dtype(model, hardware.device)
        try:
            return replace(
                measure(model.eval(), load_tokenizer(source_dir), data, events, None), load_seconds=load_seconds
            )
        finally:
            del model
            gc.collect()


def reload_and_measure(
    output_dir: Path, hardware: Hardware, data: EvalData, events: EventStream, quant_type: str
) -> tuple:
    """Stock `from_pretrained` of the output, then its figures on the job's inputs.

    Returns (layer counts, figures, load seconds, tile-packed layers run dequantized). On a CPU,
    CUDA's tile-packed int4 weights are unpacked first: the int4 kernel needs CUDA.
    """
    try:
        started = time.perf_counter()
        model = AutoModelForCausalLM.from_pretrained(output_dir, device_map=hardware.device).eval()
        load_seconds = time.perf_counter() - started
        tokenizer = load_tokenizer(output_dir)
    except Exception as exc:
        raise VerificationError(f"the saved {quant_type} model does not reload with transformers: {exc}") from exc
    try:
        counts = count_linear_layers(model)
        unpacked = 0 if hardware.is_cuda else dequantize_tile_packed(model)
        to_compute_dtype(model, hardware.device)
        got = measure(model, tokenizer, data, events, quant_type)
    finally:
        del model
        gc.collect()
    return counts, got, load_seconds, unpacked


def compare(ref: Figures, got: Figures) -> tuple[float, float]:
    """Relative L2 error of the logits, and how often both pick the same next token."""
    rel_err = ((got.logits - ref.logits).norm() / ref.logits.norm()).item()
    top1 = (got.logits.argmax(-1) == ref.logits.argmax(-1)).float().mean().item()
    return rel_err, top1


def verify_output(
    output_dir: Path,
    hardware: Hardware,
    data: EvalData,
    ref: Figures,
    events: EventStream,
    quant_type: str,
) -> VerifyResult:
    """Reload `output_dir` with stock transformers and compare it with the source's figures.

    Returns the figures even when they are bad; `check_sane` decides whether the output is kept.
    """

    with events.stage(
        "verify", "reloading with stock transformers and comparing with the source", quant_type=quant_type
    ):
        reloaded = reload_and_measure(output_dir, hardware, data, events, quant_type)
    counts, got, load_seconds, unpacked = reloaded
    rel_err, top1 = compare(ref, got)
    checked = FULL_CHECK
    if unpacked:
        checked = (
            f"stock reload on CPU; {unpacked} tile-packed layers unpacked with a CPU port of torchao's unpack "
            "kernel and run as a dequantize-and-matmul forward (the int4 kernel needs CUDA): logits and "
            "top-1 against the source, perplexity, a sample"
        )
    result = VerifyResult(
        reload_ok=True,
        logits_rel_err=rel_err,
        top1_agreement=top1,
        ppl_source=ref.ppl,
        ppl_quantized=got.ppl,
        ppl_delta_pct=100.0 * (got.ppl - ref.ppl) / ref.ppl,
        quantized_linear=counts.quantized,
        skipped_linear=len(counts.skipped),
        sample=got.sample,
        sample_source=ref.sample,
        eval_tokens=data.eval_tokens,
        load_seconds=load_seconds,
        load_seconds_source=ref.load_seconds,
        tokens_per_second=got.tokens_per_second,
        tokens_per_second_source=ref.tokens_per_second,
        checked=checked,
    )
    return result


def check_sane(result: VerifyResult, quant_type: str) -> None:
    """Fail outputs that are broken rather than lossy; the message says what was measured."""
    worst_layer = max((result.layer_errors or {}).values(), default=0.0)
    advice = (
        "it was not kept. The model may have outlier weights this type cannot represent: try a smaller "
        "--group-size or a higher-precision type (int8_weight_only, float8_weight_only)."
    )
    measured = [v for v in (result.logits_rel_err, result.ppl_quantized, worst_layer) if v is not None]
    if not all(map(math.isfinite, measured)):
        raise VerificationError(f"the {quant_type} model produces NaN or infinite outputs; {advice}")
    if worst_layer > LAYER_ERROR_CEILING:
        raise VerificationError(
            f"a {quant_type} layer's output is off by {worst_layer:.0%} (relative error, above "
            f"{LAYER_ERROR_CEILING:.0%}); {advice}"
        )
    if result.quantized_linear == 0:
        raise VerificationError(f"no Linear layer was quantized by {quant_type}; the output was not kept.")
    if result.top1_agreement is not None and result.top1_agreement < TOP1_FLOOR:
        raise VerificationError(
            f"the {quant_type} model picks the same next token as the source only {result.top1_agreement:.0%} "
            f"of the time (below {TOP1_FLOOR:.0%}); {advice}"
        )
    if result.ppl_source and result.ppl_quantized and result.ppl_quantized > PPL_RATIO_CEILING * result.ppl_source:
        raise VerificationError(
            f"the {quant_type} model's perplexity is {result.ppl_quantized:.1f} against the source's "
            f"{result.ppl_source:.1f} (more than {PPL_RATIO_CEILING:.0f}x); {advice}"
        )


def streamed_checks(
    layer_errors: dict[str, float], layerwise: LayerwiseFigures | None, layerwise_missing: str | None
) -> list[str]:
    """What a streamed output's verification measured, in words."""
    checks = [
        f"output error of {len(layer_errors)} Linear layers spread over the model (worst "
        f"{max(layer_errors.values(), default=0.0):.2%})"
    ]
    if layerwise is not None:
        checks.append(
            f"perplexity, logits and top-1 of the source and of the output on {layerwise.tokens} tokens, run one "
            f"decoder layer at a time ({layerwise.layers} layers) from the shards as they were written"
        )
    elif layerwise_missing:
        checks.append(layerwise_missing)
    return checks


def layerwise_figures(layerwise: LayerwiseFigures | None) -> dict[str, float | None]:
    """The comparisons with the source that the layer-by-layer run gives (None without it)."""
    return {
        "logits_rel_err": layerwise.logits_rel_err if layerwise else None,
        "top1_agreement": layerwise.top1_agreement if layerwise else None,
        "ppl_source": layerwise.ppl_source if layerwise else None,
        "ppl_quantized": layerwise.ppl_quantized if layerwise else None,
        "ppl_delta_pct": (layerwise.ppl_quantized / layerwise.ppl_source - 1) * 100 if layerwise else None,
    }


def verify_streamed(
    output_dir: Path,
    hardware: Hardware,
    data: EvalData,
    events: EventStream,
    quant_type: str,
    layer_errors: dict[str, float],
    no_reload_because: str | None,
    counts: LayerCount,
    layerwise: LayerwiseFigures | None = None,
    layerwise_missing: str | None = None,
) -> VerifyResult:
    """Verification when the source is too large to run as a whole: the sampled layers' output error
    measured while streaming; both models' perplexity, logits and top-1 run one decoder layer at a time
    from the shards as they were written (`layerwise`); then, unless `no_reload_because` says why not (the
    output was uploaded as it was written, or is larger than memory), a stock reload with a sample."""
    checks = streamed_checks(layer_errors, layerwise, layerwise_missing)
    compared = layerwise_figures(layerwise)
    if no_reload_because:
        checks.append(f"{no_reload_because}, so it was not reloaded")
        return VerifyResult(
            reload_ok=False,
            **compared,
            quantized_linear=counts.quantized,
            skipped_linear=len(counts.skipped),
            sample="",
            sample_source="",
            eval_tokens=layerwise.tokens if layerwise else 0,
            checked="; ".join(checks),
            layer_errors=layer_errors,
        )
    with events.stage("verify", "reloading with stock transformers", quant_type=quant_type):
        counts, got, load_seconds, _ = reload_and_measure(output_dir, hardware, data, events, quant_type)
    checks.append("stock reload and a sample of the quantized model (the source was streamed, never loaded as a whole)")
    if layerwise is None:
        compared["ppl_quantized"] = got.ppl
    return VerifyResult(
        reload_ok=True,
        **compared,
        quantized_linear=counts.quantized,
        skipped_linear=len(counts.skipped),
        sample=got.sample,
        sample_source="",
        eval_tokens=layerwise.tokens if layerwise else data.eval_tokens,
        load_seconds=load_seconds,
        tokens_per_second=got.tokens_per_second,
        checked="; ".join(checks),
        layer_errors=layer_errors,
    )
