"""Evaluation and calibration text from Hub datasets, read with the `datasets` library from the loopback Hub: the
job measures on the named split and column, the report and the card name it, and a bad name is refused before
anything is downloaded or written."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from huggingface_hub import HfApi

from quantizer.cli import main
from quantizer.texts import license_texts, package_descriptions
from tests.conftest import ALICE, HUB

SALESFORCE = "hf_salesforce_WRITE_5d4c3b2a19080706"
WIKITEXT_NAME = "Salesforce/wikitext (wikitext-2-raw-v1, test split, column 'text')"
CONFIGS = """---
configs:
- config_name: wikitext-2-raw-v1
  data_files:
  - split: test
    path: wikitext-2-raw-v1/test-*
  - split: train
    path: wikitext-2-raw-v1/train-*
---
"""


def lines(text: str) -> list[str]:
    """Rows as wikitext keeps them: one line each, ending in a newline, blank rows between paragraphs."""
    return [line + "\n" if line.strip() else "" for line in text.splitlines()]


@pytest.fixture(scope="module")
def datasets_on_hub(tmp_path_factory) -> dict[str, list[str]]:
    """A small stand-in for Salesforce/wikitext (its config, splits and column, other English text) and a
    calibration set with its text in a column named `content`."""
    HUB.state.add_user(SALESFORCE, "Salesforce")
    folder = tmp_path_factory.mktemp("wikitext")
    test_rows, train_rows = lines(license_texts())[:1500], lines(license_texts())[1500:2500]
    (folder / "README.md").write_text(CONFIGS)
    (folder / "wikitext-2-raw-v1").mkdir()
    pq.write_table(pa.table({"text": test_rows}), folder / "wikitext-2-raw-v1" / "test-00000-of-00001.parquet")
    pq.write_table(pa.table({"text": train_rows}), folder / "wikitext-2-raw-v1" / "train-00000-of-00001.parquet")
    api = HfApi(token=SALESFORCE)
    api.create_repo("Salesforce/wikitext", repo_type="dataset", exist_ok=True)
    api.upload_folder(folder_path=folder, repo_id="Salesforce/wikitext", repo_type="dataset")
    calibration = tmp_path_factory.mktemp("calibration")
    rows = [p for p in package_descriptions().split("\n\n") if p.strip()][:400]
    pq.write_table(pa.table({"content": rows, "id": list(range(len(rows)))}), calibration / "train.parquet")
    HfApi(token=ALICE).create_repo("alice/english-mix", repo_type="dataset", exist_ok=True)
    HfApi(token=ALICE).upload_folder(folder_path=calibration, repo_id="alice/english-mix", repo_type="dataset")
    return {"test": test_rows, "calibration": rows}


def run(argv: list[str], capsys) -> tuple[int, str, dict | None]:
    code = main([*argv, "--json", "--no-tracking", "--eval-tokens", "512", "--calibration-tokens", "512"])
    captured = capsys.readouterr()
    return code, captured.err, json.loads(captured.out) if captured.out.strip() else None


def test_eval_dataset_alone_measures_wikitext_test_and_names_it(datasets_on_hub, tiny_model, tmp_path, capsys):
    source = str(tiny_model())
    job_folders = set(Path(tempfile.gettempdir()).glob("quantizer-job-*"))
    code, err, report = run([source, "wiki", "--eval-dataset", "--save-only", "--output-dir", str(tmp_path)], capsys)
    assert code == 0, err
    # the dataset was read into the job's own folder, which went with the job
    assert set(Path(tempfile.gettempdir()).glob("quantizer-job-*")) == job_folders
    assert report["eval_text"] == WIKITEXT_NAME
    assert WIKITEXT_NAME in (tmp_path / "wiki" / "README.md").read_text()
    # the same text given as a file measures the same: the job read the dataset's test rows, in order
    text = tmp_path / "rows.txt"
    text.write_text("".join(datasets_on_hub["test"]), encoding="utf-8")
    argv = [source, "file", "--eval-text", str(text), "--save-only", "--output-dir", str(tmp_path)]
    code, err, from_file = run(argv, capsys)
    assert code == 0, err
    assert report["ppl_source"] == pytest.approx(from_file["ppl_source"], rel=1e-6)


def test_calibration_dataset_tunes_gptq_and_is_named(datasets_on_hub, tiny_model, tmp_path, capsys):
    argv = [str(tiny_model()), "cal", "--quant-type", "int4_weight_only", "--int4-method", "gptq"]
    argv += ["--calibration-dataset", "alice/english-mix", "--calibration-column", "content"]
    code, err, report = run([*argv, "--save-only", "--output-dir", str(tmp_path), "--token", ALICE], capsys)
    assert code == 0, err
    name = "alice/english-mix (train split, column 'content')"
    assert report["calibration_text"] == name
    assert report["eval_text"].startswith("Python's pydoc topics")
    assert name in (tmp_path / "cal" / "README.md").read_text()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--eval-dataset", "alice/no-such-set"], "dataset alice/no-such-set was not found on the Hub"),
        (["--eval-dataset", "--eval-column", "body"], "has no column 'body' (its columns: text)"),
        (["--eval-dataset", "--eval-split", "validation"], "validation"),
        (["--eval-dataset", "Salesforce/wikitext:wikitext-103-raw-v1"], "wikitext-103-raw-v1"),
    ],
)
def test_a_bad_dataset_is_refused_before_any_work(datasets_on_hub, tiny_model, tmp_path, capsys, options, message):
    code, err, _ = run([str(tiny_model()), "bad", *options, "--save-only", "--output-dir", str(tmp_path)], capsys)
    assert code == 2, err
    assert message in err
    assert not any(tmp_path.iterdir())
