"""The architecture matrix: every family of `benchmarks.tiny_models.FAMILIES` through the CLI, once per type.

    python -m benchmarks.architectures [--families F ...] [--types T ...]

Each family's tiny random model (two layers, the demo model's tokenizer) goes through
`quantizer.cli.main` as a user runs it (--save-only, no tracking), one job asking for every type: a
type the job refuses before loading records the reason and leaves the job; a type it runs is
quantized, saved, reloaded by stock transformers and compared with the source by the job's own
verification (logits relative error and top-1 agreement on a fixed batch), and the share of the
Linear-like weights it quantized is read from the report. Writes results/architectures.{json,md} on a CPU with
native bf16, results/architectures-emulated-bf16.{json,md} on one without (`compute.results_name`), each naming the
CPU; tests/test_families.py runs the same matrix and checks it against them.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import multiprocessing
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from quantizer import recipes
from quantizer.cli import main
from quantizer.compute import describe_flags, describe_machine, results_name
from quantizer.demo import prepare
from quantizer.hardware import Hardware

from .tiny_models import FAMILIES, build_tiny_family

RESULTS = Path(__file__).resolve().parent / "results"
NAME = "architectures"
CPU = Hardware("cpu")
TYPES = [r.name for r in recipes.RECIPES.values() if r.unsupported_reason(CPU) is None]  # made on this CPU
JOB_OPTIONS = ["--eval-tokens", "256", "--calibration-tokens", "256", "--no-tracking", "--device", "cpu"]


@dataclass(frozen=True, kw_only=True)
class Cell:
    family: str
    quant_type: str
    status: str  # "ok", "refused" (before loading) or "failed"
    share: float | None = None  # of the Linear-like weights, quantized (from the report)
    logits_rel_err: float | None = None  # stock reload against the source
    top1_agreement: float | None = None
    reason: str = ""  # why it was refused or failed

    @property
    def shown(self) -> str:
        """The matrix cell: ok with the share and the logits error, or the refusal in short."""
        if self.status == "ok":
            return f"ok {self.share:.0%} ({self.logits_rel_err:.3f})"
        return f"{self.status}: {short_reason(self.reason)}"


def short_reason(reason: str) -> str:
    """The refusal's cause in a few words, for the table (the whole sentence is in the JSON)."""
    for cause, words in (
        ("Conv1D", "Conv1D layers"),
        ("forward of their own", "Linear forward torchao cannot run"),
        ("Intx int4 tensor", "no 3-D Intx int4"),
        ("CPU packer writes 2-D", "no 3-D tile-packed on CPU"),
    ):
        if cause in reason:
            return words
    return reason[:60]


def run_job(folder: Path, types: list[str], out: Path) -> tuple[str, dict | None]:
    """One CLI job, in this process: its stderr and its report (None: refused before loading)."""
    stdout, stderr = io.StringIO(), io.StringIO()
    argv = [str(folder), folder.name, *(a for t in types for a in ("--quant-type", t))]
    argv += ["--save-only", "--output-dir", str(out), "--json"]
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        main([*argv, *JOB_OPTIONS])
    report = json.loads(stdout.getvalue()) if stdout.getvalue().strip() else None
    return stderr.getvalue(), report


def refusal(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    return lines[-1].removeprefix("error:").strip() if lines else stderr.strip()[-300:]


def run_family(family: str, types: list[str], workdir: Path, tokenizer_dir: Path) -> list[Cell]:
    """One job of every type, as a user asking for them all would run it: a refused job names the type it
    refuses (or refuses them all), which leaves the job and is recorded; the rest run together."""
    folder = build_tiny_family(family, workdir / family, tokenizer_dir)
    refused: dict[str, str] = {}
    remaining, report = list(types), None
    while remaining:
        stderr, report = run_job(folder, remaining, workdir / "out" / family)
        if report is not None:
            break
        reason = refusal(stderr).replace(str(folder), family)
        named = [t for t in remaining if reason.startswith(f"{t} ")] or remaining
        refused.update({t: reason for t in named})
        remaining = [t for t in remaining if t not in named]
    results = {r["quant_type"]: r for r in (report or {}).get("results", [])}
    cells = []
    for quant_type in types:
        if quant_type in refused:
            cells.append(Cell(family=family, quant_type=quant_type, status="refused", reason=refused[quant_type]))
            continue
        result = results[quant_type]
        verify = result.get("verify") or {}
        cells.append(
            Cell(
                family=family,
                quant_type=quant_type,
                status="ok" if result["status"] == "ok" else "failed",
                share=result.get("quantized_share"),
                logits_rel_err=verify.get("logits_rel_err"),
                top1_agreement=verify.get("top1_agreement"),
                reason=result.get("error") or "",
            )
        )
    return cells


def run_matrix(families: list[str], types: list[str], workers: int = 2) -> list[Cell]:
    """Every family, `workers` at a time in processes of their own (a tiny model's job is mostly Python, one
    core each), in the order given."""
    tokenizer_dir = prepare()
    with tempfile.TemporaryDirectory(prefix="architectures-") as tmp:
        jobs = [(family, types, Path(tmp), tokenizer_dir) for family in families]
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context, initializer=one_thread) as pool:
            return [cell for cells in pool.map(run_family, *zip(*jobs, strict=True)) for cell in cells]


def one_thread() -> None:
    torch.set_num_threads(1)


def render(cells: list[Cell], types: list[str]) -> str:
    families = list(dict.fromkeys(c.family for c in cells))
    by = {(c.family, c.quant_type): c for c in cells}
    lines = [
        "| family | " + " | ".join(types) + " |",
        "|---|" + "---|" * len(types),
        *(f"| {family} | " + " | ".join(by[family, t].shown for t in types) + " |" for family in families),
    ]
    return "\n".join(lines) + "\n"


def main_cli(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", nargs="*", default=list(FAMILIES))
    parser.add_argument("--types", nargs="*", default=TYPES)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    cells = run_matrix(args.families, args.types)
    seconds = time.perf_counter() - started
    machine = describe_machine()
    table = render(cells, args.types) + f"\nMeasured on {describe_flags(machine)}.\n"
    name = results_name(NAME, machine)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(
        json.dumps({"seconds": round(seconds, 1), "machine": machine, "cells": [asdict(c) for c in cells]}, indent=2)
        + "\n"
    )
    (RESULTS / f"{name}.md").write_text(table)
    print(table)
    print(f"{len(cells)} jobs in {seconds:.0f} s")


if __name__ == "__main__":
    main_cli()
