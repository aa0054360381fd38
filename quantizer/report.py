"""The job's results: one `RecipeResult` per quantization type, rendered as JSON or a table."""

from __future__ import annotations

import dataclasses
import enum
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

from torchao.core.config import AOBaseConfig

from .serving import VllmCheck
from .tables import markdown_table
from .verify import VerifyResult


def config_repr(config: AOBaseConfig) -> str:
    """The torchao config as code, naming only the fields that differ from their defaults."""
    parts = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        default = (
            f.default
            if f.default is not dataclasses.MISSING
            else (f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING)
        )
        if value != default:
            parts.append(f"{f.name}={value_repr(value)}")
    return f"{type(config).__name__}({', '.join(parts)})"


def value_repr(value) -> str:
    """Enums as `Int4PackingFormat.TILE_PACKED_TO_4D` (their repr is not code); the rest as repr."""
    if isinstance(value, enum.Enum):
        return f"{type(value).__name__}.{value.name}"
    return repr(value)


@dataclass(frozen=True, kw_only=True)
class RecipeResult:
    """One type's outcome: what was planned, what each stage measured, and where the output went."""

    quant_type: str
    suffix: str
    status: str = "pending"  # ok | failed
    error: str | None = None
    torchao_config: str | None = None
    format: str | None = None
    device: str | None = None
    group_size: int | None = None
    int4_method: str | None = None  # how the int4 values were chosen (Int4Choice.label), for the int4 types
    int4_estimated_seconds: float | None = None  # a calibrated method's time as estimated at preflight (int4.cost)
    mixed: dict | None = (
        None  # mixed precision (`int4.mixed.MixedPlan.to_dict`): budget, bits, kept layers, sensitivity
    )
    target_repo: str | None = None
    output_dir: str | None = None
    url: str | None = None
    source_bytes: int | None = None
    output_bytes: int | None = None
    size_ratio: float | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    peak_rss_bytes: int | None = None
    peak_gpu_bytes: int | None = None  # CUDA memory allocated at the peak, for a job on a GPU
    peak_disk_bytes: int | None = None  # the job's folders at their fullest, for a streamed job
    quantized_share: float | None = None  # of the Linear-like weights (layers.WeightShare), by elements
    verify: VerifyResult | None = None
    vllm: VllmCheck | None = None  # whether vLLM can serve the output, read as vLLM reads it (`serving`)
    notes: tuple[str, ...] = ()
    command: str | None = None  # the CLI line that makes this output again (`card.reproduce_command`)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass(kw_only=True)
class Report:
    source: str
    revision: str | None
    device: str
    hardware: str
    results: list[RecipeResult] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)  # shared stages (preflight, reference)
    ppl_source: float | None = None
    sample_source: str | None = None
    eval_text: str | None = None  # what perplexity, logits and top-1 were measured on
    calibration_text: str | None = None  # what a calibrated int4 method was tuned on (None: no calibration)
    compute: str | None = None  # the dtype forward passes ran in, and why (`compute.reason`)
    error: str | None = None  # a failure before any recipe ran
    tracking: str | None = None  # where the Trackio runs were recorded

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict) -> Report:
        """The report again from `to_dict`'s values: a job that ran elsewhere (a Hugging Face Job) sends it back
        as JSON. Keys this version does not know are dropped, so an older client reads a newer Job's report."""
        results = [recipe_result_from_dict(r) for r in data.get("results") or []]
        return cls(**{**known_fields(cls, data), "results": results})


def known_fields(cls, data: dict) -> dict:
    names = {f.name for f in dataclasses.fields(cls)}
    return {key: value for key, value in data.items() if key in names}


def recipe_result_from_dict(data: dict) -> RecipeResult:
    values = known_fields(RecipeResult, data)
    if values.get("verify"):
        values["verify"] = VerifyResult(**known_fields(VerifyResult, values["verify"]))
    if values.get("vllm"):
        values["vllm"] = VllmCheck(**known_fields(VllmCheck, values["vllm"]))
    values["notes"] = tuple(values.get("notes") or ())
    return RecipeResult(**values)


def fmt(value: float | None, spec: str, missing: str = "-") -> str:
    """Format a figure that may not have been measured (streaming verifies without the source's figures)."""
    return missing if value is None else format(value, spec)


def human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def percent_change(value: float | None) -> str:
    return fmt(value, "+.2f") + ("%" if value is not None else "")


# Each column of a type's row, by name: the CLI's table and the page's results read these, so a figure is shown the
# same way everywhere ("-" where it was not measured)
RESULT_CELLS: dict[str, Callable[[RecipeResult], str]] = {
    "type": lambda r: r.quant_type,
    "status": lambda r: r.status,
    "size": lambda r: human_bytes(r.output_bytes),
    "ratio": lambda r: fmt(r.size_ratio, ".1%"),
    "ppl source": lambda r: fmt(r.verify and r.verify.ppl_source, ".2f"),
    "ppl": lambda r: fmt(r.verify and r.verify.ppl_quantized, ".2f"),
    "ppl Δ": lambda r: percent_change(r.verify and r.verify.ppl_delta_pct),
    "top-1": lambda r: fmt(r.verify and r.verify.top1_agreement, ".1%"),
    "logits err": lambda r: fmt(r.verify and r.verify.logits_rel_err, ".4f"),
    "layers q/skip": lambda r: f"{r.verify.quantized_linear}/{r.verify.skipped_linear}" if r.verify else "-",
    "weights quantized": lambda r: fmt(r.quantized_share, ".0%"),
    "time": lambda r: f"{sum(r.seconds.values()):.1f}s" if r.seconds else "-",
    "peak RSS": lambda r: human_bytes(r.peak_rss_bytes),
    "output": lambda r: r.url or r.output_dir or "not kept",
}
CLI_COLUMNS = ("type", "status", "size", "ratio", "ppl", "ppl Δ", "top-1", "logits err", "layers q/skip",
               "weights quantized", "time", "peak RSS", "output")  # fmt: skip


def result_row(result: RecipeResult, columns: Sequence[str]) -> list[str]:
    return [RESULT_CELLS[column](result) for column in columns]


def results_table(report: Report) -> str:
    """A markdown table, one row for the source and one per type."""
    source_bytes = next((r.source_bytes for r in report.results if r.source_bytes), None)
    source = {"type": "source", "size": human_bytes(source_bytes), "ratio": "100%", "output": report.source}
    source["ppl"] = fmt(report.ppl_source, ".2f")
    rows = [[source.get(column, "") for column in CLI_COLUMNS]]
    rows += [result_row(r, CLI_COLUMNS) for r in report.results]
    return markdown_table(CLI_COLUMNS, rows)
