"""The architecture matrix: every family of benchmarks.tiny_models through the CLI with every type made on a CPU,
as the guide shows it (benchmarks/results/architectures.json): what runs is quantized whole, reloaded by stock
transformers and close to the source; what is refused is refused before loading, with its reason."""

from __future__ import annotations

import json

import pytest

from benchmarks.architectures import NAME, RESULTS, TYPES, Cell, run_matrix
from benchmarks.tiny_models import FAMILIES

MOE = {family for family, overrides in FAMILIES.items() if "num_experts_per_tok" in overrides}
EXPERT_TYPES = {"int8_weight_only", "int8_dynamic", "float8_weight_only"}
# the stock reload against the source on random tiny models, whose near-flat logits make int4's top-1 fragile
# (Gemma's scaled embeddings the most): (largest logits relative error, smallest top-1 agreement)
BOUNDS = {"int8_weight_only": (0.05, 0.9), "int8_dynamic": (0.05, 0.9), "float8_weight_only": (0.12, 0.75)}
INT4_BOUNDS = (0.3, 0.4)


@pytest.fixture(scope="module")
def matrix(demo_model) -> list[Cell]:
    return run_matrix(list(FAMILIES), TYPES)


def test_the_matrix_is_what_the_guide_shows(matrix):
    committed = [Cell(**cell) for cell in json.loads((RESULTS / f"{NAME}.json").read_text())["cells"]]
    assert [(c.family, c.quant_type, c.status, c.reason, c.share) for c in matrix] == [
        (c.family, c.quant_type, c.status, c.reason, c.share) for c in committed
    ]
    for got, shown in zip(matrix, committed, strict=True):
        if got.status == "ok":
            assert got.logits_rel_err == pytest.approx(shown.logits_rel_err, abs=0.005), (got.family, got.quant_type)


def test_what_runs_is_quantized_whole_and_close_to_the_source(matrix):
    ran = [c for c in matrix if c.status == "ok"]
    assert len(ran) >= 100
    for cell in ran:
        assert cell.share == 1.0, cell
        max_error, min_top1 = BOUNDS.get(cell.quant_type, INT4_BOUNDS)
        assert cell.logits_rel_err < max_error and cell.top1_agreement >= min_top1, cell
    assert not [c for c in matrix if c.status == "failed"]


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
