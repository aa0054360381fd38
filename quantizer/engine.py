"""Quantize with torchao through transformers' TorchAoConfig, and save a folder stock transformers loads."""

from __future__ import annotations

import gc
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from torchao.core.config import AOBaseConfig
from torchao.utils import TorchAOBaseTensor
from transformers import AutoConfig, AutoModelForCausalLM, TorchAoConfig
from transformers.quantizers.auto import AutoHfQuantizer
from transformers.quantizers.base import get_keys_to_not_convert
from transformers.quantizers.quantizers_utils import should_convert_module

from . import int4, int4_packed
from .errors import GroupSizeError, QuantizationError
from .events import EventStream
from .hardware import Hardware
from .recipes import GROUP_SIZES
from .source import TOKENIZER_FILES


@dataclass(frozen=True)
class LinearLayer:
    name: str
    in_features: int
    out_features: int


@dataclass(frozen=True)
class LayerCount:
    quantized: int
    skipped: tuple[str, ...]  # Linear layers left in the source dtype (a tied or untied lm_head)
    notes: tuple[str, ...] = ()  # what the engine checked on the way (the CPU packer's inverse and sizes)


@dataclass(frozen=True)
class CustomInt4:
    """int4 qparams computed here (asymmetric round-to-nearest or GPTQ) instead of torchao's round-to-nearest."""

    method: str  # "asym", "gptq", or "tile_packed" (CUDA's int4 layout written on a CPU)
    group_size: int
    dynamic_activations: bool
    calibration: torch.Tensor | None = None  # token ids [rows, seq_len], for gptq


def quantizable_linears(model: torch.nn.Module) -> dict[str, torch.nn.Linear]:
    """The Linear layers TorchAoConfig quantizes: all but the output embedding (and anything tied to it)."""
    keep = get_keys_to_not_convert(model)
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and should_convert_module(name, keep)
    }


def planned_linear_layers(config_dict: dict) -> list[LinearLayer]:
    """The Linear layers that will be quantized, found from config.json alone on the meta device."""
    config = AutoConfig.for_model(**config_dict)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return [LinearLayer(n, m.in_features, m.out_features) for n, m in quantizable_linears(model).items()]


def choose_group_size(layers: list[LinearLayer], requested: int, explicit: bool) -> tuple[int, str | None]:
    """Return a group size that divides every layer's in_features, and a note when it differs from `requested`.

    torchao cannot quantize a layer whose width the group size does not divide. When the user
    asked for a size explicitly, we refuse and list the layers; with the default we take the
    largest standard size that fits everything and say so.
    """
    misfits = [layer for layer in layers if layer.in_features % requested]
    if not misfits:
        return requested, None
    widths = sorted({layer.in_features for layer in layers})
    fitting = [g for g in GROUP_SIZES if all(w % g == 0 for w in widths)]
    shown = ", ".join(f"{m.name} ({m.in_features})" for m in misfits[:6])
    more = f" and {len(misfits) - 6} more" if len(misfits) > 6 else ""
    if explicit or not fitting:
        hint = (
            f"use --group-size {fitting[0]}"
            if fitting
            else "no standard group size (256/128/64/32) divides them; use an int8 type instead"
        )
        raise GroupSizeError(
            f"group size {requested} does not divide the input width of {len(misfits)} layer(s): {shown}{more}; {hint}."
        )
    note = (
        f"group size {requested} does not divide the layer widths {widths}; "
        f"using {fitting[0]}, the largest of {'/'.join(map(str, GROUP_SIZES))} that divides all of them"
    )
    return fitting[0], note


def count_linear_layers(model: torch.nn.Module) -> LayerCount:
    """Count Linear layers whose weight is a torchao tensor, and name the ones left as they were."""
    quantized, skipped = 0, []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            if isinstance(module.weight, TorchAOBaseTensor):
                quantized += 1
            else:
                skipped.append(name)
    return LayerCount(quantized, tuple(skipped))


def copy_side_files(source_dir: Path, output_dir: Path) -> list[str]:
    """Copy tokenizer files and the chat template beside the saved weights."""
    copied = []
    for name in TOKENIZER_FILES:
        src = source_dir / name
        if src.is_file():
            shutil.copy2(src, output_dir / name)
            copied.append(name)
    return copied


