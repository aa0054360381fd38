"""What a job may take on this deployment: its deadline, the largest source, and the ZeroGPU slot it asks for.

The host sets them with QUANTIZER_JOB_TIMEOUT and QUANTIZER_MAX_SOURCE_BYTES. A shared deployment (a public Space)
whose host sets neither still has both, from the hardware it runs on; a private run has none unless asked. On
ZeroGPU a job runs inside one GPU slot, so its deadline is what a slot can last.
"""

from __future__ import annotations

import tempfile

import psutil
from spaces.config import Config as SpacesConfig

from quantizer import int4, settings
from quantizer.spec import host_deadline_seconds

# The longest slot ZeroGPU grants one call of a signed-in visitor (5 minutes, per Hugging Face's ZeroGPU team; a
# longer ask is refused as an "illegal duration"). spaces' own message offers PRO accounts GPU tasks up to 40 min,
# so a host whose visitors have PRO accounts may raise it with QUANTIZER_ZEROGPU_SECONDS.
SLOT_MARGIN_SECONDS = 20  # the slot outlasts the job's deadline by this much: the job stops and cleans up in time
VERIFY_AND_PUSH_SECONDS = 600  # loading, the reference pass, verification and the upload, beside the int4 budget
SOURCE_SHARE_OF_DISK = 0.25  # a source, its download, the outputs and their staging fit a quarter of the disk 4 times
SOURCE_PER_MEMORY = 4  # the streaming engine takes sources larger than memory, but not without bound


def on_zerogpu() -> bool:
    return SpacesConfig.zero_gpu


def zerogpu_slot_seconds() -> int:
    return settings.get("QUANTIZER_ZEROGPU_SECONDS")


def deadline_seconds(shared: bool) -> float | None:
    """The job's deadline: the host's; on ZeroGPU never more than a slot allows; on a shared deployment without one,
    the int4 method's time budget plus loading, verifying and pushing."""
    host = host_deadline_seconds()
    if on_zerogpu():
        most = zerogpu_slot_seconds() - SLOT_MARGIN_SECONDS
        return min(host, most) if host else most
    if host or not shared:
        return host
    return int4.budget_seconds() + VERIFY_AND_PUSH_SECONDS


def slot_seconds(deadline: float | None) -> int:
    """The ZeroGPU slot a job with this deadline asks for."""
    return min(zerogpu_slot_seconds(), int(deadline or zerogpu_slot_seconds()) + SLOT_MARGIN_SECONDS)


def max_source_bytes(shared: bool) -> int | None:
    """The largest source: the host's QUANTIZER_MAX_SOURCE_BYTES; on a shared deployment without it, a quarter of
    the disk the jobs work on, and no more than four times the memory."""
    value = settings.get("QUANTIZER_MAX_SOURCE_BYTES")
    if value:
        return value
    if not shared:
        return None
    disk = psutil.disk_usage(tempfile.gettempdir()).total
    return int(min(disk * SOURCE_SHARE_OF_DISK, psutil.virtual_memory().total * SOURCE_PER_MEMORY))
