"""int4 methods compared on an off-grid SmolLM2-135M: bf16, torchao's rtn, asym and GPTQ, in one run.

    python -m benchmarks.int4_methods [--group-size 32] [--eval-tokens 8192]

Each method goes through the real pipeline (quantize, save, stock reload, verify) with the same
evaluation text (the first tokens of Python's pydoc topics; GPTQ calibrates on the other half).
Prints a markdown table and writes benchmarks/results/int4_methods.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from benchmarks.offgrid import build_offgrid
from quantizer.cli import quiet_libraries
from quantizer.demo import cache_root, prepare
from quantizer.pipeline import JobSpec, run
from quantizer.report import human_bytes

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--group-size", type=int, default=32)
    parser.add_argument("--eval-tokens", type=int, default=8192)
    parser.add_argument("--methods", nargs="+", default=["rtn", "asym", "gptq"])
    parser.add_argument("--quant-type", default="int4_weight_only")
    parser.add_argument("--source", type=Path, help="another model folder (default: the off-grid SmolLM2-135M)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where int4_methods.md and .json go")
    args = parser.parse_args(argv)
    quiet_libraries()
    source = args.source or build_offgrid(prepare(), cache_root() / "SmolLM2-135M-Instruct-offgrid")
    rows, baseline = [], None
    with tempfile.TemporaryDirectory() as out:
        for method in args.methods:
            started = time.perf_counter()
            report = run(
                JobSpec(
                    source=str(source),
                    target=f"offgrid-{method}",
                    quant_types=[args.quant_type],
                    group_size=args.group_size,
                    save_only=True,
                    output_dir=Path(out),
                    eval_tokens=args.eval_tokens,
                    int4_method=method,
                    track=False,
                )
            )
            result = report.results[0]
            assert result.ok, result.error
            v = result.verify
            baseline = baseline or {
                "method": "bf16 (source)",
                "ppl": v.ppl_source,
                "ppl_delta_pct": 0.0,
                "top1_agreement": 1.0,
                "seconds": 0.0,
                "bytes": result.source_bytes,
            }
            rows.append(
                {
                    "method": method,
                    "ppl": v.ppl_quantized,
                    "ppl_delta_pct": v.ppl_delta_pct,
                    "top1_agreement": v.top1_agreement,
                    "seconds": round(time.perf_counter() - started, 1),
                    "quantize_seconds": result.seconds.get("quantize"),
                    "bytes": result.output_bytes,
                }
            )
    table = [
        "| method | perplexity | Δ vs bf16 | top-1 agreement | job time (s) | quantize (s) | bytes |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in [baseline, *rows]:
        table.append(
            f"| {row['method']} | {row['ppl']:.3f} | {row['ppl_delta_pct']:+.2f}% | "
            f"{row['top1_agreement']:.1%} | {row['seconds']:.1f} | {row.get('quantize_seconds') or 0:.1f} | "
            f"{human_bytes(row['bytes'])} |"
        )
    model = args.source.name if args.source else "Off-grid SmolLM2-135M-Instruct"
    header = (
        f"{model}, {args.quant_type}, group size {args.group_size}, perplexity on "
        f"{args.eval_tokens} tokens of Python's pydoc topics (GPTQ calibrated on the other half); "
        "2-core CPU."
    )
    text = header + "\n\n" + "\n".join(table) + "\n"
    print(text)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "int4_methods.md").write_text(text)
    (args.results / "int4_methods.json").write_text(
        json.dumps({"settings": {k: str(v) for k, v in vars(args).items()}, "rows": [baseline, *rows]}, indent=2)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
