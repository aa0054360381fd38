"""The dtype a job computes in: the source's own where the machine multiplies it natively, float32 where it does not.

Cloud CPUs differ. One with AMX or AVX-512 BF16 multiplies bfloat16 two to three times faster than float32; one with
AVX2 only emulates it, several times slower than float32 and with coarser rounding. Forward passes (the reference,
GPTQ's calibration, verification, the layer-by-layer check) therefore run in float32 on a CPU where a short probe
finds the source's dtype slower than float32, and in the source's dtype elsewhere. The CPU flags alone do not say
it (oneDNN and ATen pick their kernels at run time, and a hypervisor may hide or fake flags), so it is measured,
once per process. Weights are always stored in the source's dtype: upcasting is for computing only.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from . import settings

LOW_PRECISION = (torch.bfloat16, torch.float16)
# rows x inner x outer of the probe's matmul: a decoder layer's projection for a short batch (about 0.5 GFLOP,
# a few milliseconds in float32 on 2 cores)
PROBE_SHAPE = (256, 1024, 1024)
PROBE_REPEATS = 5
# float32 is chosen only when the source's dtype is this many times slower: an emulated bf16 matmul measures 3x or
# more, a native one under half, and a loaded machine's noise between two timings must not flip the decision
# (a suite run beside a benchmark once had a job and its test decide differently)
SLOWER_MARGIN = 1.5
OVERRIDE = "QUANTIZER_COMPUTE_DTYPE"  # "float32" or "source": skip the probe (tests run both paths on one machine)
DTYPE_NAMES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8")


@dataclass(frozen=True, kw_only=True)
class Probe:
    """One probe's timings: the best of a few runs of the same matmul in each dtype."""

    dtype: str
    seconds: float
    float32_seconds: float

    @property
    def slower_than_float32(self) -> bool:
        """Clearly slower (`SLOWER_MARGIN`): worth upcasting for."""
        return self.seconds > self.float32_seconds * SLOWER_MARGIN

    @property
    def ratio(self) -> float:
        return self.seconds / self.float32_seconds


def best_seconds(run: Callable[[], object], repeats: int = PROBE_REPEATS, device: str = "cpu") -> float:
    """The best of `repeats` timed calls of `run`, after one untimed warm-up (kernel selection, allocation);
    on CUDA each call is synchronized."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    run()
    best = float("inf")
    for _ in range(repeats):
        sync()
        started = time.perf_counter()
        run()
        sync()
        best = min(best, time.perf_counter() - started)
    return best


@functools.cache
def probe(dtype: torch.dtype) -> Probe:
    """Time the same CPU matmul in `dtype` and in float32, in this process's threads."""
    rows, inner, outer = PROBE_SHAPE
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(rows, inner, generator=generator)
    b = torch.randn(outer, inner, generator=generator)
    with torch.no_grad():
        low_a, low_b = a.to(dtype), b.to(dtype)
        low = best_seconds(lambda: torch.nn.functional.linear(low_a, low_b))
        high = best_seconds(lambda: torch.nn.functional.linear(a, b))
    return Probe(dtype=str(dtype).removeprefix("torch."), seconds=low, float32_seconds=high)


def _override() -> str:
    return settings.get(OVERRIDE)


def compute_dtype(stored: torch.dtype, device: str) -> torch.dtype:
    """The dtype forward passes run in for weights stored as `stored` on `device`."""
    if device != "cpu" or stored not in LOW_PRECISION:
        return stored
    if _override() == "float32":
        return torch.float32
    if _override() == "source":
        return stored
    return torch.float32 if probe(stored).slower_than_float32 else stored


def reason(stored: torch.dtype, device: str) -> str:
    """Which dtype a job on `device` computes in for weights stored as `stored`, and why: for the log and the report."""
    compute = compute_dtype(stored, device)
    name = str(stored).removeprefix("torch.")
    if compute == stored:
        return f"computing in {name}, the source's dtype"
    if _override() == "float32":
        return f"computing in float32 ({OVERRIDE}=float32); weights stay {name}"
    measured = probe(stored)
    return (
        f"computing in float32: this CPU multiplies {name} {measured.ratio:.1f}x slower than float32 (measured), "
        f"so forward passes upcast one layer or model at a time; weights stay {name}"
    )


