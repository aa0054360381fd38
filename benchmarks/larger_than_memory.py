"""A job on a model that does not fit in memory, through `python -m quantizer` as a user runs it.

    python -m benchmarks.larger_than_memory limit [--size-gb 2] [--limit-bytes 1700000000] [--types T ...]
    python -m benchmarks.larger_than_memory scale [--size-gb 30]

`limit`: each type twice on the same synthetic SmolLM3-shaped model, once as it is (it fits: the
standard engine and the full verification) and once with QUANTIZER_MEMORY_LIMIT below what loading
it takes (the streaming engine and the bounded verification); the ratio is the second job's peak
RSS against the first's. `scale`: one job on a model larger than this machine's memory, with the
memory of a free CPU Space (16 GB) as the limit. Each job is a child process; peak RSS is the
kernel's maximum resident set size for it (wait4), disk is the source plus the output folder.
Writes benchmarks/results/larger-than-memory-*.md/.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.streaming import make_synthetic
from quantizer.demo import prepare
from quantizer.engine import copy_side_files
from quantizer.report import human_bytes
from quantizer.safetensors_io import weights_bytes

RESULTS = Path(__file__).resolve().parent / "results"
FREE_SPACE_MEMORY = 16_000_000_000


def run_job(source: Path, out: Path, quant_type: str, limit: int | None) -> dict:
    """One CLI job in a child process: wall seconds, peak RSS, output size and what verification checked."""
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("QUANTIZER_MEMORY_LIMIT", None)
    if limit:
        env["QUANTIZER_MEMORY_LIMIT"] = str(limit)
    argv = [sys.executable, "-m", "quantizer", str(source), "model", "--quant-type", quant_type]
    argv += ["--save-only", "--output-dir", str(out), "--json", "--no-tracking"]
    started = time.perf_counter()
    with tempfile.TemporaryFile() as stdout:
        child = subprocess.Popen(argv, env=env, stdout=stdout)
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - started
        stdout.seek(0)
        text = stdout.read().decode()
    code = os.waitstatus_to_exitcode(status)
    report = json.loads(text) if text.strip() else {"results": [{}]}
    result = report["results"][0]
    return {
        "quant_type": quant_type,
        "memory_limit": limit,
        "exit_code": code,
        "status": result.get("status"),
        "seconds": round(seconds, 1),
        "peak_rss_bytes": usage.ru_maxrss * 1024,
        "output_bytes": weights_bytes(out / "model") if (out / "model").is_dir() else None,
        "checked": (result.get("verify") or {}).get("checked"),
        "error": result.get("error"),
    }


def synthetic_with_tokenizer(workdir: Path, size_gb: float, shard_mb: int) -> Path:
    source = make_synthetic(workdir / f"synthetic-{size_gb:g}gb", size_gb, shard_mb)
    copy_side_files(prepare(), source)  # the bundled model's tokenizer: the job evaluates real text
    return source


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("limit", "scale"))
    parser.add_argument("--size-gb", type=float, default=None)
    parser.add_argument("--shard-mb", type=int, default=500)
    parser.add_argument("--limit-bytes", type=int, default=1_700_000_000)
    # int8: the same job with and without the limit (int4_weight_only would switch from GPTQ to asym when
    # streaming), and one whose verification passes on random weights (a synthetic model's near-uniform
    # logits leave int4's top-1 agreement below the sanity floor)
    parser.add_argument("--types", nargs="+", default=["int8_weight_only"])
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "quantizer-ltm-bench")
    args = parser.parse_args(argv)
    size = args.size_gb or (2.0 if args.mode == "limit" else 30.0)
    source = synthetic_with_tokenizer(args.workdir, size, args.shard_mb)
    source_bytes = weights_bytes(source)
    rows = []
    for quant_type in args.types if args.mode == "limit" else args.types[:1]:
        runs = (None, args.limit_bytes) if args.mode == "limit" else (FREE_SPACE_MEMORY,)
        for limit in runs:
            rows.append(run_job(source, args.workdir / "out", quant_type, limit))
            print(json.dumps(rows[-1]), flush=True)
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    lines = [
        f"`python -m quantizer` jobs (save-only, verification included) on a synthetic SmolLM3-shaped model of "
        f"{human_bytes(source_bytes)} bf16 in {args.shard_mb} MB shards; 2-core CPU, {human_bytes(total)} RAM.",
        "",
        "| type | memory limit | status | time (s) | peak RSS | vs fitting job | output | disk (source + output) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    fitting: dict[str, int] = {}
    for row in rows:
        if row["memory_limit"] is None and args.mode == "limit":
            fitting[row["quant_type"]] = row["peak_rss_bytes"]
        base = fitting.get(row["quant_type"]) if row["memory_limit"] else None
        ratio = f"{row['peak_rss_bytes'] / base:.0%}" if base else "-"
        lines.append(
            f"| {row['quant_type']} | {human_bytes(row['memory_limit']) if row['memory_limit'] else 'none'} | "
            f"{row['status']} | {row['seconds']:.1f} | {human_bytes(row['peak_rss_bytes'])} | "
            f"{ratio} | {human_bytes(row['output_bytes'])} | "
            f"{human_bytes(source_bytes + (row['output_bytes'] or 0))} |"
        )
    lines += ["", "What each job checked:", ""]
    lines += [f"- {r['quant_type']}, limit {r['memory_limit'] or 'none'}: {r['checked'] or r['error']}" for r in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = f"larger-than-memory-{args.mode}"
    (RESULTS / f"{name}.md").write_text(text)
    (RESULTS / f"{name}.json").write_text(json.dumps({"source_bytes": source_bytes, "rows": rows}, indent=2) + "\n")
    return 0 if all(r["exit_code"] == 0 for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
