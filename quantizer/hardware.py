"""What the machine can do: the device to run on, GPU capability, and memory measurements."""

from __future__ import annotations

import contextlib
import os
import resource
from dataclasses import dataclass
from pathlib import Path

import psutil
import torch

from . import settings
from .errors import InputError

DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class Hardware:
    """The device a job runs on and what it supports."""

    device: str  # "cpu" or "cuda"
    cuda_capability: tuple[int, int] | None = None
    name: str = "CPU"

    @property
    def is_cuda(self) -> bool:
        return self.device == "cuda"


DEVICE_NAMES = {"cpu": "CPU", "cuda": "CUDA GPUs"}


def describe_devices(devices: tuple[str, ...]) -> str:
    """Where an output runs, in words: "CUDA GPUs only" or "CPU and CUDA GPUs"."""
    names = [DEVICE_NAMES[d] for d in devices]
    return f"{names[0]} only" if len(names) == 1 else " and ".join(names)


def cuda_available() -> bool:
    return torch.cuda.is_available()


def detect(device: str = "auto") -> Hardware:
    """Resolve `auto` to cuda when a GPU is visible, else cpu; refuse cuda without a GPU."""
    if device not in DEVICES:
        raise InputError(f"unknown device '{device}': choose one of {', '.join(DEVICES)}.")
    if device == "auto":
        device = "cuda" if cuda_available() else "cpu"
    if device == "cuda":
        if not cuda_available():
            raise InputError("--device cuda was asked for, but no CUDA GPU is visible: use --device cpu or auto.")
        return Hardware("cuda", torch.cuda.get_device_capability(0), torch.cuda.get_device_name(0))
    return Hardware("cpu", None, f"CPU ({os.cpu_count()} cores)")


def available_memory_bytes() -> int:
    """Free memory, capped by QUANTIZER_MEMORY_LIMIT (bytes) on machines shared with other work."""
    available = psutil.virtual_memory().available
    limit = settings.get("QUANTIZER_MEMORY_LIMIT")
    return min(available, limit) if limit else available


def free_disk_bytes(path: Path) -> int:
    path = Path(path)
    while not path.exists():
        path = path.parent
    return psutil.disk_usage(str(path)).free


def folder_bytes(path: Path) -> int:
    """Bytes of the files under `path` now (what a job's folders hold on the disk)."""
    total = 0
    for item in Path(path).rglob("*"):
        with contextlib.suppress(OSError):  # a file removed while counting
            if item.is_file() and not item.is_symlink():
                total += item.stat().st_size
    return total


class PeakRSS:
    """Peak resident memory of this process since `reset()`.

    On Linux the kernel's high-water mark (VmHWM) can be reset by writing 5 to
    /proc/self/clear_refs, so each recipe gets its own peak; elsewhere this falls back to
    the lifetime maximum from getrusage.
    """

    _status = Path("/proc/self/status")
    _clear_refs = Path("/proc/self/clear_refs")

    def reset(self) -> None:
        with contextlib.suppress(OSError):
            self._clear_refs.write_text("5")

    def peak_bytes(self) -> int:
        try:
            for line in self._status.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakGPU:
    """Peak CUDA memory this process allocated since `reset()`; None for a job that does not run on a GPU."""

    def __init__(self, hardware: Hardware) -> None:
        self.on_gpu = hardware.is_cuda

    def reset(self) -> None:
        if self.on_gpu:
            torch.cuda.reset_peak_memory_stats()

    def peak_bytes(self) -> int | None:
        return int(torch.cuda.max_memory_allocated()) if self.on_gpu else None
