"""Every tensor of an output starts 64-byte aligned in its file (see `safetensors_io.ALIGNMENT`): PyTorch's CPU int8
kernel, which torch.compile picks for int8 weights, crashes on an int8 weight mapped at an 8-byte boundary."""

from __future__ import annotations

import json

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from quantizer.safetensors_io import HOLD_BACK_LIMIT, ShardWriter, align_file, align_folder
from tests.test_streaming import misaligned


def odd_tensors() -> dict[str, torch.Tensor]:
    """Sizes that are not multiples of 64 bytes among ones that are, as a norm or a bias is among weights."""
    g = torch.Generator().manual_seed(0)
    return {
        "a.weight": torch.randint(-128, 127, (96, 64), dtype=torch.int8, generator=g),
        "a.bias": torch.randn(3, generator=g).to(torch.bfloat16),  # 6 bytes
        "b.weight": torch.randn(32, 64, generator=g).to(torch.bfloat16),
        "b.scale": torch.randn(5, generator=g),  # 20 bytes
        "c.weight": torch.randint(-128, 127, (64, 32), dtype=torch.int8, generator=g),
        "empty": torch.zeros(0),
    }


def read(path) -> tuple[dict[str, torch.Tensor], dict]:
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()  # noqa: SIM118


def test_align_file_rewrites_a_save_file_output_aligned_and_unchanged(tmp_path):
    path = tmp_path / "model.safetensors"
    tensors = odd_tensors()
    save_file(tensors, path, metadata={"format": "pt", "note": "kept"})
    assert misaligned(tmp_path)  # safetensors keeps 8-byte alignment only

    assert align_file(path) is True
    assert misaligned(tmp_path) == []
    got, metadata = read(path)
    assert metadata == {"format": "pt", "note": "kept"}
    assert set(got) == set(tensors) and all(torch.equal(got[k], tensors[k]) for k in tensors)
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]  # no staging copy left
    before = path.read_bytes()
    assert align_file(path) is False and align_folder(tmp_path) == []  # nothing to do: not rewritten
    assert path.read_bytes() == before


def test_the_writer_holds_odd_sizes_back_to_keep_the_rest_aligned(tmp_path):
    path = tmp_path / "shard.safetensors"
    writer = ShardWriter(path, reserve=1000)
    tensors = odd_tensors()
    for name, tensor in tensors.items():
        writer.add(name, tensor)
    writer.close({"format": "pt"})
    assert misaligned(tmp_path) == []
    got, _ = read(path)
    assert all(torch.equal(got[k], tensors[k]) for k in tensors)
    header = json.loads(path.read_bytes()[8 : 8 + int.from_bytes(path.read_bytes()[:8], "little")])
    order = sorted((e["data_offsets"][0], k) for k, e in header.items() if k not in ("__metadata__", "empty"))
    assert [k for _, k in order][-2:] == ["a.bias", "b.scale"]  # held back, in the order they came
    assert HOLD_BACK_LIMIT >= 1024**2  # a norm or bias of any model fits under it
