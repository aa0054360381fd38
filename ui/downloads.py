"""Save-only jobs on a shared Space: the output goes to its visitor as one archive, and the disk is kept bounded.

Output folders are zipped into a randomly named archive under the output root and removed; the
page hands the archive over as a download. Archives older than `QUANTIZER_OUTPUT_TTL` seconds
(default an hour) are deleted, and the oldest go first whenever the output root would hold more
than `QUANTIZER_DISK_QUOTA` bytes (default 20 GB).
"""

from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path

from gradio.utils import get_upload_folder

from quantizer import settings
from quantizer.errors import QuantizerError


def ttl_seconds() -> float:
    return settings.get("QUANTIZER_OUTPUT_TTL")


def quota_bytes() -> int:
    return settings.get("QUANTIZER_DISK_QUOTA")


def archives(root: Path) -> list[Path]:
    return sorted(root.glob("*.zip"), key=lambda p: p.stat().st_mtime) if root.is_dir() else []


def copies(archive: Path) -> list[Path]:
    """Gradio's cached copies of an archive (`<cache>/<hash>/<name>`). The app serves the output root as a static
    path, so Gradio should make none; any it made anyway count in the quota and go with the archive."""
    cache = Path(get_upload_folder())
    return list(cache.glob(f"*/{archive.name}")) if cache.is_dir() else []


def footprint(archive: Path) -> int:
    return sum(p.stat().st_size for p in (archive, *copies(archive)) if p.exists())


def remove(archive: Path) -> None:
    for path in (archive, *copies(archive)):
        path.unlink(missing_ok=True)


def sweep(root: Path, *, room_for: int = 0) -> None:
    """Delete expired archives, then the oldest until `room_for` more bytes fit in the quota (copies counted)."""
    now = time.time()
    for path in archives(root):
        if now - path.stat().st_mtime > ttl_seconds():
            remove(path)
    kept = archives(root)
    total = sum(footprint(p) for p in kept)
    while kept and total + room_for > quota_bytes():
        oldest = kept.pop(0)
        total -= footprint(oldest)
        remove(oldest)


def archive(folders: list[Path], root: Path) -> Path:
    """One zip of the output folders (each under its own name), the folders removed; refused when it alone would
    exceed the quota."""
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f".{uuid.uuid4().hex}"
    try:
        staging.mkdir()
        for folder in folders:
            shutil.move(str(folder), staging / folder.name)
        made = Path(shutil.make_archive(str(root / uuid.uuid4().hex), "zip", staging))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        for folder in folders:
            shutil.rmtree(folder.parent if folder.parent != root else folder, ignore_errors=True)
    size = made.stat().st_size
    if size > quota_bytes():
        made.unlink(missing_ok=True)
        raise QuantizerError(
            f"the output ({size / 1e9:.1f} GB) is larger than this Space keeps for downloads "
            f"({quota_bytes() / 1e9:.1f} GB): push it to the Hub instead of saving it on the Space."
        )
    sweep(root, room_for=0)
    return made
