"""Bad input: one clear sentence, a non-zero exit, no traceback, nothing written."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from quantizer.cli import main
from tests.support import pace
from tests.support.models import SLOW_SHAPE, TinyShape


def run_cli(argv, capsys) -> tuple[int, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.err


def assert_refused(code: int, err: str, *phrases: str, out_dir: Path) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ")
    for phrase in phrases:
        assert phrase in last, last
    assert not out_dir.exists() or not any(out_dir.iterdir()), list(out_dir.iterdir())


@pytest.fixture
def out_dir(tmp_path) -> Path:
    return tmp_path / "out"


def copy_model(source: Path, dest: Path, drop: tuple[str, ...] = ()) -> Path:
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns(*drop))
    return dest


def test_missing_folder(tmp_path, out_dir, capsys):
    code, err = run_cli([str(tmp_path / "nope"), "t", "--save-only", "--output-dir", str(out_dir)], capsys)
    assert_refused(code, err, "does not exist", "Hub repo id", out_dir=out_dir)


def test_folder_without_config(tiny_model, tmp_path, out_dir, capsys):
    src = copy_model(tiny_model(), tmp_path / "m", drop=("config.json",))
    code, err = run_cli([str(src), "t", "--save-only", "--output-dir", str(out_dir)], capsys)
    assert_refused(code, err, "has no config.json", out_dir=out_dir)


def test_folder_without_weights(tiny_model, tmp_path, out_dir, capsys):
    src = copy_model(tiny_model(), tmp_path / "m", drop=("*.safetensors",))
    code, err = run_cli([str(src), "t", "--save-only", "--output-dir", str(out_dir)], capsys)
    assert_refused(code, err, "has no weights", out_dir=out_dir)


def test_not_a_causal_lm(tiny_model, tmp_path, out_dir, capsys):
    src = copy_model(tiny_model(), tmp_path / "m")
    config = json.loads((src / "config.json").read_text())
    config.update(model_type="bert", architectures=["BertForMaskedLM"])
    (src / "config.json").write_text(json.dumps(config))
    code, err = run_cli([str(src), "t", "--save-only", "--output-dir", str(out_dir)], capsys)
    assert_refused(code, err, "'BertForMaskedLM' is not a causal language model", out_dir=out_dir)


def test_unknown_model_type(tiny_model, tmp_path, out_dir, capsys):
    src = copy_model(tiny_model(), tmp_path / "m")
    config = json.loads((src / "config.json").read_text())
    config.update(model_type="martian_lm", architectures=["MartianForCausalLM"])
    (src / "config.json").write_text(json.dumps(config))
    code, err = run_cli([str(src), "t", "--save-only", "--output-dir", str(out_dir)], capsys)
    assert_refused(code, err, "'martian_lm' is not known", out_dir=out_dir)


def test_lora_adapter_folder(tmp_path, out_dir, capsys):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "base_model_name_or_path": "x"}))
    (adapter / "adapter_model.safetensors").write_bytes(b"\0" * 16)
    code, err = run_cli([str(adapter), "t", "--save-only", "--output-dir", str(out_dir)], capsys)
    assert_refused(code, err, "LoRA/PEFT adapter", "merge the adapter into its base model", out_dir=out_dir)


def test_unknown_quant_type(tiny_model, out_dir, capsys):
    code, err = run_cli(
        [str(tiny_model()), "t", "--quant-type", "int3", "--save-only", "--output-dir", str(out_dir)], capsys
    )
    assert_refused(code, err, "unknown quantization type 'int3'", "int8_weight_only", out_dir=out_dir)


def test_type_the_device_cannot_run(tiny_model, out_dir, capsys):
    code, err = run_cli(
        [
            str(tiny_model()),
            "t",
            "--quant-type",
            "float8_dynamic",
            "--device",
            "cpu",
            "--save-only",
            "--output-dir",
            str(out_dir),
        ],
        capsys,
    )
    assert_refused(code, err, "float8_dynamic needs a CUDA GPU", out_dir=out_dir)


def test_group_size_not_supported(tiny_model, out_dir, capsys):
    code, err = run_cli(
        [
            str(tiny_model()),
            "t",
            "--quant-type",
            "int4_weight_only",
            "--group-size",
            "100",
            "--save-only",
            "--output-dir",
            str(out_dir),
        ],
        capsys,
    )
    assert_refused(code, err, "group size 100 is not supported", out_dir=out_dir)


def test_group_size_that_does_not_divide_a_layer(tiny_model, out_dir, capsys):
    src = tiny_model(TinyShape(hidden=96, intermediate=160, tied=False))
    code, err = run_cli(
        [
            str(src),
            "t",
            "--quant-type",
            "int4_weight_only",
            "--group-size",
            "64",
            "--save-only",
            "--output-dir",
            str(out_dir),
        ],
        capsys,
    )
    assert_refused(
        code, err, "group size 64 does not divide", "self_attn.q_proj (96)", "--group-size 32", out_dir=out_dir
    )


def test_output_exists_without_overwrite(tiny_model, out_dir, capsys):
    (out_dir / "t").mkdir(parents=True)
    (out_dir / "t" / "keep.txt").write_text("mine")
    code, err = run_cli([str(tiny_model()), "t", "--save-only", "--output-dir", str(out_dir)], capsys)
    assert code == 2 and "already exists: pass --overwrite" in err and "Traceback" not in err
    assert [p.name for p in out_dir.iterdir()] == ["t"] and (out_dir / "t" / "keep.txt").read_text() == "mine"


def test_overwrite_replaces_the_folder(tiny_model, out_dir, capsys):
    (out_dir / "t").mkdir(parents=True)
    (out_dir / "t" / "stale.txt").write_text("old")
    code, err = run_cli([str(tiny_model()), "t", "--save-only", "--overwrite", "--output-dir", str(out_dir)], capsys)
    assert code == 0, err
    assert not (out_dir / "t" / "stale.txt").exists() and (out_dir / "t" / "model.safetensors").is_file()
    assert [p.name for p in out_dir.iterdir()] == ["t"]


def test_source_is_required(capsys):
    code, err = run_cli([], capsys)
    assert code == 2 and "SOURCE is required" in err


def test_a_broken_output_fails_the_job_and_is_not_kept(tiny_model, tmp_path, out_dir, capsys):
    from tests.support.models import plant_unused_outliers

    src = plant_unused_outliers(copy_model(tiny_model(), tmp_path / "outliers"))
    code = main(
        [str(src), "t", "--quant-type", "int8_weight_only", "--save-only", "--output-dir", str(out_dir), "--json"]
    )
    captured = capsys.readouterr()
    assert code == 1
    result = json.loads(captured.out)["results"][0]
    assert result["status"] == "failed" and "picks the same next token" in result["error"]
    assert result["verify"]["top1_agreement"] < 0.2
    assert "Traceback" not in captured.err
    assert not out_dir.exists() or not any(out_dir.iterdir())


def test_speed_only_keeps_the_broken_output_and_says_so(tiny_model, tmp_path, out_dir, capsys):
    """A timing run on random weights: the same broken output is kept, with the refusal in its report and card."""
    from tests.support.models import plant_unused_outliers

    src = plant_unused_outliers(copy_model(tiny_model(), tmp_path / "outliers"))
    argv = [str(src), "t", "--quant-type", "int8_weight_only", "--speed-only", "--json", "--no-tracking"]
    code = main([*argv, "--save-only", "--output-dir", str(out_dir)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result = json.loads(captured.out)["results"][0]
    assert result["status"] == "ok" and result["verify"]["top1_agreement"] < 0.2
    refusal = next(n for n in result["notes"] if n.startswith("speed-only: kept although"))
    assert "picks the same next token" in refusal
    card = (out_dir / "t" / "README.md").read_text()
    assert "speed-only run: the quality checks were measured but not enforced" in card and refusal in card

    assert main(argv) == 2  # a push is refused before any work: a failed output is never published
    assert "use it with --save-only" in capsys.readouterr().err


def test_real_command_line_exit_code_and_message(tmp_path):
    """The installed entry point, in its own process: exit code 2 and one line, no traceback."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run(
        [sys.executable, "-m", "quantizer", str(tmp_path / "missing"), "t", "--save-only"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "does not exist" in proc.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "out").exists()


