"""Quantize a whole model and save a folder stock transformers loads.

Two ways in, one way out: torchao's own config applied by transformers' TorchAoConfig while
loading, or (for int4 values chosen here, or a format torchao writes only on CUDA) the model
loaded in its dtype and its Linear weights replaced by an `Int4Choice`. Either way
`save_pretrained` writes a normal torchao checkpoint.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torchao.core.config import AOBaseConfig
from transformers import AutoModelForCausalLM, TorchAoConfig
from transformers.quantizers.auto import AutoHfQuantizer

from . import experts
from .errors import QuantizationError
from .events import EventStream
from .hardware import Hardware
from .int4 import Int4Choice, made_here
from .int4.apply import Installed
from .int4.mixed import MixedPlan
from .layers import LayerCount, count_linear_layers
from .resources import SAVE_SHARD_BYTES
from .safetensors_io import align_folder
from .source import copy_side_files


def load_with_int4(
    source_dir: Path,
    torchao_config: AOBaseConfig,
    int4: Int4Choice,
    hardware: Hardware,
    events: EventStream,
    quant_type: str,
) -> tuple[torch.nn.Module, Installed]:
    """Load the source in its dtype and install the int4 weights `int4` makes, declared by `torchao_config` (or,
    for mixed precision, the per-layer config it makes); also returns what was done and checked on the way."""
    model = AutoModelForCausalLM.from_pretrained(source_dir, dtype="auto", device_map=hardware.device).eval()

    def progress(done: int, total: int) -> None:
        events.progress(int4.method.name, done, total, quant_type=quant_type)

    installed = int4.quantize_model(model, progress, torchao_config)
    quantization_config = TorchAoConfig(quant_type=installed.config)
    model.config.quantization_config = quantization_config
    model.hf_quantizer = AutoHfQuantizer.from_config(quantization_config)
    return model, installed


def quantize_and_save(
    source_dir: Path,
    output_dir: Path,
    torchao_config: AOBaseConfig,
    hardware: Hardware,
    events: EventStream,
    quant_type: str,
    int4: Int4Choice | None = None,
    experts_forward: str | None = None,
) -> Saved:
    """Quantize the source and save safetensors with save_pretrained; `experts_forward` is the experts forward
    stock transformers must use to run quantized expert weights (written to config.json)."""
    custom = made_here(int4, hardware.device)
    how = f"{custom.label} int4" if custom else experts.config_name(torchao_config)
    with events.stage("quantize", f"quantizing with {how}", quant_type=quant_type):
        try:
            installed = None
            if custom:
                model, installed = load_with_int4(source_dir, torchao_config, custom, hardware, events, quant_type)
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
    with events.stage("save", f"saving safetensors to {output_dir.name}", quant_type=quant_type):
        try:
            model.save_pretrained(output_dir, max_shard_size=SAVE_SHARD_BYTES)
        except Exception as exc:
            raise QuantizationError(f"saving the {quant_type} model failed: {exc}") from exc
        finally:
            del model
            gc.collect()
        align_folder(output_dir)  # see safetensors_io.ALIGNMENT: compiled int8 on a CPU crashes on unaligned weights
        experts.write_forward(output_dir, experts_forward)
        copy_side_files(source_dir, output_dir)
    notes = installed.notes if installed else ()
    return Saved(counts=replace(counts, notes=notes), mixed=installed.mixed if installed else None)


@dataclass(frozen=True, kw_only=True)
class Saved:
    """What the whole-model engine wrote: layer counts (with what was checked), and a mixed-precision plan."""

    counts: LayerCount
    mixed: MixedPlan | None = None
