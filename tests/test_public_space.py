"""A public Space is shared by strangers: what a visitor who is not the owner can do, driven as they would.

The app runs as a shared deployment (QUANTIZER_PUBLIC=1, as with SPACE_ID on a Space) on a free port,
against the loopback Hub, with two visitors holding different tokens (alice and carol), called through
the real gradio_client and, for a closed tab, the real page in headless Chromium.
"""

from __future__ import annotations

import json
import re
import time
import zipfile
from pathlib import Path

import psutil
import pytest
from gradio_client import Client
from huggingface_hub import HfApi

from tests.conftest import ALICE, CAROL
from tests.support import pace
from tests.support.app_server import shared_space
from tests.support.hub_repos import upload_model, variant
from tests.support.models import SLOW_SHAPE


@pytest.fixture(scope="module")
def space(hub, tmp_path_factory):
    jobs_image = {"QUANTIZER_JOBS_IMAGE": "hf.co/spaces/alice/quantizer"}  # SPACE_ID gives it on a real Space
    yield from shared_space(tmp_path_factory.mktemp("public-space"), ALICE, (ALICE, CAROL), env=jobs_image)


def alices_sources(tiny_model, base: Path, prefix: str = "", secret: bool = True) -> dict[str, str]:
    """alice's repos the tests quantize: a tiny model, one GPTQ takes tens of seconds on, and a private one."""
    shapes = {"small": None, "slow": SLOW_SHAPE, **({"secret": None} if secret else {})}
    repos = {}
    for name, shape in shapes.items():
        repos[name] = f"alice/{prefix}{name}"
        folder = variant(tiny_model(shape) if shape else tiny_model(), base / name)
        upload_model(HfApi(token=ALICE), repos[name], folder, private=name == "secret")
    return repos


@pytest.fixture(scope="module")
def sources(hub, tiny_model, tmp_path_factory) -> dict[str, str]:
    return alices_sources(tiny_model, tmp_path_factory.mktemp("public-sources"))


def job_folders(space) -> list[Path]:
    return [p for p in (space.base / "tmp").iterdir() if p.name.startswith("quantizer-job-")]


def quantize(client: Client, **kwargs):
    return client.submit(**kwargs, api_name="/quantize")


def test_a_visitor_must_sign_in_and_never_gets_the_hosts_token(space, sources, hub):
    status, *_ = Client(space.url, verbose=False).predict(source=sources["small"], save_only=True, api_name="/quantize")
    assert "sign in with Hugging Face first" in status
    assert not HfApi(token=ALICE).repo_exists("alice/small-torchao-int8wo")


@pytest.mark.parametrize(
    "source", ["/etc", "/etc/passwd", "../../etc/passwd", "./out", "~", "/no/such/folder", "C:\\models"]
)
def test_local_paths_are_refused_before_the_disk_is_looked_at(space, source, hub):
    repos = set(hub.state.repos)
    status, *_ = Client(space.url, verbose=False).predict(source=source, token=CAROL, api_name="/quantize")
    # the same sentence whether the path exists or not: nothing about the Space's disk is revealed
    assert status == (
        "❌ on this shared Space a source is a Hub repo id (namespace/name or namespace/name@revision); folders on "
        "the Space's disk cannot be used: upload your model to the Hub first."
    )
    assert set(hub.state.repos) == repos and job_folders(space) == []


