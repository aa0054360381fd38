"""int4 methods on held-out text: bf16, torchao's rtn, asym, HQQ and GPTQ on an off-grid SmolLM2-135M, in one run.

    python -m benchmarks.int4_methods [--group-size 32] [--eval-tokens 8192] [--held-out pydoc packages ...]

For each held-out domain (one of `quantizer.texts.SOURCES`), every method goes through the real
pipeline (quantize, save, stock reload, verify), evaluated on that domain's text and, for GPTQ,
calibrated on the other domains mixed: the text a method is measured on is never of a domain it was
tuned on. The GPTQ rows include its ablations (`quantizer.int4.ABLATIONS`: without act-order, without
the clipping search, without both), so each part's worth is measured on every held-out domain. On the
first domain, asym, HQQ (which torchao recommends for that format) and GPTQ are also written in the truly
4-bit tile-packed format and measured the same way. Prints markdown tables and writes
benchmarks/results/int4_methods.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchmarks.offgrid import build_offgrid
from quantizer.compute import describe_flags, describe_machine
from quantizer.console import quiet_libraries
from quantizer.demo import cache_root, prepare
from quantizer.int4 import ABLATIONS, method_description
from quantizer.layers import planned_linear_layers
from quantizer.pipeline import JobSpec, run
from quantizer.report import human_bytes
from quantizer.tables import markdown_table
from quantizer.texts import EVAL_SOURCE, SOURCES, mix_name, mixed

RESULTS = Path(__file__).resolve().parent / "results"
PACKED = "int4_tile_packed"
PACKED_METHODS = ("asym", "hqq", "gptq")
TARGET_PCT = 10  # the perplexity cost the default should stay within on held-out text


def measure(
    source: Path,
    out: Path,
    texts: dict[str, Path],
    method: str | None,
    quant_type: str,
    args,
    mixed: float | None = None,
) -> dict:
    """One job: the method's row (perplexity on the held-out text, time, bytes), and the source's figures; `mixed`
    is a mixed-precision budget (`--int4-mixed`)."""
    started = time.perf_counter()
    report = run(
        JobSpec(
            source=str(source),
            target=f"offgrid-{method}-{quant_type}-{mixed or 'uniform'}",
            quant_types=[quant_type],
            group_size=args.group_size,
            save_only=True,
            output_dir=out,
            eval_tokens=args.eval_tokens,
            eval_text=str(texts["eval"]),
            calibration_text=str(texts["calibration"]),
            int4_method=method,
            int4_mixed=mixed,
            track=False,
        )
    )
    result = report.results[0]
    assert result.ok, result.error
    v = result.verify
    return {
        "method": method,
        "quant_type": quant_type,
        "ppl": v.ppl_quantized,
        "ppl_delta_pct": v.ppl_delta_pct,
        "top1_agreement": v.top1_agreement,
        "seconds": round(time.perf_counter() - started, 1),
        "quantize_seconds": result.seconds.get("quantize"),
        "bytes": result.output_bytes,
        "mixed": {k: v for k, v in result.mixed.items() if k != "sensitivity"} if result.mixed else None,
        "source": {"ppl": v.ppl_source, "bytes": result.source_bytes},
    }


def table(rows: list[dict], linear_params: int) -> list[str]:
    source = rows[0]["source"]
    header = ("method", "type", "perplexity", "Δ vs bf16", "top-1 agreement", "quantize (s)", "s per M Linear params")
    cells = [("bf16 (source)", "-", f"{source['ppl']:.3f}", "+0.00%", "100.0%", "-", "-", human_bytes(source["bytes"]))]
    for row in rows:
        seconds = row["quantize_seconds"] or 0.0
        cells.append(
            (
                row["method"],
                row["quant_type"],
                f"{row['ppl']:.3f}",
                f"{row['ppl_delta_pct']:+.2f}%",
                f"{row['top1_agreement']:.1%}",
                f"{seconds:.1f}",
                f"{seconds / (linear_params / 1e6):.2f}",
                human_bytes(row["bytes"]),
            )
        )
    return markdown_table((*header, "bytes"), cells).splitlines()


def summary(runs: list[dict]) -> list[str]:
    """Each method over every held-out domain: the mean and worst perplexity cost, and how many domains stay
    within TARGET_PCT (the issue's bar for the default)."""
    rows = []
    keys = [(r["method"], r["quant_type"]) for r in runs[0]["rows"]]
    for method, quant_type in keys:
        deltas = [
            r["ppl_delta_pct"]
            for run in runs
            for r in run["rows"]
            if (r["method"], r["quant_type"]) == (method, quant_type)
        ]
        if len(deltas) < len(runs):  # measured on the first domain only (the tile-packed rows)
            continue
        within = sum(d <= TARGET_PCT for d in deltas)
        rows.append(
            (
                method,
                quant_type,
                f"{sum(deltas) / len(deltas):+.2f}%",
                f"{max(deltas):+.2f}%",
                f"{within} of {len(deltas)}",
            )
        )
    header = ("method", "type", "mean Δ", "worst Δ", f"domains within +{TARGET_PCT}%")
    return markdown_table(header, rows).splitlines()


def document(model: str, group_size: int, eval_tokens: int, linear_params: int, runs: list[dict], machine: dict) -> str:
    """The results file: a table per held-out domain, then each method across them."""
    header = (
        f"{model}, group size {group_size}, {linear_params / 1e6:.1f}M Linear parameters; measured on "
        f"{describe_flags(machine)}. Each table: perplexity on a domain no calibration text came from."
    )
    legend = [
        f"- {r['method']}: {method_description(r['method'])}" for r in runs[0]["rows"] if r["method"] in ABLATIONS
    ]
    if legend:
        header += "\n\nGPTQ's ablations (gptq is the default, with both parts):\n\n" + "\n".join(legend)
    sections = [
        f"Held out: {SOURCES[run['held_out']].domain} ({eval_tokens} tokens); GPTQ calibrated on "
        f"{mix_name(tuple(run['calibration']))}.\n\n" + "\n".join(table(run["rows"], linear_params))
        for run in runs
    ]
    sections.append("Across the held-out domains:\n\n" + "\n".join(summary(runs)))
    return header + "\n\n" + "\n\n".join(sections) + "\n"


@dataclass(frozen=True)
class HeldOutSource:
    path: Path
    model: str  # as the results name it
    linear_params: int


def held_out_source(folder: Path | None) -> HeldOutSource:
    """The model the held-out runs measure: `folder`, or the off-grid SmolLM2-135M (built once)."""
    path = folder or build_offgrid(prepare(), cache_root() / "SmolLM2-135M-Instruct-offgrid")
    config = json.loads((path / "config.json").read_text())
    linear_params = sum(layer.in_features * layer.out_features for layer in planned_linear_layers(config))
    return HeldOutSource(path, folder.name if folder else "Off-grid SmolLM2-135M-Instruct", linear_params)


def held_out_runs(
    domains: list[str],
    rows_for: Callable[[int, dict[str, Path], Path], list[dict]],
    show: Callable[[list[dict]], list[str]],
) -> list[dict]:
    """Each domain held out in turn: its text to evaluate on and the other domains mixed to calibrate on, written to
    a temporary folder; `rows_for(number, texts, out)` measures that domain's rows, printed (`show`) as they come."""
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for number, held_out in enumerate(domains):
            calibration = tuple(name for name in SOURCES if name != held_out)
            texts = {"eval": Path(tmp) / f"{held_out}.txt", "calibration": Path(tmp) / "calibration.txt"}
            texts["eval"].write_text(SOURCES[held_out].read(), encoding="utf-8")
            texts["calibration"].write_text(mixed(calibration), encoding="utf-8")
            rows = rows_for(number, texts, Path(tmp) / f"out-{held_out}")
            print("\n".join(show(rows)), flush=True)
            runs.append({"held_out": held_out, "calibration": list(calibration), "rows": rows})
    return runs


def write_results(args, name: str, text: str, machine: dict, linear_params: int, runs: list[dict]) -> None:
    """Print the results and write them to `args.results` as NAME.md and NAME.json (with the run's settings)."""
    print(text)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / f"{name}.md").write_text(text)
    settings = {k: str(v) for k, v in vars(args).items()}
    (args.results / f"{name}.json").write_text(
        json.dumps({"settings": settings, "machine": machine, "linear_params": linear_params, "runs": runs}, indent=2)
        + "\n"
    )