def test_the_job_deadline_stops_even_an_explicit_gptq(tiny_model, tmp_path, capsys, monkeypatch):
    source = tiny_model(SLOW_SHAPE)
    monkeypatch.setenv("QUANTIZER_JOB_TIMEOUT", "4")
    started = time.time()
    argv = [str(source), "late", "--quant-type", "int4_weight_only", "--int4-method", "gptq", "--save-only"]
    code = main([*argv, "--output-dir", str(tmp_path), "--no-tracking"])
    assert code == 130 and time.time() - started < pace.seconds(20)
    assert "stopped: the job ran past its deadline of 4 s and was stopped; nothing was kept" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # no output, no staging folder


@pytest.mark.parametrize("shard", ["/etc/hostname", "../model.safetensors", "sub/../../x.safetensors"])
def test_a_local_folder_with_a_crafted_index_is_refused_before_loading(tiny_model, tmp_path, capsys, shard):
    from tests.support.hub_repos import variant

    folder = variant(tiny_model(), tmp_path / "crafted")
    index = {"metadata": {}, "weight_map": {"model.embed_tokens.weight": shard}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    code = main([str(folder), "x", "--save-only", "--output-dir", str(tmp_path / "out"), "--no-tracking"])
    err = capsys.readouterr().err
    assert code == 2 and "names weight files that are not files of this model" in err and repr(shard) in err
    assert not (tmp_path / "out").exists()


def test_a_card_pushed_from_a_local_folder_does_not_publish_the_machines_path(tiny_model, tmp_path, capsys):
    from huggingface_hub import HfApi

    from tests.conftest import ALICE

    source = tiny_model()
    code = main([str(source), "alice/from-a-folder", "--token", ALICE, "--no-tracking", "--output-dir", str(tmp_path)])
    assert code == 0, capsys.readouterr().err
    api = HfApi(token=ALICE)
    card = Path(api.hf_hub_download("alice/from-a-folder", "README.md")).read_text()
    commit = next(c for c in api.list_repo_commits("alice/from-a-folder") if c.title != "initial commit")
    for published in (card, commit.title, commit.message or ""):
        assert str(source.parent) not in published
    assert f"python -m quantizer ./{source.name} alice/from-a-folder" in card