@pytest.mark.parametrize(
    ("name", "shard"), [("abs", "/etc/passwd"), ("up", "../../../etc/passwd"), ("inside", "model.safetensors/../../x")]
)
def test_a_crafted_shard_index_is_refused(space, tiny_model, tmp_path, name, shard, hub):
    folder = variant(tiny_model(), tmp_path / "crafted")
    index = {"metadata": {}, "weight_map": {"model.embed_tokens.weight": shard, "lm_head.weight": "model.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    upload_model(HfApi(token=CAROL), f"carol/crafted-{name}", folder)
    status, *_ = Client(space.url, verbose=False).predict(
        source=f"carol/crafted-{name}", token=CAROL, api_name="/quantize"
    )
    assert "names weight files that are not files of this model" in status and repr(shard) in status
    assert not HfApi(token=CAROL).repo_exists(f"carol/crafted-{name}-torchao-int8wo") and job_folders(space) == []


def test_visitors_see_only_their_own_history(space, sources):
    client = Client(space.url, verbose=False)
    status, *_ = client.predict(source=sources["small"], token=ALICE, target_name="mine", api_name="/quantize")
    assert status.startswith("✅ done")
    alices = client.predict(token=ALICE, api_name="/history")["data"]
    assert any("alice/mine" in row[3] for row in alices)
    for stranger in (CAROL, None):  # another visitor, and an anonymous caller
        rows = client.predict(token=stranger, api_name="/history")["data"]
        assert not any("alice" in json.dumps(row) for row in rows)


def test_a_private_source_gives_a_private_target(space, sources):
    status, log, *_ = Client(space.url, verbose=False).predict(
        source=sources["secret"], token=ALICE, api_name="/quantize"
    )
    assert status.startswith("✅ done") and "the target repo is private because the source is private" in log
    assert HfApi(token=ALICE).model_info("alice/secret-torchao-int8wo").private


def wait_for(job, pattern: str, timeout: float = 120) -> str:
    """Read a running job's updates until its log matches; returns that log. `timeout`: seconds on the reference
    machine (`pace`)."""
    timeout = pace.seconds(timeout)
    deadline = time.time() + timeout
    while time.time() < deadline:
        for update in job.outputs()[::-1]:
            if re.search(pattern, update[1] or ""):
                return update[1]
        assert not job.done(), job.outputs()[-1][0] if job.outputs() else "the job ended"
        time.sleep(0.2)
    raise AssertionError(f"no {pattern!r} in the log after {timeout}s")


def stop_in_the_middle_of_gptq(space, source: str) -> Client:
    """Start GPTQ on `source` as alice, press Stop once it runs: the job ends within seconds, leaving nothing."""
    client = Client(space.url, verbose=False)
    job = quantize(client, source=source, quant_types=["int4_weight_only"], int4_method="gptq", token=ALICE)
    wait_for(job, r"quantizing with gptq int4")
    stopped_at = time.time()
    assert client.predict(token=ALICE, api_name="/stop").startswith("⏹ stopping 1 job")
    status = job.result()[0]
    assert "stopped: stopped by its visitor; nothing was kept" in status
    assert time.time() - stopped_at < pace.seconds(10)
    assert not HfApi(token=ALICE).repo_exists(f"{source}-torchao-int4wo") and job_folders(space) == []
    return client


def test_stop_in_the_middle_of_quantization_leaves_nothing(space, sources):
    client = stop_in_the_middle_of_gptq(space, sources["slow"])
    run = next(r for r in client.predict(token=ALICE, api_name="/history")["data"] if "slow-torchao-int4wo" in r[3])
    assert run[6].startswith("cancelled")


def test_stop_in_the_middle_of_an_upload_leaves_no_repo(space, sources, hub):
    hub.state.slow("POST", r"/preupload/", 8)
    client = Client(space.url, verbose=False)
    job = quantize(client, source=sources["small"], token=ALICE, target_name="upload-stopped")
    wait_for(job, r"▶ pushing to alice/upload-stopped")
    time.sleep(1)  # inside the upload
    client.predict(token=ALICE, api_name="/stop")
    assert "nothing was kept" in job.result()[0]
    time.sleep(8)  # the slow request finishes on the Hub's side: still nothing may land
    assert not HfApi(token=ALICE).repo_exists("alice/upload-stopped") and job_folders(space) == []


def test_a_second_job_waits_and_a_third_is_refused(space, sources):
    alice, carol = Client(space.url, verbose=False), Client(space.url, verbose=False)
    first = quantize(alice, source=sources["slow"], token=ALICE, target_name="first")
    wait_for(first, r"▶ checking alice/slow")
    second = quantize(carol, source=sources["small"], token=CAROL, target_name="second")
    wait_for(second, "waiting for the job ahead")
    third_a = quantize(alice, source=sources["small"], token=ALICE, target_name="third-a")
    wait_for(third_a, "waiting for the job ahead")
    fourth_a = alice.predict(source=sources["small"], token=ALICE, target_name="fourth-a", api_name="/quantize")
    assert "you already have a job running and one waiting" in fourth_a[0]
    for job in (first, second, third_a):
        assert job.result()[0].startswith("✅ done"), job.result()[0]
    # carol's job started its work only after alice's first had ended
    assert "waiting for the job ahead" in second.result()[1]


def test_save_only_gives_a_download_and_the_space_keeps_nothing_for_long(space, sources, tmp_path):
    client = Client(space.url, verbose=False, download_files=str(tmp_path))
    status, *_, download = client.predict(source=sources["small"], save_only=True, token=CAROL, api_name="/quantize")
    assert status.startswith("✅ done: download")
    with zipfile.ZipFile(download) as archive:
        names = archive.namelist()
    assert "small-torchao-int8wo/model.safetensors" in names and "small-torchao-int8wo/README.md" in names
    saved = space.base / "saved"
    assert [p.suffix for p in saved.iterdir()] == [".zip"]  # no folder left behind
    assert not list((space.base / "gradio").rglob("*.zip"))  # and no copy outside the quota
    first = next(saved.iterdir())
    time.sleep(5)  # past QUANTIZER_OUTPUT_TTL: the next job sweeps it
    client.predict(source=sources["small"], save_only=True, token=CAROL, api_name="/quantize")
    assert not first.exists() and len(list(saved.iterdir())) == 1


@pytest.mark.parametrize(
    ("values", "sentence"),
    [
        ({"group_size": "13"}, "group size 13 is not supported"),
        ({"group_size": "many"}, "group size 'many' is not a number"),
        ({"int4_method": "magic"}, "unknown int4 method 'magic'"),
        ({"target_name": "../escape"}, "is not a valid target name"),
        ({"namespace": "carol"}, "cannot write to 'carol'"),
    ],
)
def test_values_the_form_would_never_send_get_a_sentence(space, sources, values, sentence):
    status, *_ = Client(space.url, verbose=False).predict(
        source=sources["small"], token=ALICE, api_name="/quantize", **values
    )
    assert sentence in status and "unexpected" not in status


def test_a_type_the_form_does_not_offer_is_refused_by_name(space, sources):
    """Gradio checks a checkbox group's values itself, before the job: its error names the value and the choices."""
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match=r"'int3'.*not in the list of choices.*int8_weight_only"):
        Client(space.url, verbose=False).predict(
            source=sources["small"], quant_types=["int3"], token=ALICE, api_name="/quantize"
        )


def test_closing_the_page_stops_its_job(space, sources):
    from playwright.sync_api import expect, sync_playwright

    from tests.test_app import CHROMIUM

    log_file = space.base / "app.log"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"],
        )
        page = browser.new_page()
        page.goto(space.url)
        page.locator("#source textarea, #source input").first.fill(sources["slow"])
        page.get_by_label("Hugging Face token").fill(ALICE)
        page.locator("#target-name textarea, #target-name input").first.fill("tab-closed")
        page.locator("#run").click()
        expect(page.locator("#log textarea")).to_have_value(
            re.compile("▶ measuring the source model"), timeout=pace.milliseconds(60)
        )
        page.close()
        browser.close()
    deadline = time.time() + pace.seconds(15)
    while "stopped: the page was closed" not in log_file.read_text() and time.time() < deadline:
        time.sleep(0.25)
    assert "a job of alice stopped: the page was closed" in log_file.read_text()
    assert not HfApi(token=ALICE).repo_exists("alice/tab-closed") and job_folders(space) == []


