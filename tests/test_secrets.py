"""A planted secret: a known token put into every path that can carry text must come out nowhere.

The token is the job's own (`--token`), and it is also planted where a careless program would
echo it: in the source folder's name (so it reaches the card, the report, the commit and
Trackio), in a Hub error message, in an exception raised mid-job, and in `--debug` tracebacks.
"""

from __future__ import annotations

import json
from pathlib import Path

from quantizer.cli import main
from quantizer.events import Event, EventStream
from tests.conftest import ALICE
from tests.support.hub_repos import variant

SECRET = ALICE


def files_with_secret(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]


def test_a_secret_in_the_source_path_reaches_no_card_report_commit_or_run(hub, tiny_model, tmp_path, capsys):
    import os

    source = variant(tiny_model(), tmp_path / f"model-{SECRET}")
    out = tmp_path / "kept"
    argv = [str(source), "alice/planted", "--token", SECRET, "--output-dir", str(out), "--json"]
    code = main([*argv, "--trackio-project", "planted"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert SECRET not in captured.out + captured.err
    report = json.loads(captured.out)
    assert "***" in report["source"]  # scrubbed, not dropped: the user still sees which folder it was
    assert (out / "planted" / "README.md").is_file() and files_with_secret(out) == []
    repo = hub.state.repo("model", "alice/planted")
    assert not [path for path, f in repo.head.files.items() if SECRET.encode() in f.data]
    assert all(SECRET not in c.title + c.message for c in repo.commits)
    assert files_with_secret(Path(os.environ["TRACKIO_DIR"])) == []


def test_a_hub_error_that_echoes_the_token_is_scrubbed(hub, capsys):
    hub.state.fail("GET", r"^/api/whoami", 400, message=f"malformed authorization header: Bearer {SECRET}")
    code = main(["alice/anything", "--token", SECRET, "--no-tracking"])
    err = capsys.readouterr().err
    assert code == 1 and "the Hub refused checking the token: malformed authorization header: Bearer ***" in err
    assert SECRET not in err


def test_an_unexpected_failure_mid_job_and_its_debug_traceback_are_scrubbed(tiny_model, tmp_path, capsys):
    source = variant(tiny_model(), tmp_path / f"broken-{SECRET}")
    weights = source / "model.safetensors"  # as large as the config says, so preflight passes it, but not safetensors
    weights.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken!" + bytes(weights.stat().st_size))
    out = tmp_path / "out"
    argv = [str(source), "x", "--save-only", "--output-dir", str(out), "--json", "--no-tracking", "--debug"]
    code = main([*argv, "--token", SECRET])
    captured = capsys.readouterr()
    assert code == 1
    assert "Traceback (most recent call last)" in captured.err and "***" in captured.err
    assert SECRET not in captured.out + captured.err
    assert not out.exists() or files_with_secret(out) == []


def test_event_data_is_scrubbed_before_any_sink_sees_it():
    seen: list[Event] = []
    events = EventStream(seen.append)
    events.add_secret(SECRET)
    events.emit(Event("log", f"token {SECRET}", data={"nested": [f"a {SECRET} b", {"k": SECRET}], "n": 3}))
    assert SECRET not in repr(seen) and seen[0].data == {"nested": ["a *** b", {"k": "***"}], "n": 3}
