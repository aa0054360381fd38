"""Deadlines for the tests' waits, scaled to the machine that runs them.

A wait follows an event (a log line, a status, a file gone); its deadline only says when to give up, and a bound on
how fast something must happen ("a Stop ends the job within seconds") is a number of seconds on a given machine.
Both are written here as seconds on the machine the suite was written on and multiplied by `SLOWNESS`: how many
times longer this machine takes than that one for the same float32 matmul (`quantizer.compute.probe`, the best of
a few runs, in the dtype a job on any CPU computes in), never less than 1. On a slower or busier machine the
deadlines grow with it; on a faster one they stay as written.
"""

from __future__ import annotations

import torch

from quantizer.compute import probe

# the probe's float32 matmul on the machine the deadlines were written on (AMD EPYC, 2 cores, avx512_bf16; best of
# several runs of `probe(torch.bfloat16).float32_seconds`: 0.0028-0.0029 s)
REFERENCE_FLOAT32_SECONDS = 0.0029


def _slowness() -> float:
    return max(1.0, probe(torch.bfloat16).float32_seconds / REFERENCE_FLOAT32_SECONDS)


SLOWNESS = _slowness()


def seconds(on_reference: float) -> float:
    """A deadline of `on_reference` seconds on the reference machine, on this one."""
    return on_reference * SLOWNESS


def milliseconds(on_reference: float) -> int:
    """The same for Playwright, which takes milliseconds."""
    return int(on_reference * SLOWNESS * 1000)