# a pre-tokenizer whose regex backtracks catastrophically on any ordinary sentence: Oniguruma gives up and the Rust
# tokenizers library panics, raising pyo3's PanicException (a BaseException) in whatever thread encodes text
PANICKING_PRE_TOKENIZER = {
    "type": "Split",
    "pattern": {"Regex": r"(\D|\D?)+\d"},
    "behavior": "Isolated",
    "invert": False,
}


def test_a_tokenizer_that_panics_ends_only_its_own_job(space, sources, tiny_model, tmp_path):
    tokenizer = json.loads((tiny_model() / "tokenizer.json").read_text())
    tokenizer["pre_tokenizer"] = PANICKING_PRE_TOKENIZER
    hostile = variant(tiny_model(), tmp_path / "panics", extra={"tokenizer.json": json.dumps(tokenizer)})
    upload_model(HfApi(token=CAROL), "carol/panics", hostile)
    job = quantize(Client(space.url, verbose=False), source="carol/panics", token=CAROL, save_only=True)
    status, *_ = job.result(timeout=pace.seconds(120))  # a job that dies silently would leave the page waiting
    assert "the job failed inside a library it called" in status and "PanicException" in status, status
    assert job_folders(space) == []
    status, *_ = Client(space.url, verbose=False).predict(
        source=sources["small"], token=ALICE, save_only=True, api_name="/quantize"
    )
    assert status.startswith("✅ done"), status  # the next visitor is served


