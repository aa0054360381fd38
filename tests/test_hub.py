"""Hub sources and targets against the loopback Hub, through the real huggingface_hub client over HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from huggingface_hub import HfApi

from quantizer.cli import main
from quantizer.errors import SourceError
from quantizer.resources import Need, check, estimate
from quantizer.source import select_weight_files
from tests.conftest import ALICE, BOB, CAROL
from tests.support.hub_repos import upload_model, variant

SOURCE = "alice/tiny-smollm3"


@pytest.fixture(scope="session")
def alice() -> HfApi:
    return HfApi(token=ALICE)


@pytest.fixture(scope="session")
def hub_source(hub, alice, tiny_model, tmp_path_factory) -> str:
    folder = variant(tiny_model(), tmp_path_factory.mktemp("upload") / "m")
    upload_model(alice, SOURCE, folder)
    return SOURCE


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def repo_ids(hub) -> set[str]:
    return {repo_id for (_, repo_id) in hub.state.repos}


def card_metadata(api: HfApi, repo_id: str, tmp_path: Path) -> tuple[dict, str]:
    text = Path(api.hf_hub_download(repo_id, "README.md", local_dir=tmp_path / repo_id)).read_text()
    header = text.split("---\n")[1]
    return yaml.safe_load(header), text


def test_repo_id_to_pushed_target_that_stock_transformers_loads(hub, hub_source, alice, tmp_path, capsys):
    code, out, err = run_cli(
        [hub_source, "alice/tiny-int8", "--quant-type", "int8_weight_only", "--token", ALICE, "--json"], capsys
    )
    assert code == 0, err
    result = json.loads(out)["results"][0]
    assert result["url"] == f"{hub.endpoint}/alice/tiny-int8" and result["output_dir"] is None

    commits = alice.list_repo_commits("alice/tiny-int8")
    ours = [c for c in commits if c.title != "initial commit"]
    source_sha = alice.model_info(hub_source).sha
    assert len(ours) == 1
    assert hub_source in ours[0].title and source_sha[:12] in ours[0].title and "int8_weight_only" in ours[0].title
    files = set(alice.list_repo_files("alice/tiny-int8"))
    assert {"config.json", "model.safetensors", "README.md", "tokenizer.json", "chat_template.jinja"} <= files

    meta, text = card_metadata(alice, "alice/tiny-int8", tmp_path)
    assert meta["base_model"] == hub_source and meta["base_model_relation"] == "quantized"
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-generation"
    assert meta["license"] == "apache-2.0"
    assert {"torchao", "smollm3", "int8_weight_only"} <= set(meta["tags"])
    for fact in (
        result["torchao_config"],
        'model_id = "alice/tiny-int8"',
        "vllm serve alice/tiny-int8",
        f"python -m quantizer {hub_source}@{source_sha} alice/tiny-int8",  # pinned to the full commit
        "torchao 0.18.0",
    ):
        assert fact in text, fact

    # a fresh process that knows only the endpoint loads it and reproduces the reported logits error
    script = textwrap.dedent("""
        import json, sys, torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from quantizer.texts import build_eval_data, default_eval_text
        from tests.support.models import in_the_jobs_dtype
        source, target = sys.argv[1], sys.argv[2]
        data = build_eval_data(AutoTokenizer.from_pretrained(target), default_eval_text())
        with torch.no_grad():
            ref = in_the_jobs_dtype(AutoModelForCausalLM.from_pretrained(source))(data.batch).logits.float()
            got = in_the_jobs_dtype(AutoModelForCausalLM.from_pretrained(target))(data.batch).logits.float()
        print(json.dumps({"rel_err": ((got - ref).norm() / ref.norm()).item(),
                          "quantized": type(AutoModelForCausalLM.from_pretrained(target).model.layers[0]
                                            .self_attn.q_proj.weight).__name__}))
    """)
    env = {
        "PATH": os.environ["PATH"],
        "HF_ENDPOINT": hub.endpoint,
        "HF_HOME": str(tmp_path / "hf"),
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
        "TORCHAO_FORCE_SKIP_LOADING_SO_FILES": "1",
        # the same machine as the job's: a CPU limited to AVX2 kernels stays limited in the fresh process
        **{k: os.environ[k] for k in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY") if k in os.environ},
    }
    proc = subprocess.run(
        [sys.executable, "-c", script, hub_source, "alice/tiny-int8"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    fresh = json.loads(proc.stdout.strip().splitlines()[-1])
    assert fresh["quantized"] == "Int8Tensor"
    assert fresh["rel_err"] == pytest.approx(result["verify"]["logits_rel_err"], rel=1e-4)


def test_both_types_into_an_organisation_as_private_repos(hub, hub_source, alice, capsys):
    code, out, err = run_cli(
        [hub_source, "acme/tiny", "--quant-type", "both", "--private", "--token", ALICE, "--json"], capsys
    )
    assert code == 0, err
    targets = [r["target_repo"] for r in json.loads(out)["results"]]
    assert targets == ["acme/tiny-int8wo", "acme/tiny-int4wo"]
    for target in targets:
        assert alice.model_info(target).private is True
    assert not HfApi(token=CAROL).repo_exists("acme/tiny-int8wo")  # private: invisible to others


def test_default_target_name_in_the_token_owners_namespace(hub, hub_source, capsys, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", ALICE)  # the environment's token, as on a developer's machine
    code, out, err = run_cli([hub_source, "--quant-type", "int8_dynamic", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["results"][0]["target_repo"] == "alice/tiny-smollm3-torchao-int8dq"


def test_existing_target_is_refused_then_replaced_with_overwrite(hub, hub_source, alice, capsys):
    target = "alice/tiny-twice"
    assert run_cli([hub_source, target, "--token", ALICE], capsys)[0] == 0
    before = len(alice.list_repo_commits(target))
    code, _, err = run_cli([hub_source, target, "--token", ALICE], capsys)
    assert code == 2 and f"the target repo {target} already exists: pass --overwrite" in err
    assert len(alice.list_repo_commits(target)) == before
    code, _, err = run_cli(
        [hub_source, target, "--quant-type", "int8_dynamic", "--token", ALICE, "--overwrite"], capsys
    )
    assert code == 0, err
    commits = alice.list_repo_commits(target)
    assert len(commits) == before + 1 and "int8_dynamic" in commits[0].title


def test_revision_is_read_and_named(hub, hub_source, alice, capsys):
    sha = alice.model_info(hub_source).sha
    code, out, err = run_cli([f"{hub_source}@{sha}", "alice/tiny-at-rev", "--token", ALICE, "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["revision"] == sha


@pytest.fixture(scope="session")
def bad_sources(hub, alice, tiny_model, tmp_path_factory) -> dict[str, str]:
    """Repos each of which preflight must refuse, uploaded once."""
    base = tmp_path_factory.mktemp("bad")
    src = tiny_model()
    repos = {
        "adapter": variant(src, base / "adapter", extra={"adapter_config.json": '{"peft_type": "LORA"}'}),
        "noconfig": variant(src, base / "noconfig", drop=("config.json",)),
        "unsupported": variant(
            src, base / "unsupported", config={"model_type": "bert", "architectures": ["BertForMaskedLM"]}
        ),
        "noweights": variant(src, base / "noweights", drop=("*.safetensors",)),
        "gated": variant(src, base / "gated"),
    }
    for name, folder in repos.items():
        upload_model(alice, f"alice/{name}", folder)
    hub.state.repo("model", "alice/gated").gated = "manual"
    return {name: f"alice/{name}" for name in repos}


@pytest.mark.parametrize(
    ("case", "token", "phrases"),
    [
        (
            "missing",
            ALICE,
            ["alice/missing was not found", "if it is private, sign in or pass a token with read access"],
        ),
        ("gated", CAROL, ["alice/gated is gated: accept the license at", "/alice/gated"]),
        ("bad-token", "hf_not_a_real_token_000000", ["the token is invalid or expired"]),
        ("adapter", ALICE, ["LoRA/PEFT adapter", "merge the adapter into its base model"]),
        ("noconfig", ALICE, ["has no config.json"]),
        ("noweights", ALICE, ["has no weights"]),
        ("unsupported", ALICE, ["'BertForMaskedLM' is not a causal language model"]),
        ("read-only", BOB, ["read-only: pushing needs a token with write access"]),
        ("foreign-namespace", CAROL, ["carol cannot write to 'acme'"]),
    ],
)
def test_preflight_failures_say_what_to_do_and_create_nothing(
    case, token, phrases, hub, hub_source, bad_sources, tmp_path, capsys
):
    source = {
        "missing": "alice/missing",
        "bad-token": hub_source,
        "read-only": hub_source,
        "foreign-namespace": hub_source,
    }.get(case) or bad_sources[case]
    target = "acme/refused" if case == "foreign-namespace" else f"{'carol' if token == CAROL else 'alice'}/refused"
    repos_before = repo_ids(hub)
    writes_before = sum(1 for m, _ in hub.state.requests if m in ("POST", "PUT", "DELETE"))
    code, _, err = run_cli([source, target, "--token", token, "--output-dir", str(tmp_path / "out")], capsys)
    assert code == 2, err
    last = err.strip().splitlines()[-1]
    for phrase in phrases:
        assert phrase in last
    assert "Traceback" not in err and token not in err
    assert repo_ids(hub) == repos_before
    writes = [r for r in hub.state.requests if r[0] in ("POST", "PUT", "DELETE")][writes_before:]
    assert all(path == "/api/validate-yaml" for _, path in writes), writes
    assert not (tmp_path / "out").exists()


def test_a_push_that_fails_midway_leaves_no_repo(hub, hub_source, capsys):
    hub.state.fail("POST", r"^/api/models/alice/half-made/commit/", 500, times=100)
    code, out, err = run_cli([hub_source, "alice/half-made", "--token", ALICE, "--json"], capsys)
    assert code == 1
    result = json.loads(out)["results"][0]
    assert result["status"] == "failed" and "did not answer while uploading (HTTP 500) after 4 tries" in result["error"]
    assert "alice/half-made" not in repo_ids(hub)
    assert "was deleted again" in err


def test_transient_failures_are_retried(hub, hub_source, alice, capsys):
    hub.state.fail("GET", r"^/alice/tiny-smollm3/resolve/", 429, times=1)
    hub.state.fail("GET", r"^/api/models/alice/tiny-smollm3/tree/", 0, times=1)  # dropped connection
    hub.state.fail("POST", r"^/api/models/alice/retried/commit/", 503, times=2)
    code, _, err = run_cli([hub_source, "alice/retried", "--token", ALICE], capsys)
    assert code == 0, err
    assert err.count("retrying in") >= 2
    assert len([c for c in alice.list_repo_commits("alice/retried") if c.title != "initial commit"]) == 1


def test_permanent_failures_are_not_retried(hub, hub_source, capsys):
    before = len([r for r in hub.state.requests if r == ("GET", "/api/whoami-v2")])
    code, _, err = run_cli([hub_source, "x/y", "--token", "hf_wrong_token_zzzzzzzzzz"], capsys)
    assert code == 2 and "invalid or expired" in err
    assert len([r for r in hub.state.requests if r == ("GET", "/api/whoami-v2")]) == before + 1


def test_save_only_never_writes_to_the_hub(hub, hub_source, tmp_path, capsys):
    writes_before = sum(1 for m, _ in hub.state.requests if m in ("POST", "PUT", "DELETE"))
    code, _, err = run_cli([hub_source, "kept", "--save-only", "--token", ALICE, "--output-dir", str(tmp_path)], capsys)
    assert code == 0, err
    assert (tmp_path / "kept" / "model.safetensors").is_file() and (tmp_path / "kept" / "README.md").is_file()
    assert sum(1 for m, _ in hub.state.requests if m in ("POST", "PUT", "DELETE")) == writes_before


def test_small_lfs_threshold_takes_the_lfs_batch_and_put_path(hub, hub_source, alice, tmp_path, capsys):
    hub.lfs_threshold = 1024
    try:
        puts_before = sum(1 for m, p in hub.state.requests if m == "PUT" and p.startswith("/lfs-upload/"))
        code, _, err = run_cli([hub_source, "alice/tiny-lfs", "--token", ALICE], capsys)
        assert code == 0, err
    finally:
        hub.lfs_threshold = 10 * 1024 * 1024
    puts = sum(1 for m, p in hub.state.requests if m == "PUT" and p.startswith("/lfs-upload/")) - puts_before
    lfs_files = {f.path for f in alice.list_repo_tree("alice/tiny-lfs", recursive=True) if getattr(f, "lfs", None)}
    assert {"tokenizer.json", "config.json", "README.md"} <= lfs_files and puts >= len(lfs_files) - 1
    downloaded = Path(alice.hf_hub_download("alice/tiny-lfs", "config.json", local_dir=tmp_path))
    assert json.loads(downloaded.read_text())["quantization_config"]["quant_method"] == "torchao"


def test_the_token_appears_nowhere(hub, hub_source, tmp_path, capsys):
    out_dir = tmp_path / "out"
    code, out, err = run_cli(
        [hub_source, "alice/tiny-secret", "--token", ALICE, "--output-dir", str(out_dir), "--json"], capsys
    )
    assert code == 0, err
    assert ALICE not in out and ALICE not in err
    written = [p for p in out_dir.rglob("*") if p.is_file()]
    assert written and not [p for p in written if ALICE.encode() in p.read_bytes()]
    repo = hub.state.repo("model", "alice/tiny-secret")
    assert not [path for path, f in repo.head.files.items() if ALICE.encode() in f.data]


def test_weights_prefer_safetensors_over_bin():
    assert select_weight_files(["pytorch_model.bin", "model.safetensors"]) == ["model.safetensors"]
    assert select_weight_files(["pytorch_model.bin", "config.json"]) == ["pytorch_model.bin"]
    assert select_weight_files(["sub/model.safetensors", "config.json"]) == []


def test_a_job_that_does_not_fit_says_the_numbers(tmp_path):
    needs = estimate(10**15, 2, download=True, keep_outputs=True, workdir=tmp_path, output_dir=tmp_path)
    with pytest.raises(SourceError) as err:
        check(needs)
    message = str(err.value)
    assert "of memory but" in message and "of disk in" in message and "GB is free" in message
    check([Need("memory", None, 1), Need("disk", tmp_path, 1)])  # a small job fits


def test_a_creation_whose_answer_was_lost_still_counts_as_this_jobs(hub, hub_source, capsys):
    """The Hub made the repo but the answer never arrived: the retry finds it, and a later failure removes it."""
    hub.state.lose_answer("POST", r"^/api/repos/create$")
    hub.state.fail("POST", r"^/api/models/alice/lost-answer/commit/", 500, times=100)
    code, _, err = run_cli([hub_source, "alice/lost-answer", "--token", ALICE], capsys)
    assert code == 1 and "retrying in" in err and "was deleted again" in err
    assert "alice/lost-answer" not in repo_ids(hub)


def test_private_with_overwrite_makes_the_repo_private_before_the_upload(hub, hub_source, alice, capsys):
    target = "alice/goes-private"
    assert run_cli([hub_source, target, "--token", ALICE], capsys)[0] == 0
    assert not alice.model_info(target).private
    before = len(hub.state.requests)
    code, _, err = run_cli([hub_source, target, "--token", ALICE, "--overwrite", "--private"], capsys)
    assert code == 0, err
    assert alice.model_info(target).private
    calls = [f"{m} {p}" for m, p in hub.state.requests[before:]]
    settings = next(i for i, c in enumerate(calls) if c == f"PUT /api/models/{target}/settings")
    upload = next(i for i, c in enumerate(calls) if f"/api/models/{target}/preupload/" in c)
    assert settings < upload


def test_a_private_source_gives_a_private_target_unless_told_otherwise(hub, alice, tiny_model, tmp_path, capsys):
    upload_model(alice, "alice/hidden", variant(tiny_model(), tmp_path / "hidden"), private=True)
    code, _, err = run_cli(["alice/hidden", "--token", ALICE], capsys)
    assert code == 0, err
    assert "the target repo is private because the source is private" in err
    assert alice.model_info("alice/hidden-torchao-int8wo").private


def test_a_host_caps_the_source_size(hub, hub_source):
    from quantizer.errors import SourceError
    from quantizer.pipeline import JobSpec, run

    spec = JobSpec(source=hub_source, token=ALICE, public=True, max_source_bytes=1000, track=False)
    repos = repo_ids(hub)
    with pytest.raises(SourceError, match=r"MB of weights; this Space takes sources up to 1.0 KB: duplicate the Space"):
        run(spec)
    assert repo_ids(hub) == repos
