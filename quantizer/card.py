"""The model card of a quantized output, rendered from templates/model_card.md.j2 through huggingface_hub."""

from __future__ import annotations

import re
import shlex
from importlib.metadata import version
from pathlib import Path

import torch
from huggingface_hub import ModelCard, ModelCardData

from .compute import compute_dtype, configured_dtype, stored_dtype
from .hardware import Hardware, describe_devices
from .hub import repo_url
from .int4 import method_description
from .measured import BENCH_TABLES, LARGE_BENCH_TABLES, bench_rows
from .plan import TypePlan
from .recipes import Recipe
from .report import RecipeResult, fmt, human_bytes
from .source import SourceInfo
from .texts import SAMPLE_PROMPT, SAMPLE_TOKENS
from .verify import VerifyResult

TEMPLATE = Path(__file__).resolve().parent.parent / "templates" / "model_card.md.j2"
# what the new card copies from the source card's YAML header, each only when it has the shape the Hub gives it
# (anything else in a stranger's card is dropped, never published under the visitor's name)
COPIED_FIELDS = {
    "license": re.compile(r"[a-z0-9][a-z0-9.+-]{0,63}"),
    "license_name": re.compile(r"[a-z0-9][a-z0-9.+-]{0,63}"),
    "license_link": re.compile(r"(https://[A-Za-z0-9.-]+(/[A-Za-z0-9._~%/+-]*)?|[A-Za-z0-9._-]{1,64})"),
    "language": re.compile(r"[a-z]{2,3}(-[A-Za-z0-9]{2,8})?"),
    "pipeline_tag": re.compile(r"text-generation|text2text-generation|conversational"),
}
MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+!|<>~])")


def copied_fields(card_data: dict) -> dict:
    """The source card's fields that the new card may carry: those of COPIED_FIELDS whose values have their shape
    (a language list keeps its well-formed entries)."""
    kept: dict = {}
    for key, shape in COPIED_FIELDS.items():
        value = card_data.get(key)
        if isinstance(value, str) and shape.fullmatch(value):
            kept[key] = value
        elif key == "language" and isinstance(value, list):
            languages = [v for v in value[:50] if isinstance(v, str) and shape.fullmatch(v)]
            if languages:
                kept[key] = languages
    return kept


def source_dtype(config: dict) -> str:
    """The dtype the source's config names, when it is one; else a phrase (a config's text is not published)."""
    return configured_dtype(config) or "the source dtype"


def plain_text(text: str, limit: int = 500) -> str:
    """Generated or source-given text, shown in a card as text: one line, markdown and HTML escaped, bounded."""
    flat = " ".join(text.split())[:limit]
    return MARKDOWN_SPECIAL.sub(r"\\\1", flat.replace("&", "&amp;"))


def library_versions() -> dict[str, str]:
    return {name: version(name) for name in ("torch", "torchao", "transformers", "huggingface_hub")}


def card_metadata(info: SourceInfo, recipe: Recipe) -> ModelCardData:
    """YAML header: base_model and relation (Hub sources), license and pipeline tag from the source, tags."""
    copied = copied_fields(info.card_data)
    copied.setdefault("pipeline_tag", "text-generation")
    if info.repo_id:
        copied.update(base_model=info.repo_id, base_model_relation="quantized")
    return ModelCardData(library_name="transformers", tags=["torchao", info.model_type, recipe.name], **copied)


def reproduce_command(info: SourceInfo, plan: TypePlan, device: str) -> str:
    """The CLI line that makes this output again (never with a token): every choice the plan made, spelled as the
    CLI's options (`--int4-method` by the method's registry name, which the CLI takes)."""
    # a local source is named by its folder's name, never by this machine's path
    source = f"{info.repo_id}@{info.revision}" if info.repo_id and info.revision else info.repo_id or f"./{info.name}"
    parts = ["python", "-m", "quantizer", source, plan.output.target or "TARGET", "--quant-type", plan.name]
    if plan.group_size:
        parts += ["--group-size", str(plan.group_size)]
    if plan.int4:
        parts += ["--int4-method", plan.int4.method.name]
        if plan.int4.mixed_bits is not None:
            parts += ["--int4-mixed", f"{plan.int4.mixed_bits:g}"]
    parts += ["--device", device]
    return shlex.join(parts)