def test_a_repo_someone_else_creates_after_preflight_stops_the_job_and_is_never_touched(space, sources, hub):
    def someone_else_creates_it() -> None:
        hub.state.create_repo("alice/taken-meanwhile", author="someone-else")

    hub.state.before("POST", r"^/api/repos/create$", someone_else_creates_it)
    status, *_ = Client(space.url, verbose=False).predict(
        source=sources["small"], token=ALICE, target_name="taken-meanwhile", api_name="/quantize"
    )
    assert "was created by someone else after this job checked it" in status, status
    repo = hub.state.repo("model", "alice/taken-meanwhile")
    assert repo is not None and [c.author for c in repo.commits] == ["someone-else"]  # theirs, as they made it
    assert job_folders(space) == []


@pytest.mark.parametrize(
    ("name", "config", "said"),
    [
        # layers the files lack would be allocated (and randomly initialised) while loading
        ("missing-layers", {"num_hidden_layers": 400}, "config.json describes at least"),
        # a model this deep costs memory even on the meta device, before any weight is read
        ("deep", {"num_hidden_layers": 10**9}, "config.json's num_hidden_layers is 1,000,000,000"),
    ],
)
def test_a_config_that_claims_weights_the_files_lack_is_refused_before_loading(
    space, tiny_model, tmp_path, name, config, said
):
    upload_model(HfApi(token=CAROL), f"carol/{name}", variant(tiny_model(), tmp_path / name, config=config))
    app = psutil.Process(space.proc.pid)
    before = sum(p.memory_info().rss for p in (app, *app.children(recursive=True)))
    status, *_ = Client(space.url, verbose=False).predict(source=f"carol/{name}", token=CAROL, api_name="/quantize")
    assert said in status, status
    after = sum(p.memory_info().rss for p in (app, *app.children(recursive=True)))
    assert after - before < 500 * 1024**2  # refused before anything large was allocated
    assert not HfApi(token=CAROL).repo_exists(f"carol/{name}-torchao-int8wo") and job_folders(space) == []


