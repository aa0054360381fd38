"""The Space: the `quantize` API through gradio_client, the page in headless Chromium, and sign-in."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest
import torch
from gradio_client import Client
from huggingface_hub import HfApi
from transformers import AutoModelForCausalLM, AutoTokenizer

from quantizer import settings, suggest
from quantizer.errors import InputError
from quantizer.texts import build_eval_data, default_eval_text
from quantizer.tracking import history
from tests.conftest import ALICE
from tests.support import pace
from tests.support.app_server import ROOT, AppServer
from tests.support.hub_repos import upload_model, variant
from tests.support.models import in_the_jobs_dtype

SOURCE = "alice/ui-source"
AUTO = "auto (128, lowered to fit the model)"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SCREENSHOTS = ROOT / "test-output" / "screenshots"


@pytest.fixture(scope="module")
def ui_source(hub, tiny_model, tmp_path_factory) -> str:
    folder = variant(tiny_model(), tmp_path_factory.mktemp("ui-upload") / "m")
    upload_model(HfApi(token=ALICE), SOURCE, folder)
    return SOURCE


@pytest.fixture(scope="module")
def app(hub, tmp_path_factory):
    base = tmp_path_factory.mktemp("app")
    server = AppServer(base / "app.log", env={"QUANTIZER_OUTPUT_ROOT": str(base / "saved")}).start()
    yield server
    server.stop()
    assert ALICE not in (base / "app.log").read_text(), "the token reached the server log"


def test_api_streams_the_log_and_pushes_a_loadable_model(app, ui_source, hub):
    client = Client(app.url, verbose=False)
    job = client.submit(
        ui_source,
        ["int8_weight_only"],
        AUTO,
        "auto",
        "ui-int8",
        "alice",
        False,
        False,
        False,
        ALICE,
        api_name="/quantize",
    )
    updates = [update for update in job]
    status, log, results, _chart, samples, report, _download = job.result()
    assert len(updates) > 2 and all(u[0].startswith("⏳") for u in updates[:-1])
    assert len(updates[0][1].splitlines()) < len(log.splitlines())  # the log grew while the job ran
    assert status.startswith("✅ done") and f"{hub.endpoint}/alice/ui-int8" in status
    assert "▶ quantizing with Int8WeightOnlyConfig" in log and "pushed" in log
    # before any work the visitor sees the model's size, what the job needs and what this machine has
    checked = re.search(r"GB of weights: this job needs about [\d.]+ GB of memory \([\d.]+ GB available\)", log)
    assert checked and log.index(checked[0]) < log.index("▶ quantizing")
    assert results["data"][0][2] == f"[alice/ui-int8]({hub.endpoint}/alice/ui-int8)"
    assert "**Prompt:**" in samples
    assert ALICE not in json.dumps(updates, ensure_ascii=False)

    result = report["results"][0]
    # the Space's job is a Trackio run with the report's figures, and the History tab lists it
    run = next(r for r in history() if r.get("url") == result["url"])
    assert run["status"] == "finished" and run["size_ratio"] == pytest.approx(result["size_ratio"])
    assert run["ppl_quantized"] == pytest.approx(result["verify"]["ppl_quantized"])
    rows = client.predict(api_name="/history")["data"]
    row = next(r for r in rows if r[3] == f"[alice/ui-int8]({result['url']})")
    assert row[2] == "int8_weight_only" and row[6] == "finished" and row[4] == f"{result['size_ratio']:.1%}"

    model = in_the_jobs_dtype(AutoModelForCausalLM.from_pretrained("alice/ui-int8"))
    tokenizer = AutoTokenizer.from_pretrained("alice/ui-int8")
    data = build_eval_data(tokenizer, default_eval_text())
    with torch.no_grad():
        ref = in_the_jobs_dtype(AutoModelForCausalLM.from_pretrained(ui_source))(data.batch).logits.float()
        got = model(data.batch).logits.float()
    assert ((got - ref).norm() / ref.norm()).item() == pytest.approx(result["verify"]["logits_rel_err"], rel=1e-4)


def test_the_form_suggests_a_type_for_where_the_model_will_run(app):
    """The "Where will it run?" choice fills the form from the committed measurements (quantizer.suggest), through
    the same API a script calls."""
    client = Client(app.url, verbose=False)
    types, method, text = client.predict("cpu", api_name="/suggest")
    advice = suggest.suggest("cpu")
    assert types == [advice.quant_type] and method == (advice.int4_method or "auto")
    assert advice.rows in text and text.startswith("For a CPU:")


def test_api_bad_input_gives_the_cli_sentence_not_a_trace(app):
    client = Client(app.url, verbose=False)
    status, log, *_ = client.predict(
        "alice/does-not-exist",
        ["int8_weight_only"],
        AUTO,
        "auto",
        "",
        "alice",
        False,
        False,
        False,
        ALICE,
        api_name="/quantize",
    )
    assert status.startswith("❌ alice/does-not-exist was not found")
    assert "if it is private, sign in or pass a token with read access" in status
    assert "Traceback" not in log


def test_api_save_on_the_space_only(app, ui_source, hub):
    client = Client(app.url, verbose=False)
    repos_before = set(hub.state.repos)
    status, _log, _results, _chart, _samples, report, _download = client.predict(
        ui_source, ["int4_weight_only"], AUTO, "asym", "kept-here", "", False, False, True, "", api_name="/quantize"
    )
    assert status.startswith("✅ done"), status
    assert report["results"][0]["int4_method"] == "asym"
    out = Path(report["results"][0]["output_dir"])
    assert (out / "model.safetensors").is_file() and out.name == "kept-here"
    assert set(hub.state.repos) == repos_before


def test_api_makes_a_mixed_precision_int4(app, ui_source):
    """The form's mixed-precision budget reaches the job: the report and the kept copy's card list the int8 layers."""
    client = Client(app.url, verbose=False)
    status, _log, _results, _chart, _samples, report, _download = client.predict(
        source=ui_source,
        quant_types=["int4_weight_only"],
        int4_method="asym",
        int4_mixed=5.5,
        target_name="mixed-here",
        save_only=True,
        api_name="/quantize",
    )
    assert status.startswith("✅ done"), status
    kept = report["results"][0]["mixed"]["kept"]
    assert kept and report["results"][0]["mixed"]["bits"] <= 5.5
    card = (Path(report["results"][0]["output_dir"]) / "README.md").read_text()
    assert all(f"| `{name}` |" in card for name in kept)


def test_page_runs_a_job_end_to_end_in_chromium(app, ui_source, hub):
    from playwright.sync_api import expect, sync_playwright

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        page = browser.new_page(viewport={"width": 1280, "height": 1600})
        page.goto(app.url)
        page.locator("#source textarea, #source input").first.fill(ui_source)
        expect(page.locator("#target-name textarea, #target-name input").first).to_have_value(
            "ui-source-torchao-int8wo", timeout=15_000
        )
        page.get_by_label("Hugging Face token").fill(ALICE)
        page.get_by_label("Hugging Face token").blur()
        page.locator("#target-name textarea, #target-name input").first.fill("ui-browser")
        page.screenshot(path=str(SCREENSHOTS / "1-form.png"), full_page=True)
        page.locator("#run").click()
        log = page.locator("#log textarea")
        expect(log).to_have_value(re.compile("job started"), timeout=5_000)
        expect(log).to_have_value(re.compile("▶ checking alice/ui-source"), timeout=pace.milliseconds(60))
        page.screenshot(path=str(SCREENSHOTS / "2-running.png"), full_page=True)
        expect(page.locator("#status")).to_contain_text("✅ done", timeout=pace.milliseconds(180))
        link = page.locator("#results a", has_text="ui-browser")
        expect(link.first).to_have_attribute("href", f"{hub.endpoint}/{'alice/ui-browser'}")
        page.wait_for_timeout(3000)
        page.screenshot(path=str(SCREENSHOTS / "3-done.png"), full_page=True)
        assert ALICE not in page.content()
        page.get_by_role("tab", name="History").click()
        expect(page.locator("#history").get_by_role("link", name="alice/ui-browser").first).to_be_visible(
            timeout=15_000
        )
        page.screenshot(path=str(SCREENSHOTS / "5-history.png"), full_page=True)
        page.get_by_role("tab", name="Quantize").click()

        page.goto(app.url)
        page.locator("#source textarea, #source input").first.fill("alice/no-such-model")
        page.get_by_label("Hugging Face token").fill(ALICE)
        page.locator("#run").click()
        expect(page.locator("#status")).to_contain_text("alice/no-such-model was not found", timeout=60_000)
        page.screenshot(path=str(SCREENSHOTS / "4-bad-input.png"), full_page=True)
        assert "Traceback" not in page.content()
        browser.close()
    assert HfApi(token=ALICE).repo_exists("alice/ui-browser")


SIGN_IN_PROBE = textwrap.dedent("""
    import json, sys
    from ui.app import build_app
    app = build_app()
    config = app.get_config_file()
    props = [c.get("props", {}) for c in config["components"]]
    login = any(p.get("value") == "Sign in with Hugging Face" for p in props)
    token = next(p for p in props if p.get("label") == "Hugging Face token")
    print(json.dumps({"login": login, "token_visible": token.get("visible", True),
                      "oauth": app.expects_oauth}))
