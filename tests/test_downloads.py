"""Save-only archives on a shared Space: expired ones go, and the oldest go first under the disk quota."""

from __future__ import annotations

import os
import time
import zipfile

import pytest

from quantizer.errors import QuantizerError
from ui import downloads


def make_output(root, name: str, size: int):
    folder = root / "job" / name
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(os.urandom(size))
    return folder


def test_archives_hold_the_output_and_leave_no_folder(tmp_path):
    archive = downloads.archive([make_output(tmp_path, "m-int8wo", 1000)], tmp_path)
    with zipfile.ZipFile(archive) as z:
        assert [n for n in z.namelist() if not n.endswith("/")] == ["m-int8wo/model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [archive.name]


def test_the_oldest_archives_go_first_when_the_quota_needs_room(tmp_path, monkeypatch):
    monkeypatch.setenv("QUANTIZER_DISK_QUOTA", "2500")
    first = downloads.archive([make_output(tmp_path, "a", 1000)], tmp_path)
    os.utime(first, (time.time() - 10, time.time() - 10))
    second = downloads.archive([make_output(tmp_path, "b", 1000)], tmp_path)
    third = downloads.archive([make_output(tmp_path, "c", 1000)], tmp_path)
    assert not first.exists() and second.exists() and third.exists()


def test_expired_archives_are_swept_and_an_output_over_the_quota_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("QUANTIZER_OUTPUT_TTL", "60")
    old = downloads.archive([make_output(tmp_path, "old", 10)], tmp_path)
    os.utime(old, (time.time() - 120, time.time() - 120))
    downloads.sweep(tmp_path)
    assert not old.exists()
    monkeypatch.setenv("QUANTIZER_DISK_QUOTA", "100")
    with pytest.raises(QuantizerError, match="larger than this Space keeps for downloads"):
        downloads.archive([make_output(tmp_path, "big", 5000)], tmp_path)
    assert list(tmp_path.glob("*.zip")) == []


def test_gradios_copies_of_an_archive_count_in_the_quota_and_go_with_it(tmp_path, monkeypatch):
    """Should Gradio copy an archive into its cache (the app serves the output root in place, so it should not),
    the copy counts in the quota and is deleted with its archive."""
    root, cache = tmp_path / "saved", tmp_path / "gradio"
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(cache))
    monkeypatch.setenv("QUANTIZER_DISK_QUOTA", "3000")
    first = downloads.archive([make_output(tmp_path, "a", 1000)], root)
    copy = cache / "somehash" / first.name
    copy.parent.mkdir(parents=True)
    copy.write_bytes(first.read_bytes())
    os.utime(first, (time.time() - 10, time.time() - 10))
    second = downloads.archive([make_output(tmp_path, "b", 1000)], root)  # 2 archives + 1 copy: over 3000 bytes
    assert not first.exists() and not copy.exists() and second.exists()