def test_an_oversized_side_file_is_refused_before_it_is_downloaded(space, tiny_model, tmp_path, hub):
    huge = json.dumps({"padding": "x" * (17 * 1024**2)})  # 17 MB of tokenizer_config.json
    upload_model(
        HfApi(token=CAROL),
        "carol/huge-side",
        variant(tiny_model(), tmp_path / "huge", extra={"tokenizer_config.json": huge}),
    )
    before = len(hub.state.requests)
    status, *_ = Client(space.url, verbose=False).predict(source="carol/huge-side", token=CAROL, api_name="/quantize")
    assert "tokenizer_config.json is 17.0 MB, more than the 16 MB such a file may be" in status, status
    downloads = [path for method, path in hub.state.requests[before:] if method == "GET" and "/resolve/" in path]
    assert not any("tokenizer_config.json" in path for path in downloads)


def test_a_card_carries_only_checked_values_from_the_source(space, tiny_model, tmp_path):
    injected = "bfloat16\n\n# Hacked\n<script>alert(1)</script> [click](https://evil.example)"
    card = "---\nlicense: 'mit\n\n# Owned'\nlanguage: [en, '<b>x</b>']\nlicense_link: 'javascript:alert(1)'\n---\n# x\n"
    source = variant(
        tiny_model(),
        tmp_path / "inject",
        config={"torch_dtype": injected, "dtype": "bfloat16"},
        extra={"README.md": card},
    )
    upload_model(HfApi(token=CAROL), "carol/inject", source)
    status, *_ = Client(space.url, verbose=False).predict(source="carol/inject", token=CAROL, api_name="/quantize")
    assert status.startswith("✅ done"), status
    pushed = Path(HfApi(token=CAROL).hf_hub_download("carol/inject-torchao-int8wo", "README.md")).read_text()
    assert "Hacked" not in pushed and "<script>" not in pushed and "evil.example" not in pushed
    assert "Owned" not in pushed and "<b>" not in pushed and "javascript:" not in pushed
    assert "left in bfloat16" in pushed and "- en" in pushed


def test_anonymous_calls_are_refused_at_once_and_never_fill_the_queue(space, sources):
    """Ten anonymous calls while a job runs: each is refused at once, and a signed-in visitor's job still gets in
    (with the default concurrency the handlers do not wait in the queue behind the running job)."""
    alice, carol = Client(space.url, verbose=False), Client(space.url, verbose=False)
    running = quantize(alice, source=sources["slow"], quant_types=["int4_weight_only"], int4_method="gptq", token=ALICE)
    wait_for(running, r"▶ checking alice/slow")
    strangers = [quantize(Client(space.url, verbose=False), source=sources["small"]) for _ in range(10)]
    for stranger in strangers:
        assert "sign in with Hugging Face first" in stranger.result(timeout=pace.seconds(60))[0]
    waiting = quantize(carol, source=sources["small"], token=CAROL, save_only=True)
    wait_for(waiting, "waiting for the job ahead")  # in, behind the running job: not "the queue is full"
    alice.predict(token=ALICE, api_name="/stop")
    assert waiting.result(timeout=pace.seconds(120))[0].startswith("✅ done")


@pytest.mark.parametrize(
    ("name", "template", "said"),
    [
        (
            "endless-template",
            "{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}x",
            "the source's chat template did not finish within 10 s",
        ),
        ("huge-template", "{{ 'x' * 50000000 }}", "turns a one-line question into 50,000,000 characters"),
    ],
)
def test_a_chat_template_that_never_ends_or_explodes_is_refused(space, tiny_model, tmp_path, name, template, said):
    source = variant(
        tiny_model(), tmp_path / name, drop=("chat_template.jinja",), extra={"chat_template.jinja": template}
    )
    upload_model(HfApi(token=CAROL), f"carol/{name}", source)
    job = quantize(Client(space.url, verbose=False), source=f"carol/{name}", token=CAROL, save_only=True)
    status = job.result(timeout=pace.seconds(120))[0]
    assert said in status, status
    assert job_folders(space) == []


