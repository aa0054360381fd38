"""Hugging Face Jobs and batches, through the CLI, against the loopback Hub's Jobs: each Job is a real local process
that runs the real CLI with the Job's environment and secrets (loopback/jobs.py)."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from huggingface_hub import HfApi

from quantizer import hf_jobs, on_jobs
from quantizer.batch import parse_lines, read_batch
from quantizer.cli import build_parser, main, spec_from_args
from quantizer.errors import InputError
from quantizer.events import EventStream
from quantizer.hub import Hub
from quantizer.spec import DatasetRef, JobSpec
from tests.conftest import ALICE, BOB
from tests.support.hub_repos import upload_model, variant

IMAGE = "hf.co/spaces/alice/quantizer"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sources(hub, tiny_model, tmp_path_factory) -> dict[str, str]:
    api = HfApi(token=ALICE)
    made = {}
    for name in ("jobs-tiny", "jobs-tiny-b"):
        upload_model(api, f"alice/{name}", variant(tiny_model(), tmp_path_factory.mktemp(name) / "m"))
        made[name] = f"alice/{name}"
    broken = variant(tiny_model(), tmp_path_factory.mktemp("broken") / "m", drop=("config.json",))
    upload_model(api, "alice/jobs-broken", broken)
    made["broken"] = "alice/jobs-broken"
    return made


def jobs_for(hub, source: str) -> list:
    label = hf_jobs.LABEL_VALUE.sub("-", source)
    return [job for job in hub.jobs.jobs.values() if (job.spec.get("labels") or {}).get("source") == label]


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def on_jobs_flags(flavor: str = "cpu-basic") -> list[str]:
    return ["--on-jobs", flavor, "--jobs-image", IMAGE, "--token", ALICE]


def test_a_job_on_jobs_is_pushed_and_its_report_comes_back(hub, sources, capsys):
    code, out, err = run_cli([sources["jobs-tiny"], "alice/jobs-int8", *on_jobs_flags(), "--json"], capsys)
    assert code == 0, err
    report = json.loads(out)
    (result,) = report["results"]
    assert result["status"] == "ok" and result["url"] == f"{hub.endpoint}/alice/jobs-int8"
    assert HfApi(token=ALICE).repo_exists("alice/jobs-int8")
    (job,) = jobs_for(hub, sources["jobs-tiny"])
    assert job.stage == "COMPLETED" and job.spec["flavor"] == "cpu-basic" and job.spec["spaceId"] == "alice/quantizer"
    # the token goes as a secret only; the deadline and the labels always go with the Job
    assert job.spec["secrets"] == {"HF_TOKEN": ALICE}
    assert ALICE not in json.dumps([job.spec["command"], job.spec["environment"], job.spec["labels"]])
    assert job.spec["timeoutSeconds"] >= hf_jobs.TIMEOUT_FLOOR_SECONDS
    assert job.spec["labels"] == {
        "tool": "torchao-quantizer",
        "source": "alice-jobs-tiny",
        "types": "int8_weight_only",
        "name": job.spec["labels"]["name"],
    }
    # before submitting: the flavor, its price, the estimate; then the Job's own log, streamed back
    assert "cpu-basic (2 vCPU, 16 GB RAM): $0.01/hour; about 1 min" in err and "an estimate" in err
    assert "[int8_weight_only] ▶ pushing to alice/jobs-int8" in err
    assert "recorded in Trackio" in err  # the report is recorded here as a local job's is
    assert ALICE not in err and ALICE not in out
    assert not any(ALICE in line["data"] for line in job.lines)


def test_logs_arrive_while_the_job_runs(hub, sources):
    events = EventStream()
    spec = JobSpec(source=sources["jobs-tiny"], target="alice/jobs-live", token=ALICE, track=False)
    hub_client = Hub(ALICE, events)
    target = on_jobs.resolve(on_jobs.JobsOptions(flavor="cpu-basic", image=IMAGE), hub_client)
    *said, job = on_jobs.start(on_jobs.prepare(spec, target, hub_client), hub_client)
    assert said[0].startswith("on Hugging Face Jobs: cpu-basic") and said[1].startswith("started the Job")
    api = HfApi(token=ALICE)
    stage_at = {}  # the Job's stage when a line arrived
    for line in api.fetch_job_logs(job_id=job.job_id, namespace="alice", follow=True):
        if line.startswith(("▶ checking", hf_jobs.REPORT_MARKER)):
            stage_at[line.split()[0]] = api.inspect_job(job_id=job.job_id, namespace="alice").status.stage
    assert stage_at["▶"] == "RUNNING"  # the job's first line came while the job ran, not at its end
    assert hf_jobs.REPORT_MARKER.strip() in stage_at
    assert hf_jobs.wait_until_ended(hub_client, job).status.stage == "COMPLETED"


def test_ctrl_c_cancels_the_job_and_leaves_no_repo(hub, sources):
    hub.state.slow("POST", r"^/api/models/alice/jobs-cancelled/preupload/", 4)
    env = {**os.environ, "HF_TOKEN": ALICE}
    command = [sys.executable, "-m", "quantizer", sources["jobs-tiny-b"], "alice/jobs-cancelled", "--on-jobs"]
    process = subprocess.Popen(
        [*command, "cpu-basic", "--jobs-image", IMAGE, "--no-tracking"],
        cwd=ROOT,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
        # a shell that starts the suite in the background hands its children SIGINT ignored: Ctrl-C as a terminal
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # sends it needs the default disposition
    )
    lines = []
    for line in process.stderr:
        lines.append(line)
        if "▶ pushing to alice/jobs-cancelled" in line:
            break
    time.sleep(1)  # inside the upload, with the repo created
    assert HfApi(token=ALICE).repo_exists("alice/jobs-cancelled")
    process.send_signal(signal.SIGINT)
    rest = process.stderr.read()
    assert process.wait(timeout=60) == 130, "".join(lines) + rest
    assert "cancelling the Job" in rest and "the Job ended canceled" in rest
    (job,) = [j for j in jobs_for(hub, sources["jobs-tiny-b"]) if "alice/jobs-cancelled" in j.spec["command"]]
    assert job.stage == "CANCELED"
    assert not HfApi(token=ALICE).repo_exists("alice/jobs-cancelled")
    time.sleep(4)  # the slow request finishes on the Hub's side: still nothing may land
    assert not HfApi(token=ALICE).repo_exists("alice/jobs-cancelled")
    assert not any(ALICE in line["data"] for line in job.lines)


def test_a_batch_of_three_with_one_broken_gives_two_repos_and_one_failed_row(hub, sources, tmp_path, capsys):
    batch = tmp_path / "sources.txt"
    batch.write_text(
        f"# three sources, one of them broken\n{sources['jobs-tiny']} alice/batch-a\n\n"
        f"{sources['broken']} alice/batch-broken\n{sources['jobs-tiny-b']} alice/batch-b  # its target\n"
    )
    started_before = len(hub.jobs.jobs)
    code, _, err = run_cli(["--batch", str(batch), *on_jobs_flags(), "--no-tracking"], capsys)
    assert code == 1, err
    api = HfApi(token=ALICE)
    assert api.repo_exists("alice/batch-a") and api.repo_exists("alice/batch-b")
    assert not api.repo_exists("alice/batch-broken")
    assert len(hub.jobs.jobs) == started_before + 2  # the broken source was refused before any Job started
    summary = err[err.index("| source | type |") :]
    assert f"| {sources['jobs-tiny']} | int8_weight_only | ok | {hub.endpoint}/alice/batch-a |" in summary
    assert f"| {sources['jobs-tiny-b']} | int8_weight_only | ok | {hub.endpoint}/alice/batch-b |" in summary
    broken_row = next(line for line in summary.splitlines() if line.startswith(f"| {sources['broken']} |"))
    assert "| - | failed | - |" in broken_row and "config.json" in broken_row
    assert ALICE not in err


def test_a_collection_is_a_batch_run_here(hub, sources, tmp_path, capsys):
    hub.state.add_collection("alice/tiny-models-0123abcd", "alice", [sources["jobs-tiny"], sources["jobs-tiny-b"]])
    code, _, err = run_cli(
        [
            "--batch",
            "collection:alice/tiny-models-0123abcd",
            "--save-only",
            "--output-dir",
            str(tmp_path),
            *("--token", ALICE, "--no-tracking"),
        ],
        capsys,
    )
    assert code == 0, err
    assert "batch 2/2: alice/jobs-tiny-b" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["jobs-tiny-b-torchao-int8wo", "jobs-tiny-torchao-int8wo"]
    assert err.count("| int8_weight_only | ok |") == 2  # the batch's summary: a row a source


@pytest.mark.parametrize(
    "flags, phrase",
    [
        (["--save-only"], "--save-only keeps the output on the Job's disk"),
        (["--eval-text", "README.md"], "use --eval-dataset"),
        (["--on-jobs", "warp-drive"], "no Jobs hardware named 'warp-drive'; choose one of: cpu-basic"),
    ],
)
def test_what_a_job_cannot_do_is_refused_before_any_job_starts(hub, sources, flags, phrase, capsys):
    started_before = len(hub.jobs.jobs)
    code, _, err = run_cli([sources["jobs-tiny"], "alice/never", *on_jobs_flags(), *flags], capsys)
    assert code == 2 and phrase in err, err
    assert len(hub.jobs.jobs) == started_before and not HfApi(token=ALICE).repo_exists("alice/never")


def test_a_local_folder_or_no_image_is_refused(hub, tiny_model, capsys, monkeypatch):
    code, _, err = run_cli([str(tiny_model()), "alice/never", *on_jobs_flags()], capsys)
    assert code == 2 and "a Job reads its source from the Hub" in err
    monkeypatch.delenv("QUANTIZER_JOBS_IMAGE", raising=False)
    monkeypatch.delenv("SPACE_ID", raising=False)
    code, _, err = run_cli(["alice/jobs-tiny", "--on-jobs", "cpu-basic", "--token", ALICE], capsys)
    assert code == 2 and "pass --jobs-image hf.co/spaces/OWNER/NAME" in err


def test_jobs_are_only_for_signed_in_owners_of_the_namespace(hub):
    started_before = len(hub.jobs.jobs)
    with pytest.raises(Exception, match="401"):
        HfApi(token=False).run_job(image="x", command=["true"], namespace="alice", token=False)
    with pytest.raises(Exception, match="403"):
        HfApi(token=BOB).run_job(image="x", command=["true"], namespace="alice")
    assert len(hub.jobs.jobs) == started_before


def test_the_job_runs_the_same_job_as_the_spec(sources):
    """The Job's command line, parsed by the CLI's own parser, gives back the spec (less what stays here)."""
    specs = [
        JobSpec(source="alice/m", token=ALICE),
        JobSpec(
            source="alice/m@abc123",
            target="acme/out",
            quant_types=["both"],
            group_size=64,
            device="cpu",
            token=ALICE,
            private=True,
            overwrite=True,
            eval_dataset=DatasetRef(repo_id="Salesforce/wikitext", config="wikitext-2-raw-v1", split="test"),
            calibration_dataset=DatasetRef(repo_id="alice/calib", split="train", column="body"),
            eval_tokens=1024,
            int4_method="gptq",
            int4_mixed=5.5,
            calibration_tokens=4096,
            streaming=False,
            allow_partial=True,
            trackio_project="p",
        ),
    ]
    for spec in specs:
        again = spec_from_args(build_parser().parse_args(hf_jobs.job_argv(spec)))
        kept_here = {"token": ALICE, "track": spec.track, "deadline_seconds": None}
        assert dataclasses.replace(again, **kept_here) == dataclasses.replace(spec, deadline_seconds=None)


def test_a_batch_file_is_checked_for_shape_and_length(tmp_path):
    assert parse_lines("a/b\n\n# c/d\na/c x/y # z\n", "f") == [
        *parse_lines("a/b", "f"),
        *parse_lines("a/c x/y", "f"),
    ]
    with pytest.raises(InputError, match="line 2: expected SOURCE \\[TARGET\\], got 3 fields"):
        parse_lines("a/b\na/b c/d e/f\n", "f")
    (tmp_path / "many.txt").write_text("\n".join(f"a/m{i}" for i in range(11)))
    with pytest.raises(InputError, match="holds 11 sources; a batch here takes at most 10"):
        read_batch(str(tmp_path / "many.txt"), Hub(None), limit=10)


def test_a_failed_start_is_not_retried_so_no_job_runs_twice(hub, sources, capsys):
    hub.state.fail("POST", r"^/api/jobs/alice$", 503, times=1)
    posts_before = hub.state.requests.count(("POST", "/api/jobs/alice"))
    started_before = len(hub.jobs.jobs)
    code, _, err = run_cli([sources["jobs-tiny"], "alice/never-started", *on_jobs_flags()], capsys)
    assert code == 1 and "starting the Job" in err, err
    assert hub.state.requests.count(("POST", "/api/jobs/alice")) == posts_before + 1
    assert len(hub.jobs.jobs) == started_before
