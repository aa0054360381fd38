"""The benchmark runs end to end on a tiny model; the guide's numbers are the committed results'."""

from __future__ import annotations

import json
import math
from pathlib import Path

from benchmarks import compare as bench
from quantizer.hardware import Hardware
from quantizer.recipes import made_and_run_on

ROOT = Path(__file__).resolve().parents[1]


def test_bench_fills_every_column_for_every_cpu_type(tiny_model, tmp_path, capsys):
    code = bench.main(
        [
            str(tiny_model()),
            "--repeats",
            "1",
            "--new-tokens",
            "4",
            "--name",
            "tiny",
            "--output",
            str(tmp_path),
            "--int4-method",
            "asym",
            "--no-compile",  # compiled timing: the next test, on one type
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    data = json.loads((tmp_path / "tiny.json").read_text())
    names = [row["name"] for row in data["rows"]]
    assert names == ["source", *made_and_run_on(Hardware("cpu"))]
    for row in data["rows"]:
        for key, value in row.items():
            if key in ("quantize_seconds", "quantize_peak_rss_bytes") and row["name"] == "source":
                assert value is None
                continue
            if key in ("quantize_peak_gpu_bytes", "serve_peak_gpu_bytes", *COMPILED):  # none on a CPU, or asked
                assert value is None, (row["name"], key)
                continue
            assert value is not None, (row["name"], key)
            if isinstance(value, float):
                assert math.isfinite(value), (row["name"], key)
        assert row["bytes"] > 0 and row["tokens_per_second"] > 0 and row["next_token_ms"] > 0
    assert data["rows"][1]["quantize_peak_rss_bytes"] > 100e6  # a whole Python + torch process
    assert (tmp_path / "tiny.png").stat().st_size > 1000
    assert out.count("\n| ") >= len(names) and "| source |" in out


COMPILED = ("compiled_tokens_per_second", "compile_seconds", "compiled_error")


def test_bench_times_the_source_and_a_type_compiled_with_a_static_cache(tiny_model, tmp_path):
    """The compiled columns: torch.compile and a static cache, beside eager, on the source and one type."""
    argv = [str(tiny_model()), "--types", "int8_weight_only", "--repeats", "1", "--new-tokens", "4"]
    assert bench.main([*argv, "--name", "compiled", "--output", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "compiled.json").read_text())
    for row in data["rows"]:
        assert row["compiled_error"] is None, row["compiled_error"]
        assert row["compiled_tokens_per_second"] > 0 and row["compile_seconds"] > 0
    table = (tmp_path / "compiled.md").read_text()
    assert "| tokens/s compiled | compiled vs source compiled | compile (s) |" in table


def test_the_guide_quotes_the_committed_results():
    """Every table of every committed results file stands in the guide (the demo's in the README)."""
    guide = (ROOT / "docs" / "QUANTIZATION_GUIDE.md").read_text() + (ROOT / "README.md").read_text()
    for results in sorted((ROOT / "benchmarks" / "results").glob("*.md")):
        table = [line for line in results.read_text().splitlines() if line.startswith("|")]
        assert table, results
        for line in table:
            assert line in guide, f"{results.name}: {line}"


def test_the_int4_methods_benchmark_runs_end_to_end(tiny_model, tmp_path):
    """The benchmark behind the guide's int4 table, on a tiny model, the two instant methods and a GPTQ ablation
    (through the real pipeline, calibrated on the other domains)."""
    from benchmarks import int4_methods

    methods = ["rtn", "asym", "gptq-plain"]
    argv = ["--source", str(tiny_model()), "--methods", *methods, "--eval-tokens", "512", "--group-size", "32"]
    assert int4_methods.main([*argv, "--held-out", "pydoc", "licenses", "--results", str(tmp_path)]) == 0
    runs = json.loads((tmp_path / "int4_methods.json").read_text())["runs"]
    assert [(r["held_out"], r["calibration"]) for r in runs] == [
        ("pydoc", ["packages", "licenses", "dialog"]),
        ("licenses", ["pydoc", "packages", "dialog"]),
    ]
    assert [(r["method"], r["quant_type"]) for r in runs[0]["rows"]] == [
        ("rtn", "int4_weight_only"),
        ("asym", "int4_weight_only"),
        ("gptq-plain", "int4_weight_only"),
        ("asym", "int4_tile_packed"),  # the held-out default domain also gets the truly 4-bit format
    ]
    assert all(math.isfinite(r["ppl"]) for run in runs for r in run["rows"])
    text = (tmp_path / "int4_methods.md").read_text()
    assert "Held out: license texts of the Python packages this project pins" in text
    assert "| asym | int4_tile_packed |" in text
    assert "- gptq-plain: GPTQ without act-order or the clipping search" in text
    summary = text.split("Across the held-out domains:")[1]
    plain = [r["ppl_delta_pct"] for run in runs for r in run["rows"] if r["method"] == "gptq-plain"]
    assert f"| gptq-plain | int4_weight_only | {sum(plain) / 2:+.2f}% | {max(plain):+.2f}% |" in summary
    assert "| asym | int4_tile_packed |" not in summary  # measured on one domain only


def test_the_int4_mixed_benchmark_runs_end_to_end(tiny_model, tmp_path):
    """The benchmark behind the guide's mixed-precision table, on a tiny model and one held-out domain."""
    from benchmarks import int4_mixed

    argv = ["--source", str(tiny_model()), "--eval-tokens", "512", "--budgets", "5.5", "6.5"]
    assert int4_mixed.main([*argv, "--held-out", "pydoc", "--results", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "int4_mixed.json").read_text())["runs"][0]["rows"]
    assert [(r["method"], r["quant_type"], r["mixed"] and r["mixed"]["budget_bits"]) for r in rows] == [
        (None, "int8_weight_only", None),
        ("rtn", "int4_tile_packed", None),
        ("asym", "int4_tile_packed", None),
        ("gptq", "int4_tile_packed", None),
        ("gptq", "int4_tile_packed", 5.5),
        ("gptq", "int4_tile_packed", 6.5),
        ("gptq", "int4_weight_only", 6.5),  # the Intx output too, on the first domain
    ]
    kept = [len(r["mixed"]["kept"]) for r in rows if r["mixed"]]
    assert 0 < kept[0] < kept[1] and all(r["mixed"]["bits"] <= r["mixed"]["budget_bits"] for r in rows if r["mixed"])
    text = (tmp_path / "int4_mixed.md").read_text()
    assert "| gptq + mixed 6.5 | int4_tile_packed |" in text and "Across the held-out domains:" in text