def quantize_custom_int4(
    source_dir: Path,
    torchao_config: AOBaseConfig,
    custom: CustomInt4,
    hardware: Hardware,
    events: EventStream,
    quant_type: str,
) -> tuple[torch.nn.Module, tuple[str, ...]]:
    """Load the source in its dtype, compute int4 weights with `custom.method`, and install them as torchao
    tensors with the config that describes them, so save_pretrained writes a normal torchao checkpoint.
    Also returns what was checked on the way."""
    model = AutoModelForCausalLM.from_pretrained(source_dir, dtype="auto", device_map=hardware.device).eval()
    linears = quantizable_linears(model)
    g = custom.group_size
    notes: tuple[str, ...] = ()
    if custom.method == "tile_packed":
        notes = install_tile_packed(linears, g)
    elif custom.method == "gptq":
        assert custom.calibration is not None, "gptq needs calibration tokens"

        def progress(done: int, total: int) -> None:
            events.progress("gptq", done, total, quant_type=quant_type)

        quants = int4.gptq_model(model, list(linears), g, custom.calibration, progress)
    else:
        quants = {name: int4.quantize_asym(module.weight.data, g) for name, module in linears.items()}
    if custom.method != "tile_packed":
        for name, module in linears.items():
            tensor = int4.intx_tensor(quants[name], g, module.weight.dtype, custom.dynamic_activations)
            module.weight = torch.nn.Parameter(tensor, requires_grad=False)
    quantization_config = TorchAoConfig(quant_type=torchao_config)
    model.config.quantization_config = quantization_config
    model.hf_quantizer = AutoHfQuantizer.from_config(quantization_config)
    return model, notes


def install_tile_packed(linears: dict[str, torch.nn.Linear], group_size: int) -> tuple[str, ...]:
    """Pack every Linear into CUDA's tile-packed int4 on this CPU, checking each against the independent unpack;
    returns what was checked (layers, bytes against the format's formula)."""
    actual = expected = 0
    for name, module in linears.items():
        n, k = module.weight.shape
        tensor, q = int4_packed.build(module.weight.data, group_size)
        if not torch.equal(int4_packed.unpack(tensor.qdata), q):
            raise QuantizationError(f"the CPU int4 packer disagrees with the unpack kernel on {name}; nothing was kept")
        module.weight = torch.nn.Parameter(tensor, requires_grad=False)
        actual += tensor.qdata.numel() * 4 + tensor.scale_and_zero.numel() * 2
        expected += int4_packed.packed_bytes(n, k, group_size)
    if actual != expected:
        raise QuantizationError(f"packed int4 takes {actual} bytes, the format's formula says {expected}")
    return (
        f"packed data of all {len(linears)} layers checked against a CPU port of torchao's unpack kernel",
        f"packed Linear weights: {actual} bytes, as the formula gives (int4 two to a byte plus bf16 scale and zero "
        f"per group of {group_size}, K padded to a multiple of 1024 and N to 8)",
    )


def quantize_and_save(
    source_dir: Path,
    output_dir: Path,
    torchao_config: AOBaseConfig,
    hardware: Hardware,
    events: EventStream,
    quant_type: str,
    custom: CustomInt4 | None = None,
) -> LayerCount:
    """Quantize the source and save safetensors with save_pretrained.

    By default transformers' TorchAoConfig quantizes parameter by parameter while loading; with
    `custom`, int4 weights are computed here (see quantizer.int4) and installed before saving.
    """
    how = f"{custom.method} int4" if custom else type(torchao_config).__name__
    with events.stage("quantize", f"quantizing with {how}", quant_type=quant_type):
        try:
            notes: tuple[str, ...] = ()
            if custom:
                model, notes = quantize_custom_int4(source_dir, torchao_config, custom, hardware, events, quant_type)
            else:
                model = AutoModelForCausalLM.from_pretrained(
                    source_dir,
                    quantization_config=TorchAoConfig(quant_type=torchao_config),
                    dtype="auto",
                    device_map=hardware.device,
                )
        except Exception as exc:
            raise QuantizationError(f"torchao could not quantize the model with {quant_type}: {exc}") from exc
        counts = count_linear_layers(model)
        counts = LayerCount(counts.quantized, counts.skipped, notes)
    with events.stage("save", f"saving safetensors to {output_dir.name}", quant_type=quant_type):
        try:
            model.save_pretrained(output_dir)
        except Exception as exc:
            raise QuantizationError(f"saving the {quant_type} model failed: {exc}") from exc
        finally:
            del model
            gc.collect()
        copy_side_files(source_dir, output_dir)
    return counts
