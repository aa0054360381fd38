"""Whether vLLM can serve an output, decided the way vLLM reads a torchao checkpoint, so the card claims only that.

vLLM's torchao support (vllm/model_executor/layers/quantization/torchao.py, `TorchAOConfig.from_config`):
- reads config.json's `quantization_config`, whose `quant_method` names torchao, and whose `quant_type` must be a
  dict with the single key "default";
- rebuilds that entry with torchao's `config_from_dict` (so it must be a config this torchao can rebuild);
- quantizes only its `LinearBase` layers: a mixture of experts' fused expert weights (FusedMoE) get no torchao
  method, so torchao-quantized experts are not served;
- reads the safetensors files' torchao tensors only where torchao's `is_metadata_torchao` accepts the header, that
  is, every tensor's `_type` is on torchao's safetensors allow-list.
The check runs on the written files (their headers are read before a streamed shard is uploaded and deleted).
vLLM itself is not run here (it needs a CUDA GPU); the card says so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from safetensors import safe_open


@dataclass(frozen=True, kw_only=True)
class VllmCheck:
    loads: bool
    reason: str  # what was checked, or why vLLM cannot serve it


def shard_header(path: Path) -> dict[str, str]:
    """A safetensors file's metadata (its header's `__metadata__`)."""
    with safe_open(str(path), framework="pt") as reader:
        return dict(reader.metadata() or {})


def folder_headers(folder: Path) -> list[dict[str, str]]:
    return [shard_header(path) for path in sorted(folder.glob("*.safetensors"))]


def _tensor_types(headers: list[dict[str, str]]) -> set[str]:
    types = set()
    for header in headers:
        for name in json.loads(header.get("tensor_names", "[]")):
            entry = header.get(name)
            if isinstance(entry, str):
                types.add(json.loads(entry).get("_type", "?"))
    return types


def check_vllm(config: dict, headers: list[dict[str, str]], *, experts_quantized: bool) -> VllmCheck:
    """Read an output's config.json (as a dict) and its shards' headers as vLLM does."""
    from torchao.core.config import config_from_dict
    from torchao.prototype.safetensors.safetensors_utils import is_metadata_torchao

    quantization = config.get("quantization_config") or {}
    if "torchao" not in str(quantization.get("quant_method", "")):
        return VllmCheck(loads=False, reason="config.json names no torchao quantization")
    quant_type = quantization.get("quant_type")
    if not (isinstance(quant_type, dict) and list(quant_type) == ["default"]):
        return VllmCheck(loads=False, reason="vLLM reads a single 'default' torchao config, and this one has more")
    try:
        rebuilt = config_from_dict(quant_type["default"])
    except Exception as exc:  # whatever torchao refuses, vLLM refuses the same way
        return VllmCheck(loads=False, reason=f"torchao's config_from_dict cannot rebuild its config ({exc})")
    if experts_quantized:
        return VllmCheck(
            loads=False,
            reason="vLLM applies torchao to Linear layers only and does not serve torchao-quantized MoE experts yet",
        )
    if type(rebuilt).__name__ == "FqnToConfig":  # a mixture of experts' covering config is one too, said above
        return VllmCheck(
            loads=False,
            reason="its layers have different torchao configs (mixed precision), and vLLM fuses q/k/v and gate/up "
            "into single layers that one per-layer choice can split; vLLM serving is not claimed for it",
        )
    torchao_headers = [h for h in headers if "tensor_names" in h]
    refused = sorted(_tensor_types([h for h in torchao_headers if not is_metadata_torchao(h)]) - {"Tensor"})
    if refused or not torchao_headers:
        what = ", ".join(refused) or "no torchao tensors"
        return VllmCheck(loads=False, reason=f"its tensors ({what}) are not on torchao's safetensors allow-list")
    kinds = ", ".join(sorted(_tensor_types(torchao_headers) - {"Tensor"}))
    return VllmCheck(
        loads=True,
        reason=f"config.json's torchao config ({type(rebuilt).__name__}) and tensor types ({kinds}) are the ones "
        "vLLM's torchao loader reads (checked as vLLM reads them; vLLM itself was not run here)",
    )
