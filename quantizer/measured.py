"""The committed measurements (`benchmarks/results/`), read by the suggestion and the card: one reader for both."""

from __future__ import annotations

import json
from pathlib import Path

from .errors import InputError

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
BENCH_TABLES = {"cpu": "cpu-SmolLM2-135M-Instruct", "cuda": "cuda-SmolLM2-135M-offgrid"}  # `make bench`'s
# `make bench` on a 1.7B model of SmolLM2's architecture with random weights: speed only, where weights dominate
LARGE_BENCH_TABLES = {"cpu": "cpu-random-SmolLM2-1.7B"}


def load(name: str) -> dict:
    path = RESULTS / f"{name}.json"
    if not path.is_file():
        raise InputError(f"no measurements to read: {path.name} is missing (run `make bench` to make it).")
    return json.loads(path.read_text())


def bench_rows(device: str, large: bool = False) -> list[dict]:
    """`make bench`'s rows on `device` (the source's first), on the bundled model or (`large`) the 1.7B random one;
    empty where none was committed."""
    name = (LARGE_BENCH_TABLES if large else BENCH_TABLES).get(device)
    return load(name)["rows"] if name and (RESULTS / f"{name}.json").is_file() else []


def table_rows(name: str, quant_type: str) -> str:
    """A committed table's header, its separator, the source's row and `quant_type`'s, as written."""
    lines = (RESULTS / f"{name}.md").read_text().splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| type |"))
    rows = [line for line in lines if line.startswith(("| source |", f"| {quant_type} |"))]
    return "\n".join([lines[header], lines[header + 1], *rows])


def speed_vs_source(row: dict, source: dict) -> float:
    """A row's speed against the source in the fastest mode measured for both (eager, or compiled)."""
    eager = row["tokens_per_second"] / source["tokens_per_second"]
    compiled, base = row.get("compiled_tokens_per_second"), source.get("compiled_tokens_per_second")
    return max(eager, compiled / base) if compiled and base else eager
