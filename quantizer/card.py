"""The model card of a quantized output, rendered from templates/model_card.md.j2 through huggingface_hub."""

from __future__ import annotations

import shlex
from importlib.metadata import version
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

from .hardware import Hardware
from .hub import repo_url
from .int4 import method_description
from .recipes import Recipe
from .report import RecipeResult, fmt, human_bytes
from .source import SourceInfo
from .texts import SAMPLE_PROMPT, SAMPLE_TOKENS

TEMPLATE = Path(__file__).resolve().parent.parent / "templates" / "model_card.md.j2"
COPIED_FIELDS = ("license", "license_name", "license_link", "language", "pipeline_tag")


def library_versions() -> dict[str, str]:
    return {name: version(name) for name in ("torch", "torchao", "transformers", "huggingface_hub")}


def card_metadata(info: SourceInfo, recipe: Recipe) -> ModelCardData:
    """YAML header: base_model and relation (Hub sources), license and pipeline tag from the source, tags."""
    copied = {k: info.card_data[k] for k in COPIED_FIELDS if info.card_data.get(k)}
    copied.setdefault("pipeline_tag", "text-generation")
    if info.repo_id:
        copied.update(base_model=info.repo_id, base_model_relation="quantized")
    return ModelCardData(library_name="transformers", tags=["torchao", info.model_type, recipe.name], **copied)


def reproduce_command(info: SourceInfo, result: RecipeResult) -> str:
    """The CLI line that makes this output again (never with a token)."""
    source = f"{info.repo_id}@{info.revision}" if info.repo_id and info.revision else info.ref
    parts = ["python", "-m", "quantizer", source, result.target_repo or "TARGET", "--quant-type", result.quant_type]
    if result.group_size:
        parts += ["--group-size", str(result.group_size)]
    if result.int4_method:
        parts += ["--int4-method", result.int4_method]
    if result.device:
        parts += ["--device", result.device]
    return shlex.join(parts)


def render(
    info: SourceInfo,
    recipe: Recipe,
    result: RecipeResult,
    *,
    made_on_hardware: Hardware,
    eval_text_name: str,
    source_dtype: str,
) -> ModelCard:
    v = result.verify
    assert v is not None, "a card describes a verified output"
    source_link = f"[{info.repo_id}]({repo_url(info.repo_id)})" if info.repo_id else f"`{info.name}`"
    runs_on = recipe.runs_on(made_on_hardware)
    return ModelCard.from_template(
        card_metadata(info, recipe),
        template_path=str(TEMPLATE),
        target_name=(result.target_repo or info.name).split("/")[-1],
        target_repo=result.target_repo,
        source_link=source_link,
        source_repo=info.repo_id,
        source_url=repo_url(info.repo_id) if info.repo_id else None,
        quant_type=recipe.name,
        description=recipe.description,
        torchao_config=result.torchao_config,
        group_size=result.group_size,
        int4_method=result.int4_method,
        int4_method_text=method_description(result.int4_method),
        format=result.format,
        made_on=made_on_hardware.name,
        runs_on=runs_on,
        device_map="cuda" if runs_on == "CUDA GPUs only" else "auto",
        versions=library_versions(),
        notes=result.notes,
        eval_tokens=v.eval_tokens,
        eval_text_name=eval_text_name,
        source_size=human_bytes(result.source_bytes),
        output_size=human_bytes(result.output_bytes),
        ratio=f"{result.size_ratio:.1%}" if result.size_ratio else "-",
        ppl_source=fmt(v.ppl_source, ".3f", "not run (streamed)"),
        ppl_quantized=fmt(v.ppl_quantized, ".3f"),
        ppl_delta=fmt(v.ppl_delta_pct, "+.2f") + ("%" if v.ppl_delta_pct is not None else ""),
        top1=fmt(v.top1_agreement, ".1%"),
        logits_err=fmt(v.logits_rel_err, ".4f"),
        checked=v.checked,
        source_dtype=source_dtype,
        quantized_linear=v.quantized_linear,
        skipped_linear=v.skipped_linear,
        quantize_seconds=f"{result.seconds.get('quantize', 0):.1f}",
        load_source=f"{v.load_seconds_source:.2f}",
        load_quantized=f"{v.load_seconds:.2f}",
        speed_source=f"{v.tokens_per_second_source:.1f}",
        speed_quantized=f"{v.tokens_per_second:.1f}",
        sample_tokens=SAMPLE_TOKENS,
        peak_rss=human_bytes(result.peak_rss_bytes),
        peak_gpu=human_bytes(result.peak_gpu_bytes) if result.peak_gpu_bytes is not None else None,
        quantized_share=f"{result.quantized_share:.1%}" if result.quantized_share is not None else "-",
        peak_disk=human_bytes(result.peak_disk_bytes) if result.peak_disk_bytes is not None else None,
        sample_prompt=SAMPLE_PROMPT,
        sample_source=v.sample_source,
        sample=v.sample,
        command=reproduce_command(info, result),
    )
