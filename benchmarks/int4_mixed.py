"""Mixed-precision int4 on held-out text: GPTQ with its most sensitive layers kept int8, at a few budgets.

    python -m benchmarks.int4_mixed [--budgets 5.5 6.0] [--held-out pydoc packages ...]

On the off-grid SmolLM2-135M, for each held-out domain (calibrated on the other domains mixed, as
`benchmarks.int4_methods` does), through the real pipeline (quantize, save, stock reload, verify): int8_weight_only
(the size the bar is measured against), the tile-packed int4 with rtn, asym and GPTQ, and GPTQ with
`--int4-mixed` at each budget, tile-packed; on the first domain also the mixed Intx output at the largest budget.
Each row gives the output's bytes, its share of int8's, the bits per Linear weight as stored (padding included) and
as the budget counts them. Writes benchmarks/results/int4_mixed.{md,json}.
"""

from __future__ import annotations

from pathlib import Path

from benchmarks.int4_methods import PACKED, held_out_parser, held_out_runs, held_out_source, measure, write_results
from quantizer.compute import describe_flags, describe_machine
from quantizer.console import quiet_libraries
from quantizer.report import human_bytes
from quantizer.tables import markdown_table
from quantizer.texts import SOURCES, mix_name

INT8 = "int8_weight_only"
SIZE_BAR = 0.70  # of int8's size
EVERY_DOMAIN_PCT, MEAN_PCT = 10, 5  # the perplexity bar: on every held-out domain, and on average


def label(row: dict) -> str:
    if row["quant_type"] == INT8:
        return "int8 (torchao)"
    return f"{row['method']} + mixed {row['mixed']['budget_bits']:g}" if row["mixed"] else row["method"]


def stored_bits(row: dict, linear_params: int) -> float:
    """Bits per Linear weight as written: the output's bytes less what is not a Linear weight (the source's
    embedding, head and norms, passed through unchanged in bf16)."""
    other = row["source"]["bytes"] - 2 * linear_params
    return (row["bytes"] - other) * 8 / linear_params


def budget_bits(row: dict, group_size: int) -> str:
    if row["quant_type"] == INT8:
        return "8.0"
    return f"{row['mixed']['bits']:.2f}" if row["mixed"] else f"{4 + 32 / group_size:.2f}"


def table(rows: list[dict], linear_params: int, group_size: int) -> list[str]:
    int8_bytes = next(r["bytes"] for r in rows if r["quant_type"] == INT8)
    source = rows[0]["source"]
    header = (
        "method",
        "type",
        "perplexity",
        "Δ vs bf16",
        "top-1 agreement",
        "layers kept int8",
        "bits/weight (budget's count)",
        "bits/weight as stored",
        "bytes",
        "of int8's size",
    )
    cells = [("bf16 (source)", "-", f"{source['ppl']:.3f}", "+0.00%", "100.0%", "-", "16.0", "16.0", "", "")]
    cells[0] = (*cells[0][:8], human_bytes(source["bytes"]), f"{source['bytes'] / int8_bytes:.0%}")
    for row in rows:
        cells.append(
            (
                label(row),
                row["quant_type"],
                f"{row['ppl']:.3f}",
                f"{row['ppl_delta_pct']:+.2f}%",
                f"{row['top1_agreement']:.1%}",
                str(len(row["mixed"]["kept"])) if row["mixed"] else "-",
                budget_bits(row, group_size),
                f"{stored_bits(row, linear_params):.2f}",
                human_bytes(row["bytes"]),
                f"{row['bytes'] / int8_bytes:.0%}",
            )
        )
    return markdown_table(header, cells).splitlines()


def summary(runs: list[dict]) -> list[str]:
    """Each row over every held-out domain, against the bar: at most SIZE_BAR of int8's size, within
    EVERY_DOMAIN_PCT on every domain and MEAN_PCT on average."""
    keys = [(label(r), r["quant_type"]) for r in runs[0]["rows"] if r["quant_type"] != INT8]
    int8_bytes = next(r["bytes"] for r in runs[0]["rows"] if r["quant_type"] == INT8)
    rows = []
    for key in keys:
        found = [r for run in runs for r in run["rows"] if (label(r), r["quant_type"]) == key]
        if len(found) < len(runs):
            continue
        deltas = [r["ppl_delta_pct"] for r in found]
        size = found[0]["bytes"] / int8_bytes
        mean, worst = sum(deltas) / len(deltas), max(deltas)
        meets = size <= SIZE_BAR and worst <= EVERY_DOMAIN_PCT and mean <= MEAN_PCT
        rows.append((*key, f"{mean:+.2f}%", f"{worst:+.2f}%", f"{size:.0%}", "yes" if meets else "no"))
    header = (
        "method",
        "type",
        "mean Δ",
        "worst Δ",
        "of int8's size",
        f"≤{SIZE_BAR:.0%} of int8, ≤+{EVERY_DOMAIN_PCT}% everywhere, ≤+{MEAN_PCT}% mean",
    )
    return markdown_table(header, rows).splitlines()


def document(model: str, args, linear_params: int, runs: list[dict], machine: dict) -> str:
    header = (
        f"{model}, group size {args.group_size}, {linear_params / 1e6:.1f}M Linear parameters; measured on "
        f"{describe_flags(machine)}. Each table: perplexity on {args.eval_tokens} tokens of a domain no calibration "
        "text came from; mixed precision's sensitivities and GPTQ were measured on the other domains."
    )
    sections = [
        f"Held out: {SOURCES[run['held_out']].domain}; calibrated on {mix_name(tuple(run['calibration']))}.\n\n"
        + "\n".join(table(run["rows"], linear_params, args.group_size))
        for run in runs
    ]
    sections.append("Across the held-out domains:\n\n" + "\n".join(summary(runs)))
    return header + "\n\n" + "\n\n".join(sections) + "\n"


def jobs(budgets: list[float], first: bool) -> list[tuple[str | None, str, float | None]]:
    """(int4 method, type, mixed budget) of one domain's rows."""
    rows: list[tuple[str | None, str, float | None]] = [(None, INT8, None)]
    rows += [(method, PACKED, None) for method in ("rtn", "asym", "gptq")]
    rows += [("gptq", PACKED, bits) for bits in budgets]
    return rows + ([("gptq", "int4_weight_only", max(budgets))] if first else [])


def main(argv: list[str] | None = None) -> int:
    parser = held_out_parser(__doc__.splitlines()[0], "int4_mixed")
    parser.add_argument("--budgets", type=float, nargs="+", default=[5.5, 6.0])
    args = parser.parse_args(argv)
    quiet_libraries()
    source = held_out_source(args.source)

    def rows_for(number: int, texts: dict[str, Path], out: Path) -> list[dict]:
        return [measure(source.path, out, texts, m, t, args, bits) for m, t, bits in jobs(args.budgets, number == 0)]

    runs = held_out_runs(args.held_out, rows_for, lambda rows: table(rows, source.linear_params, args.group_size))
    machine = describe_machine()
    text = document(source.model, args, source.linear_params, runs, machine)
    write_results(args, "int4_mixed", text, machine, source.linear_params, runs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