def test_stop_during_a_save_only_job_leaves_no_folder(space, sources):
    saved = space.base / "saved"
    before = set(saved.iterdir()) if saved.exists() else set()
    client = Client(space.url, verbose=False)
    job = quantize(
        client,
        source=sources["slow"],
        quant_types=["int4_weight_only"],
        int4_method="gptq",
        token=CAROL,
        save_only=True,
    )
    wait_for(job, r"quantizing with gptq int4")
    client.predict(token=CAROL, api_name="/stop")
    assert "stopped: stopped by its visitor; nothing was kept" in job.result(timeout=pace.seconds(60))[0]
    after = set(saved.iterdir()) if saved.exists() else set()
    assert after == before and job_folders(space) == []  # neither the job's output folder nor its staging


def test_a_visitors_job_on_hugging_face_jobs_runs_with_their_token_in_their_account(space, sources, hub):
    client = Client(space.url, verbose=False)
    priced = client.predict(source=sources["small"], on_jobs="cpu-basic", token=CAROL, api_name="/estimate_jobs")
    assert "cpu-basic (2 vCPU, 16 GB RAM): $0.01/hour; about 1 min" in priced and "billed to you" in priced
    started_before = set(hub.jobs.jobs)
    status, log, *_ = client.predict(
        source=sources["small"], on_jobs="cpu-basic", token=CAROL, target_name="via-jobs", api_name="/quantize"
    )
    assert status == f"✅ done on Hugging Face Jobs: {hub.endpoint}/carol/via-jobs", status
    (job,) = [job for key, job in hub.jobs.jobs.items() if key not in started_before]
    # the visitor's token (not the host's), their namespace, their bill
    assert job.spec["secrets"] == {"HF_TOKEN": CAROL} and job.namespace == "carol" and job.owner == "carol"
    assert job.stage == "COMPLETED" and "▶ pushing to carol/via-jobs" in log
    assert HfApi(token=CAROL).repo_exists("carol/via-jobs")
    history = client.predict(token=CAROL, api_name="/history")["data"]
    assert any("carol/via-jobs" in row[3] for row in history)  # recorded as a local job is


def test_an_anonymous_caller_cannot_start_a_job_and_a_batch_is_capped(space, sources, hub):
    client = Client(space.url, verbose=False)
    started_before = len(hub.jobs.jobs)
    status, *_ = client.predict(source=sources["small"], on_jobs="cpu-basic", api_name="/quantize")
    assert status == "❌ sign in with Hugging Face first: a Job runs in your own account and is billed to it."
    many = "\n".join(f"alice/m{i}" for i in range(10))
    status, *_ = client.predict(
        source=sources["small"], more_sources=many, on_jobs="cpu-basic", token=CAROL, api_name="/quantize"
    )
    assert status == "❌ a batch here takes at most 10 sources, got 11: split it."
    assert len(hub.jobs.jobs) == started_before


def test_stop_cancels_a_visitors_job_on_hugging_face_jobs_and_leaves_no_repo(space, sources, hub):
    hub.state.slow("POST", r"^/api/models/carol/jobs-stopped/preupload/", 4)
    client = Client(space.url, verbose=False)
    job = quantize(client, source=sources["small"], on_jobs="cpu-basic", token=CAROL, target_name="jobs-stopped")
    wait_for(job, r"▶ pushing to carol/jobs-stopped")
    time.sleep(1)  # inside the upload, with the repo created
    client.predict(token=CAROL, api_name="/stop")
    assert job.result()[0].startswith("⏹ stopped (stopped by its visitor): the Jobs were cancelled")
    (remote,) = [j for j in hub.jobs.jobs.values() if "jobs-stopped" in j.spec["command"]]
    assert remote.stage == "CANCELED"
    time.sleep(5)  # the slow request finishes on the Hub's side: still nothing may land
    assert not HfApi(token=CAROL).repo_exists("carol/jobs-stopped")