def render(
    info: SourceInfo,
    recipe: Recipe,
    result: RecipeResult,
    *,
    made_on_hardware: Hardware,
    eval_text_name: str,
) -> ModelCard:
    v = result.verify
    assert v is not None, "a card describes a verified output"
    source_link = f"[{info.repo_id}]({repo_url(info.repo_id)})" if info.repo_id else f"`{plain_text(info.name, 120)}`"
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
        runs_on=describe_devices(runs_on),
        device_map="auto" if "cpu" in runs_on else "cuda",
        versions=library_versions(),
        notes=result.notes,
        eval_text_name=eval_text_name,
        source_size=human_bytes(result.source_bytes),
        output_size=human_bytes(result.output_bytes),
        ratio=f"{result.size_ratio:.1%}" if result.size_ratio else "-",
        source_dtype=source_dtype(info.config),
        quantize_seconds=f"{result.seconds.get('quantize', 0):.1f}",
        sample_tokens=SAMPLE_TOKENS,
        peak_rss=human_bytes(result.peak_rss_bytes),
        peak_gpu=human_bytes(result.peak_gpu_bytes) if result.peak_gpu_bytes is not None else None,
        quantized_share=f"{result.quantized_share:.1%}" if result.quantized_share is not None else "-",
        peak_disk=human_bytes(result.peak_disk_bytes) if result.peak_disk_bytes is not None else None,
        sample_prompt=SAMPLE_PROMPT,
        command=result.command,
        vllm=result.vllm,
        mixed=mixed_fields(result.mixed),
        **verification_fields(v),
        **timing_fields(info, recipe.name, v, made_on_hardware.device),
    )


def mixed_fields(mixed: dict | None) -> dict | None:
    """The kept layers of a mixed-precision output, most sensitive first, with their measured error and rank."""
    if not mixed:
        return None
    sensitivity = mixed["sensitivity"]
    ranked = sorted(sensitivity, key=sensitivity.get, reverse=True)
    rows = [
        {"name": name, "error": f"{sensitivity[name]:.2%}", "rank": ranked.index(name) + 1} for name in mixed["kept"]
    ]
    return {
        "rows": rows,
        "total": len(sensitivity),
        "bits": f"{mixed['bits']:.2f}",
        "budget": f"{mixed['budget_bits']:g}",
    }


def verification_fields(v: VerifyResult) -> dict:
    """The card's figures from the verification."""
    return dict(
        eval_tokens=v.eval_tokens,
        ppl_source=fmt(v.ppl_source, ".3f", "not run (streamed)"),
        ppl_quantized=fmt(v.ppl_quantized, ".3f"),
        ppl_delta=fmt(v.ppl_delta_pct, "+.2f") + ("%" if v.ppl_delta_pct is not None else ""),
        top1=fmt(v.top1_agreement, ".1%"),
        logits_err=fmt(v.logits_rel_err, ".4f"),
        checked=v.checked,
        quantized_linear=v.quantized_linear,
        skipped_linear=v.skipped_linear,
        load_source=f"{v.load_seconds_source:.2f}",
        load_quantized=f"{v.load_seconds:.2f}",
        speed_source=f"{v.tokens_per_second_source:.1f}",
        speed_quantized=f"{v.tokens_per_second:.1f}",
        sample_source=plain_text(v.sample_source),
        sample=plain_text(v.sample),
    )


def timing_fields(info: SourceInfo, quant_type: str, v: VerifyResult, device: str) -> dict:
    """How fast the output ran, in which dtype and mode, and make bench's compiled figure for its type."""
    # the outputs are timed in the dtype the job computes in on this machine (float32 where bf16 is emulated), the
    # dtype a user of such a machine should load them in
    stored = stored_dtype(info.config)
    timing = compute_dtype(stored, device)
    speed = v.tokens_per_second / v.tokens_per_second_source if v.tokens_per_second_source else 1.0
    return dict(
        timing_dtype=str(timing).removeprefix("torch."),
        load_dtype="torch.float32" if timing == torch.float32 and stored != torch.float32 else None,
        slower=f"{speed:.2f}" if speed < 1 else None,
        compiled=compiled_figure(quant_type, device),
        bench_table=BENCH_TABLES.get(device),
        compiled_large=compiled_figure(quant_type, device, large=True),
        large_table=LARGE_BENCH_TABLES.get(device),
    )


def compiled_figure(quant_type: str, device: str, large: bool = False) -> dict | None:
    """`make bench`'s committed compiled figures for this type on `device` (the bundled model, or with `large` the
    1.7B random one), when measured: the card quotes them, labelled as another model's, beside the code that runs
    that mode."""
    rows = {r["name"]: r for r in bench_rows(device, large)}
    row, source = rows.get(quant_type), rows.get("source")
    if not (row and source and row.get("compiled_tokens_per_second") and source.get("compiled_tokens_per_second")):
        return None
    return {
        "vs_source": f"{row['compiled_tokens_per_second'] / source['compiled_tokens_per_second']:.2f}",
        "vs_eager": f"{row['compiled_tokens_per_second'] / row['tokens_per_second']:.2f}",
        "faster": row["compiled_tokens_per_second"] > row["tokens_per_second"],
    }