def _cast(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A plain low-precision tensor in `dtype`; any other tensor as it is."""
    return tensor.to(dtype) if tensor.dtype in LOW_PRECISION and tensor.dtype != dtype else tensor


def cast_floats(value, dtype: torch.dtype):
    """`value` with every low-precision floating tensor in it (also inside tuples, lists and dicts) cast to
    `dtype`: the position embeddings and masks a decoder layer is called with."""
    if isinstance(value, torch.Tensor):
        return _cast(value, dtype)
    if isinstance(value, tuple | list):
        return type(value)(cast_floats(v, dtype) for v in value)
    if isinstance(value, dict):
        return {k: cast_floats(v, dtype) for k, v in value.items()}
    return value


def for_compute(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A weight to multiply in `dtype`: a plain low-precision tensor cast; a torchao tensor whose kernel takes
    `dtype` inputs as it is (int8's); any other torchao tensor dequantized (on a CPU torchao's own forward for
    them is a dequantize and a matmul too)."""
    if type(tensor) in (torch.Tensor, torch.nn.Parameter):
        return _cast(tensor, dtype)
    if tensor.dtype == dtype or _takes_any_float_input(tensor):
        return tensor
    return tensor.dequantize().to(dtype)


def _takes_any_float_input(tensor: torch.Tensor) -> bool:
    from torchao.quantization import Int8Tensor  # torchao is heavy; only quantized weights need it

    return isinstance(tensor, Int8Tensor)


def upcast_model(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Put every parameter and floating buffer of `model` in `dtype` for computing (see `for_compute`), one
    tensor at a time so the peak is the upcast model plus one tensor. A parameter shared by several modules (tied
    embeddings) is upcast once and stays shared."""
    upcast: dict[int, torch.nn.Parameter] = {}  # id of the original parameter -> its upcast replacement
    for module in model.modules():
        for name, param in list(module._parameters.items()):
            if param is None:
                continue
            if id(param) in upcast:
                module._parameters[name] = upcast[id(param)]
                continue
            new = for_compute(param.data if type(param) is torch.nn.Parameter else param, dtype)
            if new is not param.data and new is not param:
                upcast[id(param)] = module._parameters[name] = torch.nn.Parameter(new, requires_grad=False)
        for name, buffer in list(module._buffers.items()):
            if buffer is not None:
                module._buffers[name] = _cast(buffer, dtype)
    model.config.dtype = dtype  # what transformers' mask and cache code reads


def to_compute_dtype(model: torch.nn.Module, device: str) -> torch.nn.Module:
    """A loaded model, upcast where the machine would emulate its dtype (`compute_dtype`); returns it."""
    dtype = compute_dtype(model.dtype, device)
    if dtype != model.dtype:
        upcast_model(model, dtype)
    return model


@functools.cache
def int8_matmul_exact() -> bool:
    """Whether this CPU's int8 x int8 matmul (torch._int_mm, which int8_dynamic runs) gives exact sums. Without
    VNNI, oneDNN's AVX2 kernel adds pairs of int8 products in saturating int16 (vpmaddubsw): the sums come out
    wrong and int8_dynamic outputs lose about ten times more accuracy than on a CPU with VNNI (measured)."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randint(-127, 128, (32, 256), dtype=torch.int8, generator=generator)
    b = torch.randint(-127, 128, (256, 64), dtype=torch.int8, generator=generator)
    try:
        return torch.equal(torch._int_mm(a, b).long(), a.long() @ b.long())
    except RuntimeError:  # no int8 matmul on this build: int8_dynamic takes another path
        return True


def int8_matmul_note(device: str) -> str | None:
    """What a type that runs int8 x int8 matmuls must say on a CPU where they saturate; None where they are exact."""
    if device != "cpu" or int8_matmul_exact():
        return None
    return (
        "this CPU's int8 matmul saturates (no VNNI: pairs of int8 products are added in int16), so the figures "
        "measured here include that kernel's error; the saved weights are the same on any machine and run exactly "
        "on a CPU with VNNI or on CUDA"
    )


def cpu_flags() -> list[str]:
    """The CPU's flags that decide its fast dtypes (from /proc/cpuinfo; empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    present = set(line.partition(":")[2].split())
    return [flag for flag in CPU_FLAGS if flag in present]


def cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown CPU"
    return next((ln.partition(":")[2].strip() for ln in text.splitlines() if ln.startswith("model name")), "CPU")


def describe_machine() -> dict:
    """What a committed figure was measured on: the CPU, its flags, the kernels torch and oneDNN were allowed, and
    the bf16 probe (which decides the compute dtype)."""
    measured = probe(torch.bfloat16)
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "flags": cpu_flags(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "forced_isa": settings.present(settings.FORCED_ISA_VARIABLES),
        "bf16_matmul_vs_float32": round(measured.ratio, 2),
        "native_bf16": not measured.slower_than_float32,
        "compute_dtype_for_bf16": str(compute_dtype(torch.bfloat16, "cpu")).removeprefix("torch."),
        "int8_matmul_exact": int8_matmul_exact(),
    }


def machine_kind(machine: dict) -> str:
    """`native-bf16` or `emulated-bf16`: the two kinds of CPU whose figures differ (the bf16 probe decides the
    compute dtype; CPUs that emulate bf16 also tend to lack VNNI, recorded beside it)."""
    return "native-bf16" if machine["native_bf16"] else "emulated-bf16"


def results_name(stem: str, machine: dict) -> str:
    """A committed result's file stem for the kind of CPU that made it: `stem` for one with native bf16 (the
    figures the README quotes first), `stem-emulated-bf16` for one without."""
    return stem if machine["native_bf16"] else f"{stem}-{machine_kind(machine)}"


def describe_flags(machine: dict) -> str:
    """One line naming the CPU a figure came from, for the tables beside it."""
    forced = " ".join(f"{k}={v}" for k, v in machine.get("forced_isa", {}).items())
    return (
        f"{machine['cpu']}, {machine['cores']} cores, flags: {' '.join(machine['flags']) or 'none read'}"
        f"{f' (limited to {forced})' if forced else ''}; bf16 matmul {machine['bf16_matmul_vs_float32']}x the time "
        f"of float32, so the job computes in {machine['compute_dtype_for_bf16']}; int8 matmul "
        f"{'exact' if machine['int8_matmul_exact'] else 'saturating (no VNNI)'}"
    )


def configured_dtype(config: dict) -> str | None:
    """The name of the dtype a source's config gives its weights, when it is one of DTYPE_NAMES (a config's other
    text is a stranger's, never shown)."""
    for key in ("dtype", "torch_dtype"):
        value = config.get(key)
        if isinstance(value, str) and value in DTYPE_NAMES:
            return value
    return None


def stored_dtype(config: dict) -> torch.dtype:
    """The dtype a source's config says its weights are in; bfloat16 when it names none or something unknown (the
    estimate that counts an upcast, where one would happen, is the safe one)."""
    return DTYPE_NAMES[configured_dtype(config) or "bfloat16"]


def upcast_factor(config: dict, device: str) -> float:
    """How many times the source's bytes a model takes in memory once upcast for computing."""
    stored = stored_dtype(config)
    return compute_dtype(stored, device).itemsize / stored.itemsize
