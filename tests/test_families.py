"""The architecture matrix: every family of benchmarks.tiny_models through the CLI with every type made on a CPU,
as the guide shows it (benchmarks/results/architectures.json): what runs is quantized whole, reloaded by stock
transformers and close to the source; what is refused is refused before loading, with its reason."""

from __future__ import annotations

import json

import pytest

from benchmarks.architectures import NAME, RESULTS, TYPES, Cell, run_matrix
from benchmarks.tiny_models import FAMILIES
from quantizer.compute import describe_flags, int8_matmul_exact, machine_kind

MOE = {family for family, overrides in FAMILIES.items() if "num_experts_per_tok" in overrides}
EXPERT_TYPES = {"int8_weight_only", "int8_dynamic", "float8_weight_only"}
# the stock reload against the source on random tiny models, whose near-flat logits make int4's top-1 fragile
# (Gemma's scaled embeddings the most): (largest logits relative error, smallest top-1 agreement)
BOUNDS = {"int8_weight_only": (0.05, 0.9), "int8_dynamic": (0.05, 0.9), "float8_weight_only": (0.12, 0.75)}
# int8_dynamic where the CPU's int8 matmul saturates (no VNNI: compute.int8_matmul_exact), a kernel's error and not
# the checkpoint's: the committed emulated-bf16 matrix measures logits errors of 0.06-0.12 (0.22-0.33 for olmo2 and
# Gemma, whose activations are larger) and top-1 down to 34%, against 0.009-0.04 with exact sums
SATURATING_INT8_DYNAMIC_BOUNDS = (0.4, 0.3)
INT4_BOUNDS = (0.3, 0.4)
KINDS = {"native-bf16": NAME, "emulated-bf16": f"{NAME}-emulated-bf16"}  # compute.results_name of each kind


def committed(kind: str) -> list[Cell]:
    return [Cell(**cell) for cell in json.loads((RESULTS / f"{KINDS[kind]}.json").read_text())["cells"]]


def spread_by_type() -> dict[str, float]:
    """How far a cell's logits error moves between the two kinds of CPU, per type: the largest difference between
    the committed native-bf16 matrix (computed in bf16) and the emulated-bf16 one (computed in float32, on a CPU
    without native bf16 or VNNI, or this one limited to AVX2 with ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2,
    which reproduced a figure measured on an AVX2-only EPYC to the last digit), over every family."""
    spread: dict[str, float] = {}
    for a, b in zip(committed("native-bf16"), committed("emulated-bf16"), strict=True):
        if a.status == "ok":
            spread[a.quant_type] = max(spread.get(a.quant_type, 0.0), abs(a.logits_rel_err - b.logits_rel_err))
    return spread


@pytest.fixture(scope="module")
def matrix(demo_model) -> list[Cell]:
    return run_matrix(list(FAMILIES), TYPES)


def test_the_matrix_is_what_the_guide_shows(matrix):
    """What the code decides (status, reason, share) is the same on every CPU; the logits error is within the spread
    measured between the two kinds of CPU (plus 10% of it and 0.002 for a third kind's rounding) of the committed
    native-bf16 figure."""
    native, emulated = committed("native-bf16"), committed("emulated-bf16")
    decided = [(c.family, c.quant_type, c.status, c.reason, c.share) for c in matrix]
    assert decided == [(c.family, c.quant_type, c.status, c.reason, c.share) for c in native]
    assert decided == [(c.family, c.quant_type, c.status, c.reason, c.share) for c in emulated]
    spread = spread_by_type()
    for got, shown in zip(matrix, native, strict=True):
        if got.status == "ok":
            tolerance = 1.1 * spread[got.quant_type] + 0.002
            assert got.logits_rel_err == pytest.approx(shown.logits_rel_err, abs=tolerance), (got, tolerance)


def test_what_runs_is_quantized_whole_and_close_to_the_source(matrix):
    ran = [c for c in matrix if c.status == "ok"]
    assert len(ran) >= 100
    bounds = dict(BOUNDS)
    if not int8_matmul_exact():
        bounds["int8_dynamic"] = SATURATING_INT8_DYNAMIC_BOUNDS
    for cell in ran:
        assert cell.share == 1.0, cell
        max_error, min_top1 = bounds.get(cell.quant_type, INT4_BOUNDS)
        assert cell.logits_rel_err < max_error and cell.top1_agreement >= min_top1, cell
    assert not [c for c in matrix if c.status == "failed"]


def test_both_kinds_of_cpu_are_committed_and_named():
    """Each committed matrix names the CPU it came from; the emulated one was computed in float32."""
    for kind, name in KINDS.items():
        machine = json.loads((RESULTS / f"{name}.json").read_text())["machine"]
        assert machine_kind(machine) == kind and machine["flags"] and machine["cpu"]
        assert machine["compute_dtype_for_bf16"] == ("bfloat16" if kind == "native-bf16" else "float32")
        assert f"Measured on {describe_flags(machine)}." in (RESULTS / f"{name}.md").read_text()


def test_mixtures_of_experts_quantize_their_experts_or_refuse_saying_which_types_do(matrix):
    assert {"qwen3_moe", "mixtral", "qwen2_moe", "olmoe"} <= MOE
    for cell in (c for c in matrix if c.family in MOE):
        if cell.quant_type in EXPERT_TYPES:
            assert cell.status == "ok" and cell.share == 1.0, cell
        else:
            assert cell.status == "refused", cell
            assert "cannot quantize them" in cell.reason and "--allow-partial" in cell.reason
            assert "Use int8_weight_only, int8_dynamic, float8_weight_only, which quantize the experts" in cell.reason


def test_architectures_no_type_can_run_are_refused_with_the_reason(matrix):
    by = {(c.family, c.quant_type): c for c in matrix}
    for quant_type in TYPES:
        gpt2, falcon = by["gpt2", quant_type], by["falcon", quant_type]
        assert gpt2.status == "refused" and "Conv1D" in gpt2.reason and "would quantize 0%" in gpt2.reason
        assert falcon.status == "refused" and "FalconLinear computes input @ weight.T" in falcon.reason
