"""Which type to make for where the model will run, read from the committed measurements, with the row that says why.

The tables are `make bench`'s (benchmarks/results/cpu-*.json on a CPU, cuda-*.json on a lent GPU) and the
check of which types vLLM loads (benchmarks/results/vllm.json, from `benchmarks.served`). The rule, the same for
every target: among the types measured there that lose at most `QUALITY_BAR` percent perplexity, the fastest in
its fastest measured mode (eager, or compiled with a static cache), then the smaller; where none was measured
within the bar, the one that loses least. An int4 type comes with the int4 method the held-out table favours.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import int4, recipes
from .errors import InputError
from .measured import BENCH_TABLES, load, speed_vs_source, table_rows

QUALITY_BAR = 1.0  # percent perplexity a suggested type may lose
TABLES = {**BENCH_TABLES, "vllm": BENCH_TABLES["cuda"]}  # vLLM runs on CUDA: the CUDA table, types it loads
TARGET_NAMES = {"cpu": "a CPU", "cuda": "a CUDA GPU", "vllm": "vLLM (on a CUDA GPU)"}
INT4_TABLE = "int4_methods"
VLLM_TABLE = "vllm"


@dataclass(frozen=True, kw_only=True)
class Suggestion:
    target: str
    quant_type: str
    int4_method: str | None
    why: str  # the rule's outcome in a sentence
    rows: str  # the measured table's header, the source's row and the type's, as committed
    table: str  # the committed file the rows come from

    def text(self) -> str:
        method = f" with --int4-method {self.int4_method}" if self.int4_method else ""
        return (
            f"For {TARGET_NAMES[self.target]}: {self.quant_type}{method}. {self.why}\n\n"
            f"From benchmarks/results/{self.table}.md:\n\n{self.rows}"
        )


def served_by_vllm() -> set[str]:
    """The types whose outputs vLLM's torchao loader reads (benchmarks/results/vllm.json)."""
    return {name for name, check in load(VLLM_TABLE)["types"].items() if check["loads"]}


def favoured_int4_method() -> str:
    """The int4 method with the lowest mean perplexity cost over the held-out domains (benchmarks.int4_methods)."""
    costs: dict[str, list[float]] = {}
    for run in load(INT4_TABLE)["runs"]:
        for row in run["rows"]:
            if row["quant_type"] == "int4_weight_only" and row["method"] in int4.METHODS:
                costs.setdefault(row["method"], []).append(row["ppl_delta_pct"])
    complete = {m: sum(c) / len(c) for m, c in costs.items() if len(c) == max(map(len, costs.values()))}
    return min(complete, key=complete.get)


def suggest(target: str) -> Suggestion:
    if target not in TABLES:
        raise InputError(f"unknown target '{target}': choose one of {', '.join(TABLES)}.")
    table = TABLES[target]
    rows = load(table)["rows"]
    source = next(r for r in rows if r["name"] == "source")
    candidates = [r for r in rows if r["name"] != "source"]
    if target == "vllm":
        served = served_by_vllm()
        candidates = [r for r in candidates if r["name"] in served]
    if not candidates:
        raise InputError(f"no type measured for {TARGET_NAMES[target]} yet: run `make bench` there.")
    within = [r for r in candidates if r["ppl_delta_pct"] <= QUALITY_BAR]
    if within:
        best = max(within, key=lambda r: (speed_vs_source(r, source), -r["bytes"]))
        speed = speed_vs_source(best, source)
        why = (
            f"Of the types measured within {QUALITY_BAR:g}% perplexity of the source, it runs fastest, at "
            f"{best['size_ratio']:.1%} of the source's size: {speed:.2f}x the source's speed in the fastest mode "
            "measured"
            + (
                " (every type measured there is slower than its source)."
                if max(speed_vs_source(r, source) for r in candidates) < 1
                else "."
            )
        )
    else:
        best = min(candidates, key=lambda r: (r["ppl_delta_pct"], -speed_vs_source(r, source)))
        why = (
            f"No type measured there ({', '.join(r['name'] for r in candidates)}) stays within {QUALITY_BAR:g}% "
            f"perplexity; it loses least ({best['ppl_delta_pct']:+.2f}%), at {best['size_ratio']:.1%} of the "
            "source's size."
        )
    method = favoured_int4_method() if recipes.RECIPES[best["name"]].uses_group_size else None  # an int4 type
    return Suggestion(
        target=target,
        quant_type=best["name"],
        int4_method=method if method in _calibrated_methods(target) else None,
        why=why,
        rows=table_rows(table, best["name"]),
        table=table,
    )


def _calibrated_methods(target: str) -> set[str]:
    """The int4 methods the CLI takes for outputs made for `target` (on CUDA torchao chooses tile-packed values
    itself, so no method is passed)."""
    return set(int4.METHODS) if target == "cpu" else set()
