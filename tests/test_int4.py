"""Better int4: the asymmetric grid, GPTQ's error compensation, and how the method is chosen."""

from __future__ import annotations

import pytest
import torch
from torchao.quantization.quant_primitives import _choose_qparams_and_quantize_affine_hqq

from quantizer import int4, recipes
from quantizer.errors import InputError
from quantizer.hardware import Hardware
from quantizer.int4.gptq import quantize_gptq
from quantizer.texts import (
    CALIBRATION_PACKAGES,
    CALIBRATION_SOURCES,
    DEFAULT_CALIBRATION_TOKENS,
    DEFAULT_EVAL_TEXT_NAME,
    DIALOG_PACKAGE,
    EVAL_SOURCE,
    MIX_CHUNK,
    SOURCES,
    calibration_ids,
    default_calibration_text,
)
from tests.support.app_server import ROOT

SMOL_CONFIG = {
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "head_dim": 64,
}
INT4 = [recipes.get("int4_weight_only")]


def choose_int4_method(requested, chosen_recipes, hardware, config, streaming=False):
    """The method name the job would use (as preflight asks the int4 registry), and why."""
    formats = {r.name: f for r in chosen_recipes if (f := r.int4_format(hardware))}
    choice = int4.choose_method(
        requested, formats, config, streaming=streaming, cuda=hardware.is_cuda, calibration_tokens=16384
    )
    return (choice.method.name if choice.method else None), choice.reason


def test_asym_recovers_weights_that_sit_on_its_grid():
    torch.manual_seed(0)
    g = 32
    scale = (torch.rand(8, 4) * 0.01 + 0.001).to(torch.bfloat16)
    zero = (torch.rand(8, 4) * 4 - 2).to(torch.bfloat16)
    q = torch.randint(-8, 8, (8, 128))
    q[:, ::g], q[:, 1::g] = -8, 7  # every group spans the whole grid
    w = (q.float() - zero.float().repeat_interleave(g, 1)) * scale.float().repeat_interleave(g, 1)
    quant = int4.quantize_asym(w.to(torch.bfloat16), g)
    assert torch.allclose(quant.dequantize(g), w.to(torch.bfloat16).float(), atol=2e-3)
    assert quant.zero_point.dtype == torch.bfloat16 and quant.qdata.dtype == torch.int8
    assert int(quant.qdata.min()) >= -8 and int(quant.qdata.max()) <= 7


def test_hqq_gives_torchaos_hqq_values_on_the_shared_grid():
    """The hqq method's values, read as the shared grid's (q - zero) * scale, are torchao's own HQQ reconstruction,
    and on weights off any grid they are closer to the weights than asym's in the mean (HQQ's own objective)."""
    torch.manual_seed(0)
    w = (torch.randn(96, 256) * 0.02).to(torch.bfloat16)
    q, scale, zero, _ = _choose_qparams_and_quantize_affine_hqq(
        w, nbits=4, group_size=32, axis=1, compute_dtype=torch.bfloat16, device="cpu", raw_output=True
    )
    own = ((q.float().reshape(-1, 32) - zero.float().reshape(-1, 1)) * scale.float().reshape(-1, 1)).reshape(w.shape)
    quant = int4.get_method("hqq").quantize_tensor(w, 32)
    assert int(quant.qdata.min()) >= -8 and int(quant.qdata.max()) <= 7 and quant.zero_point.dtype == torch.bfloat16
    assert torch.allclose(quant.dequantize(32), own, atol=1e-3)
    asym = int4.get_method("asym").quantize_tensor(w, 32)
    error = {name: (g.dequantize(32) - w.float()).abs().mean() for name, g in (("hqq", quant), ("asym", asym))}
    assert error["hqq"] < error["asym"]


def test_gptq_lowers_the_output_error_against_round_to_nearest():
    torch.manual_seed(0)
    k, n, g = 256, 64, 32
    mixing = torch.randn(k, k) / k**0.5
    x = torch.randn(4096, k) @ mixing + 0.1 * torch.randn(4096, k)  # correlated inputs, as real activations are
    w = torch.randn(n, k)
    hessian = 2 * x.T @ x / x.shape[0]
    rtn = int4.quantize_asym(w, g).dequantize(g)
    gptq = quantize_gptq(w, hessian, g).dequantize(g)
    err_rtn = (x @ (w - rtn).T).norm()
    err_gptq = (x @ (w - gptq).T).norm()
    assert err_gptq < 0.75 * err_rtn


def test_default_is_gptq_when_it_fits_the_budget_else_asym(monkeypatch):
    cpu = Hardware("cpu")
    method, why = choose_int4_method(None, INT4, cpu, SMOL_CONFIG)
    assert method == "gptq" and "about" in why
    monkeypatch.setenv("QUANTIZER_GPTQ_BUDGET", "30")
    method, why = choose_int4_method(None, INT4, cpu, SMOL_CONFIG)
    assert method == "asym" and "pass --int4-method gptq" in why
    assert choose_int4_method("rtn", INT4, cpu, SMOL_CONFIG)[0] == "rtn"
    assert choose_int4_method(None, [recipes.get("int8_weight_only")], cpu, SMOL_CONFIG)[0] is None


def test_cuda_tile_packed_int4_takes_only_torchaos_own_qparams():
    h100 = Hardware("cuda", (9, 0), "H100")
    assert choose_int4_method(None, INT4, h100, SMOL_CONFIG)[0] is None
    with pytest.raises(InputError, match="tile-packed"):
        choose_int4_method("gptq", INT4, h100, SMOL_CONFIG)
    # 8da4w stays Intx on CUDA, so GPTQ applies there
    assert choose_int4_method(None, [recipes.get("int8_dynamic_int4_weight")], h100, SMOL_CONFIG)[0] == "gptq"


def test_calibration_is_broad_english_of_other_domains_than_the_evaluation_text(demo_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(demo_model)
    calibration = default_calibration_text()
    ids = calibration_ids(tokenizer, calibration)
    assert ids.numel() == DEFAULT_CALIBRATION_TOKENS  # the mix is long enough for the default budget
    used = tokenizer.decode(ids.flatten())
    # every calibration source appears within the tokens used (the sources take turns)
    for name in CALIBRATION_SOURCES:
        assert SOURCES[name].read()[:MIX_CHUNK][:200] in used, name
    # nothing of the evaluation text's domain: no pydoc topic's opening lines appear in the calibration text
    topics = __import__("pydoc_data.topics", fromlist=["topics"]).topics
    assert EVAL_SOURCE not in CALIBRATION_SOURCES
    assert not [marker for marker in ("```", "def ", "import ") if marker in SOURCES["dialog"].read()]  # no code
    assert not [key for key, text in topics.items() if len(text) > 400 and text[:300] in calibration]
    assert "a domain the calibration text does not cover" in DEFAULT_EVAL_TEXT_NAME


def test_calibration_packages_are_pinned_by_requirements():
    """The calibration text is read from these packages only, so it is the same wherever the project is
    installed: each must be pinned at runtime (a dropped pin must leave the list)."""
    pins = [line.split("==")[0].split("[")[0] for line in (ROOT / "requirements.txt").read_text().splitlines()]
    pinned = {p.replace("-", "_").lower() for p in pins if p and not p.startswith("#")}
    assert {p.lower() for p in (*CALIBRATION_PACKAGES, DIALOG_PACKAGE, "pyyaml")} <= pinned