""")


@pytest.mark.parametrize("on_space", [True, False], ids=["on-a-space", "elsewhere"])
def test_sign_in_button_on_a_space_token_field_elsewhere(on_space, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SPACE_", "OAUTH_", "OPENID_", "SYSTEM"))}
    if on_space:
        env.update(
            SYSTEM="spaces",
            SPACE_ID="someone/torchao-quantizer",
            OAUTH_CLIENT_ID="test-client",
            OAUTH_CLIENT_SECRET="test-secret",
            OAUTH_SCOPES="openid profile read-repos write-repos",
            OPENID_PROVIDER_URL="http://127.0.0.1:9",
        )
    proc = subprocess.run(
        [sys.executable, "-c", SIGN_IN_PROBE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    probe = json.loads(proc.stdout.strip().splitlines()[-1])
    assert probe == {"login": on_space, "token_visible": not on_space, "oauth": on_space}


def test_the_form_is_defined_once_and_the_api_needs_only_the_source():
    """The page's components, the API's parameters and the JobSpec all follow FormValues."""
    import inspect

    from quantizer.hardware import Hardware
    from ui.form import NAMES, FormValues, api_handler, components

    assert set(components(Hardware("cpu"), show_token=True)) == set(NAMES)
    signature = inspect.signature(api_handler(lambda values, oauth, progress, request: iter(())))
    assert list(signature.parameters)[: len(NAMES)] == list(NAMES)
    required = [p.name for p in signature.parameters.values() if p.default is inspect.Parameter.empty]
    assert required == ["source"]
    spec = FormValues(source=" alice/m ", namespace="acme").to_spec("tok")
    assert (spec.source, spec.namespace, spec.target, spec.quant_types) == (
        "alice/m",
        "acme",
        None,
        ["int8_weight_only"],
    )
    with pytest.raises(InputError, match="group size 'big' is not a number"):
        FormValues(source="alice/m", group_size="big").to_spec(None)
    assert FormValues(source="alice/m", int4_mixed=0).to_spec(None).int4_mixed is None  # the form's "off"
    with pytest.raises(InputError, match="int4 mixed precision 'lots' is not a number"):
        FormValues(source="alice/m", int4_mixed="lots").to_spec(None)


def test_a_job_has_a_deadline_and_a_largest_source_on_a_shared_deployment_and_asks_a_slot_zerogpu_grants(
    monkeypatch,
):
    from quantizer import int4
    from ui import limits

    monkeypatch.delenv("QUANTIZER_JOB_TIMEOUT", raising=False)
    monkeypatch.delenv("QUANTIZER_MAX_SOURCE_BYTES", raising=False)
    assert limits.deadline_seconds(shared=False) is None and limits.max_source_bytes(shared=False) is None
    assert limits.deadline_seconds(shared=True) == int4.budget_seconds() + limits.VERIFY_AND_PUSH_SECONDS
    assert 0 < limits.max_source_bytes(shared=True) <= 4 * psutil.virtual_memory().total
    monkeypatch.setenv("QUANTIZER_JOB_TIMEOUT", "120")
    monkeypatch.setenv("QUANTIZER_MAX_SOURCE_BYTES", "5e9")
    assert limits.deadline_seconds(shared=True) == 120 and limits.max_source_bytes(shared=True) == 5_000_000_000
    # the slot: the deadline and a margin, never longer than ZeroGPU grants
    assert limits.slot_seconds(120) == 120 + limits.SLOT_MARGIN_SECONDS
    assert limits.slot_seconds(3600) == limits.slot_seconds(None) == settings.default("QUANTIZER_ZEROGPU_SECONDS")


def test_on_a_space_the_sign_in_token_is_used_and_the_spaces_own_never(ui_source, hub, monkeypatch):
    """The handler Gradio calls, given the OAuth token Gradio injects for a signed-in visitor."""
    import gradio as gr

    from ui import auth
    from ui.app import quantize
    from ui.form import FormValues

    monkeypatch.setenv("SPACE_ID", "someone/torchao-quantizer")
    monkeypatch.setenv("HF_TOKEN", ALICE)  # the Space's own secret
    assert auth.resolve_token(None, None) is None and auth.resolve_token("", "oauth-token") == "oauth-token"
    anonymous = list(quantize(FormValues(source=ui_source, target_name="by-nobody"), None, None, None))
    assert "sign in with Hugging Face first" in anonymous[-1][0]
    signed_in = list(
        quantize(
            FormValues(source=ui_source, target_name="by-oauth"),
            gr.OAuthToken(token=ALICE, scope="write-repos", expires_at=0),
            None,
            None,
        )
    )
    status = signed_in[-1][0]
    assert status.startswith("✅ done") and f"{hub.endpoint}/alice/by-oauth" in status
    assert not HfApi(token=ALICE).repo_exists("alice/by-nobody")
