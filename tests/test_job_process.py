"""A job cannot take the app down: it runs in a process of its own (ui/worker.py), and however that process ends
(its memory cap, a kill from outside, a stop it ignores) the app gets one sentence and the job's folder is gone.

These run the real job boundary from the test process as the app runs it (`stream_isolated`), on a real job.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import psutil

from quantizer.spec import JobSpec
from tests.support.models import SLOW_SHAPE
from ui.worker import Finished, stream_isolated


def job(source: Path, out: Path) -> JobSpec:
    return JobSpec(
        source=str(source),
        quant_types=["int4_weight_only"],
        int4_method="gptq",
        save_only=True,
        output_dir=out,
        track=False,
    )


def the_end(stream) -> tuple[list, Finished]:
    items = list(stream)
    assert isinstance(items[-1], Finished) and not any(isinstance(i, Finished) for i in items[:-1])
    return items, items[-1]


def test_a_job_over_its_memory_cap_is_ended_with_a_sentence_and_leaves_nothing(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("QUANTIZER_JOB_MEMORY", "1")  # any job is over it at the first look
    folder = Path(tempfile.mkdtemp(prefix="quantizer-job-", dir=tmp_path))
    _, end = the_end(stream_isolated(job(tiny_model(), tmp_path / "out"), folder))
    assert end.report is None and "used more than 0.0 GB of memory and was stopped; nothing was kept" in end.error
    assert not folder.exists() and not (tmp_path / "out").exists()


def test_a_job_process_killed_from_outside_ends_the_stream_with_a_sentence(tiny_model, tmp_path):
    folder = Path(tempfile.mkdtemp(prefix="quantizer-job-", dir=tmp_path))
    stream = stream_isolated(job(tiny_model(SLOW_SHAPE), tmp_path / "out"), folder)
    items = []
    for item in stream:
        items.append(item)
        if "quantizing with gptq" in getattr(item, "message", ""):
            break
    forked = [p for server in psutil.Process(os.getpid()).children() for p in server.children()]  # the forkserver's
    max(forked, key=lambda p: p.create_time()).kill()  # the job's process, as the kernel's out-of-memory killer would
    rest = list(stream)
    assert isinstance(rest[-1], Finished) and rest[-1].report is None
    assert "ended by signal 9 before it finished" in rest[-1].error and "nothing was kept" in rest[-1].error
    assert not folder.exists() and not (tmp_path / "out").exists()