def held_out_parser(description: str, name: str) -> argparse.ArgumentParser:
    """The options every held-out benchmark takes; `name` is its results files' name."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--group-size", type=int, default=32)
    parser.add_argument("--eval-tokens", type=int, default=8192)
    domains = [EVAL_SOURCE, *(source for source in SOURCES if source != EVAL_SOURCE)]
    parser.add_argument("--held-out", nargs="+", default=domains, choices=SOURCES)
    parser.add_argument("--source", type=Path, help="another model folder (default: the off-grid SmolLM2-135M)")
    parser.add_argument("--results", type=Path, default=RESULTS, help=f"where {name}.md and .json go")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = held_out_parser(__doc__.splitlines()[0], "int4_methods")
    parser.add_argument("--methods", nargs="+", default=["rtn", "asym", "hqq", *ABLATIONS, "gptq"])
    parser.add_argument("--quant-type", default="int4_weight_only")
    parser.add_argument("--packed", action=argparse.BooleanOptionalAction, default=True, help="tile-packed rows too")
    args = parser.parse_args(argv)
    quiet_libraries()
    source = held_out_source(args.source)

    def rows_for(number: int, texts: dict[str, Path], out: Path) -> list[dict]:
        jobs = [(method, args.quant_type) for method in args.methods]
        if number == 0 and args.packed:
            jobs += [(method, PACKED) for method in args.methods if method in PACKED_METHODS]
        return [measure(source.path, out, texts, m, t, args) for m, t in jobs]

    runs = held_out_runs(args.held_out, rows_for, lambda rows: table(rows, source.linear_params))
    machine = describe_machine()
    text = document(source.model, args.group_size, args.eval_tokens, source.linear_params, runs, machine)
    write_results(args, "int4_methods", text, machine, source.linear_params, runs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
