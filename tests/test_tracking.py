"""Trackio: every job recorded with the report's figures, failures too, and never at the job's expense."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from trackio.sqlite_storage import SQLiteStorage

from quantizer.cli import main
from quantizer.tracking import history, store_path
from tests.conftest import ALICE
from tests.support.hub_repos import upload_model, variant
from tests.support.models import plant_unused_outliers


def runs_of(project: str) -> list[dict]:
    return history(project)


def test_a_cli_job_is_a_run_with_the_reports_figures(tiny_model, tmp_path, capsys):
    code = main(
        [
            str(tiny_model()),
            "t",
            "--quant-type",
            "int8_weight_only",
            "--quant-type",
            "int4_weight_only",
            "--save-only",
            "--output-dir",
            str(tmp_path),
            "--json",
            "--trackio-project",
            "t-cli",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert f"recorded in Trackio project 't-cli' in {store_path('t-cli')}" in captured.err
    report = json.loads(captured.out)
    runs = {run["quant_type"]: run for run in runs_of("t-cli")}
    assert set(runs) == {"int8_weight_only", "int4_weight_only"}
    for result in report["results"]:
        run = runs[result["quant_type"]]
        assert run["status"] == "finished"
        assert run["source"] == report["source"] and run["device"] == "cpu"
        assert run["torchao_config"] == result["torchao_config"] and run["group_size"] == result["group_size"]
        assert {"torch_version", "torchao_version", "transformers_version"} <= set(run)
        assert run["bytes_in"] == result["source_bytes"] and run["bytes_out"] == result["output_bytes"]
        assert run["size_ratio"] == pytest.approx(result["size_ratio"])
        assert run["peak_rss_bytes"] == result["peak_rss_bytes"]
        for key in ("logits_rel_err", "top1_agreement", "ppl_source", "ppl_quantized", "ppl_delta_pct"):
            assert run[key] == pytest.approx(result["verify"][key]), key
        for stage in ("quantize", "save", "verify", "card"):
            assert run[f"seconds/{stage}"] == pytest.approx(result["seconds"][stage], abs=0.002)


def test_a_failed_job_is_recorded_as_failed_with_its_message(tiny_model, tmp_path, capsys):
    src = plant_unused_outliers(variant(tiny_model(), tmp_path / "outliers"))
    code = main([str(src), "t", "--save-only", "--output-dir", str(tmp_path / "out"), "--trackio-project", "t-fail"])
    capsys.readouterr()
    assert code == 1
    [run] = runs_of("t-fail")
    assert run["status"] == "failed" and "picks the same next token" in run["error"]
    alerts = SQLiteStorage.get_alerts("t-fail")
    assert alerts and alerts[0]["level"] == "error" and "picks the same next token" in alerts[0]["text"]


def test_no_tracking_records_nothing(tiny_model, tmp_path, capsys):
    code = main(
        [
            str(tiny_model()),
            "t",
            "--save-only",
            "--output-dir",
            str(tmp_path),
            "--no-tracking",
            "--trackio-project",
            "t-off",
        ]
    )
    assert code == 0 and "recorded in" not in capsys.readouterr().err
    assert runs_of("t-off") == []


def test_an_unwritable_tracking_folder_does_not_fail_the_job(tiny_model, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    env = {**os.environ, "TRACKIO_DIR": str(blocker / "trackio"), "PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "quantizer",
            str(tiny_model()),
            "t",
            "--save-only",
            "--output-dir",
            str(tmp_path / "out"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("Trackio cannot record this job") == 1
    assert "recorded in" not in proc.stderr
    assert (tmp_path / "out" / "t" / "model.safetensors").is_file()


def test_the_token_never_reaches_trackio(hub, tiny_model, tmp_path, capsys):
    from huggingface_hub import HfApi

    upload_model(HfApi(token=ALICE), "alice/tracked-source", variant(tiny_model(), tmp_path / "m"))
    code = main(["alice/tracked-source", "alice/tracked-int8", "--token", ALICE, "--trackio-project", "t-token"])
    assert code == 0, capsys.readouterr().err
    [run] = runs_of("t-token")
    assert run["url"] == f"{hub.endpoint}/alice/tracked-int8" and run["source"] == "alice/tracked-source"
    assert run["revision"] and len(run["revision"]) == 40
    stored = b"".join(p.read_bytes() for p in store_path("t-token").parent.iterdir() if p.is_file())
    assert ALICE.encode() not in stored


class RecordingTrackio:
    """A stand-in for the Trackio Space a job syncs to (no network here): records what would be sent."""

    def __init__(self):
        self.inits: list[dict] = []
        self.logged: list[dict] = []

    def init(self, **kwargs):
        self.inits.append(kwargs)
        recorder = self

        class Run:
            def log(self, metrics, step=None):
                recorder.logged.append(metrics)

            def alert(self, **kwargs):
                recorder.logged.append({"alert": kwargs})

        return Run()

    def finish(self):
        pass


def test_runs_synced_to_a_space_are_private_and_never_name_a_private_repo(
    hub, tiny_model, tmp_path, capsys, monkeypatch
):
    import trackio
    from huggingface_hub import HfApi

    stand_in = RecordingTrackio()
    monkeypatch.setattr(trackio, "init", stand_in.init)
    monkeypatch.setattr(trackio, "finish", stand_in.finish)
    monkeypatch.setenv("TRACKIO_SPACE_ID", "alice/quantizer-dashboard")
    upload_model(HfApi(token=ALICE), "alice/confidential", variant(tiny_model(), tmp_path / "c"), private=True)
    code = main(["alice/confidential", "--token", ALICE, "--trackio-project", "synced"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    [init] = stand_in.inits
    assert init["space_id"] == "alice/quantizer-dashboard" and init["private"] is True
    assert init["project"] == "synced" and init["config"]["user"] == "alice"
    sent = json.dumps([init["config"], init["name"], *stand_in.logged])
    assert "confidential" not in sent and init["config"]["source"] == "(private)"
    assert any(m.get("status") == "finished" for m in stand_in.logged)
    assert "the Trackio Space alice/quantizer-dashboard" in captured.err
