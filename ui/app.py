"""The page: a form over the pipeline, a streaming log, results, and the `quantize` API endpoint."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import gradio as gr

from quantizer import recipes, settings, suggest
from quantizer.errors import QuantizerError
from quantizer.events import Event, format_line
from quantizer.hardware import detect
from quantizer.naming import suggested_target_name
from quantizer.report import Report, results_table
from quantizer.spec import JobSpec

from . import auth, downloads, remote
from .form import AUTO, NAMES, FormValues, api_handler, components, output_root, type_choices
from .history import HISTORY_COLUMNS, dashboard_help, history_frame
from .jobs import REGISTRY, JobProgress, Ticket, Waiting, stream_job
from .render import RESULT_COLUMNS, results_frame, samples_markdown, sizes_frame
from .worker import Finished

EXAMPLE_SOURCES = ["HuggingFaceTB/SmolLM3-3B", "HuggingFaceTB/SmolLM2-135M-Instruct"]
LOG_INTERVAL = 0.25  # seconds between page updates while events stream in


def suggested_name(source: str, types: list[str]) -> str:
    """The target name the form proposes, by the naming rule the pipeline applies."""
    known = [recipes.RECIPES[t] for t in types or [] if t in recipes.RECIPES]
    return suggested_target_name(source, known)


ANY_TARGET = "anywhere (choose yourself)"


def suggest_for(target: str):
    """Fill the form with the type (and int4 method) the committed measurements favour where the model will run,
    and show the table rows behind it (`quantizer.suggest`, the same as `--suggest-for`)."""
    if not target or target == ANY_TARGET:
        return gr.skip(), gr.skip(), ""
    try:
        advice = suggest.suggest(target)
    except QuantizerError as exc:
        return gr.skip(), gr.skip(), f"❌ {exc}"
    recipe = recipes.RECIPES.get(advice.quant_type)
    refused = recipe.unsupported_reason(detect("auto")) if recipe else "unknown type"
    text = advice.text() + (f"\n\nThis Space cannot make it: {refused}." if refused else "")
    if refused:
        return gr.skip(), gr.skip(), text
    return [advice.quant_type], advice.int4_method or AUTO, text


@dataclass
class JobView:
    """The handler's outputs while a job runs: its status, its time-stamped log and, once done, its report."""

    started: float = field(default_factory=time.time)
    log: list[str] = field(default_factory=list)

    def add(self, line: str) -> None:
        self.log.append(f"{time.time() - self.started:6.1f}s {line}")

    def __call__(self, status: str, report: Report | None = None, download: str | None = None) -> tuple:
        # the chart only changes once there is something to draw: an empty frame would fix its axes' types
        chart = sizes_frame(report) if report and report.results else gr.skip()
        return (
            status,
            "\n".join(self.log),
            results_frame(report),
            chart,
            samples_markdown(report),
            report.to_dict() if report else None,
            download,
        )


def admit(
    values: FormValues, oauth_token: gr.OAuthToken | None, request: gr.Request | None
) -> tuple[JobSpec, Ticket] | str:
    """The job's spec and its place in the queue, or why it is refused."""
    if not (values.source or "").strip():
        return "give a source: a Hub repo id (namespace/name) or a folder on this machine."
    if not values.quant_types:
        return "choose at least one quantization type."
    secret = auth.token_for(values.token, oauth_token)
    try:
        spec = values.to_spec(secret)
        visitor = auth.visitor(secret)
    except QuantizerError as exc:
        return str(exc)
    ticket = REGISTRY.admit(visitor, request.session_hash if request else None)
    if ticket is None:
        return "you already have a job running and one waiting: wait for them, or press Stop."
    return spec, ticket


def quantize(
    values: FormValues, oauth_token: gr.OAuthToken | None, progress: gr.Progress | None, request: gr.Request | None
) -> Iterator[tuple]:
    """Quantize SOURCE with each type, verify, and push (or save on the Space); streams the log as it goes.

    Only `source` is required: the types default to int8_weight_only, the target name to
    `{source name}-torchao-{suffix}`, the namespace to the token's owner. Returns (status, log, results
    table, sizes chart, samples, report as JSON, download), updated while the job runs; the download is
    the output of a save-only job on a shared Space, as one zip.
    """
    progress = progress or gr.Progress()
    view = JobView()
    if values.on_jobs:  # in the visitor's own account, elsewhere: no turn on this Space's job lock
        yield from remote.run_on_jobs(values, oauth_token, request, view)
        return
    admitted = admit(values, oauth_token, request)
    if isinstance(admitted, str):
        yield view(f"❌ {admitted}")
        return
    spec, ticket = admitted
    if spec.save_only and auth.public():
        downloads.sweep(output_root())
    saved = " (saved on the Space only)" if spec.save_only else ""
    view.add(f"job started: {spec.source} -> {', '.join(spec.quant_types)}{saved}")
    yield view("⏳ running…")
    tracker = JobProgress(len(spec.quant_types), push=spec.push)
    last_update = 0.0
    for item in stream_job(spec, ticket):
        if isinstance(item, Finished):
            yield finished_view(item, view, spec)
            return
        if isinstance(item, Waiting):
            view.add(f"… {item.message}")
            yield view("⏳ waiting for the job ahead…")
            continue
        event: Event = item
        fraction = tracker.update(event)
        line = format_line(event)
        if line:
            view.add(line)
        progress(fraction, desc=f"{event.stage or event.kind}")
        if line and (time.time() - last_update >= LOG_INTERVAL or event.kind in ("stage_start", "error")):
            last_update = time.time()
            yield view("⏳ running…")


def finished_view(item: Finished, view: JobView, spec: JobSpec) -> tuple:
    if item.report is None:
        view.add(f"✗ {item.error}")
        return view(f"❌ {item.error}")
    report = item.report
    view.log.extend(["", results_table(report)])
    failed = [r for r in report.results if not r.ok]
    if failed:
        return view("❌ " + " ".join(f"{r.quant_type}: {r.error}" for r in failed), report)
    if spec.save_only and auth.public():  # the visitor's copy is a download; nothing stays in a folder
        folders = [Path(r.output_dir) for r in report.results if r.output_dir]
        try:
            zipped = downloads.archive(folders, output_root())
        except QuantizerError as exc:
            return view(f"❌ {exc}", report)
        report.results = [replace(r, output_dir=None) for r in report.results]
        hours = downloads.ttl_seconds() / 3600
        return view(f"✅ done: download the output below (kept for {hours:g} h)", report, str(zipped))
    where = ", ".join(r.url or r.output_dir or "" for r in report.results)
    return view(f"✅ done: {where}", report)


def estimate_jobs(
    source: str,
    more_sources: str = "",
    on_jobs: str = "",
    quant_types: list[str] | None = None,
    token: str | None = None,
    oauth_token: gr.OAuthToken | None = None,
) -> str:
    """What running on Hugging Face Jobs would cost, before anything starts: the flavor, its price per hour and
    each source's estimate (`quantizer.hf_jobs.estimate`)."""
    values = FormValues(
        source=source or "",
        more_sources=more_sources or "",
        on_jobs=on_jobs or "",
        quant_types=quant_types or [recipes.DEFAULT_TYPE],
        token=token,
    )
    return remote.estimate(values, oauth_token)


def stop(token: str | None, oauth_token: gr.OAuthToken | None = None, request: gr.Request | None = None) -> str:
    """Stop the caller's jobs: the signed-in visitor's, and this page's."""
    secret = auth.token_for(token, oauth_token)
    try:
        visitor = auth.visitor(secret) if secret or not auth.public() else None
    except QuantizerError:
        visitor = None
    session = request.session_hash if request else None
    stopped = REGISTRY.stop(visitor=visitor, session=session, reason="stopped by its visitor")
    return f"⏹ stopping {stopped} job(s)…" if stopped else "nothing of yours is running."


def page_closed(request: gr.Request) -> None:
    """A closed tab stops the jobs it started (Gradio calls this once the page's heartbeat stops)."""
    REGISTRY.stop(session=request.session_hash, reason="the page was closed")


def refresh_namespaces(token: str, oauth_token: gr.OAuthToken | None = None):
    choices, note = auth.namespaces(auth.token_for(token, oauth_token))
    return gr.update(choices=choices, value=choices[0] if choices else None, info=note)


def show_history(token: str | None = None, oauth_token: gr.OAuthToken | None = None):
    """Past jobs from Trackio's store, newest first: on a shared Space only the signed-in visitor's own."""
    if not auth.public():
        return history_frame()
    secret = auth.token_for(token, oauth_token)
    try:
        visitor = auth.visitor(secret)
    except QuantizerError:
        return history_frame(user=None, nobody=True)
    return history_frame(user=visitor)


def build_app() -> gr.Blocks:
    hardware = detect("auto")
    build = components(hardware, show_token=not auth.oauth_configured())
    form: dict[str, gr.components.Component] = {}
    # gradio's own copies of downloads go with the archives (checked every 10 minutes)
    with gr.Blocks(title="torchao quantizer", delete_cache=(600, int(downloads.ttl_seconds()))) as app:
        gr.Markdown(
            "# 🗜️ torchao quantizer\n"
            "Quantize a causal LM from the Hub with [torchao](https://github.com/pytorch/ao), verify it against the "
            "source (stock transformers reload, perplexity, top-1 agreement), and push it with a model card. "
            f"Running on **{hardware.name}**."
        )
        with gr.Row():
            if auth.oauth_configured():
                gr.LoginButton()
            form["token"] = build["token"]()
        with gr.Tab("Quantize"):
            page = quantize_tab(hardware, build, form)
        with gr.Tab("History", elem_id="history-tab") as history_tab:
            gr.Markdown(dashboard_help())
            history = gr.Dataframe(
                headers=HISTORY_COLUMNS,
                label="Past jobs, newest first",
                elem_id="history",
                datatype=["str", "str", "str", "markdown", "str", "str", "str"],
                wrap=True,
            )
            refresh = gr.Button("Refresh", elem_id="history-refresh")
        wire(app, form, page)
        token = form["token"]
        for trigger in (history_tab.select, refresh.click):
            trigger(show_history, token, history, api_name=False)
        app.load(show_history, token, history, api_name="history")
    return app


def quantize_tab(hardware, build: dict, form: dict[str, gr.components.Component]) -> dict[str, gr.components.Component]:
    """The form (its fields into `form`), the buttons and the job's outputs; returns the components by name."""
    _, refused = type_choices(hardware)
    page: dict[str, gr.components.Component] = {}
    with gr.Row():
        with gr.Column(scale=3):
            form["source"] = build["source"]()
            gr.Examples(EXAMPLE_SOURCES, inputs=form["source"], label="Examples")
            page["target"] = gr.Dropdown(
                [(ANY_TARGET, ANY_TARGET), *((name, key) for key, name in suggest.TARGET_NAMES.items())],
                value=ANY_TARGET,
                label="Where will it run?",
                info="picks the type the measured tables favour there, and shows the rows behind it",
                elem_id="run-target",
            )
            page["advice"] = gr.Markdown(elem_id="advice")
            form["quant_types"] = build["quant_types"]()
            if refused:
                gr.Markdown("Not available on this hardware:\n" + "\n".join(refused))
            form["group_size"] = build["group_size"]()
            form["int4_method"] = build["int4_method"]()
            form["int4_mixed"] = build["int4_mixed"]()
        with gr.Column(scale=2):
            for name in ("namespace", "target_name", "private", "overwrite", "save_only", "on_jobs"):
                form[name] = build[name]()
            page["jobs_estimate"] = gr.Markdown(elem_id="jobs-estimate")
            form["more_sources"] = build["more_sources"]()
            with gr.Row():
                page["run"] = gr.Button("Quantize", variant="primary", elem_id="run")
                page["stop"] = gr.Button("Stop", variant="stop", elem_id="stop")
    page["status"] = gr.Markdown(elem_id="status")
    page["log"] = gr.Textbox(label="Log", lines=14, max_lines=30, autoscroll=True, elem_id="log")
    with gr.Row():
        page["results"] = gr.Dataframe(
            headers=RESULT_COLUMNS,
            label="Results",
            elem_id="results",
            datatype=["str", "str", "markdown", *["str"] * 7],
            wrap=True,
        )
    with gr.Row():
        page["chart"] = gr.BarPlot(x="model", y="MB", title="Weights on disk (MB)", y_lim=[0, None], elem_id="sizes")
        page["samples"] = gr.Markdown(elem_id="samples")
    page["download"] = gr.File(label="Download (save-only output)", elem_id="download", visible=auth.public())
    with gr.Accordion("Report (JSON)", open=False):
        page["report"] = gr.JSON()
    return page


def wire(app: gr.Blocks, form: dict[str, gr.components.Component], page: dict[str, gr.components.Component]) -> None:
    """The quantize tab's events and API endpoints."""
    source, quant_types, token, namespace = form["source"], form["quant_types"], form["token"], form["namespace"]
    for trigger in (source.change, quant_types.change):
        trigger(suggested_name, [source, quant_types], form["target_name"], api_name=False, show_progress="hidden")
    page["target"].change(
        suggest_for, page["target"], [quant_types, form["int4_method"], page["advice"]], api_name="suggest"
    )
    token.blur(refresh_namespaces, token, namespace, api_name=False)
    app.load(refresh_namespaces, token, namespace, api_name=False)
    app.load(remote.flavor_choices, token, form["on_jobs"], api_name=False)
    priced = [form[name] for name in ("source", "more_sources", "on_jobs", "quant_types", "token")]
    for trigger in (form["on_jobs"].change, form["more_sources"].blur):
        trigger(estimate_jobs, priced, page["jobs_estimate"], api_name=False, show_progress="hidden")
    gr.api(estimate_jobs, api_name="estimate_jobs")
    outputs = [page[name] for name in ("status", "log", "results", "chart", "samples", "report", "download")]
    run = page["run"].click(
        api_handler(quantize),
        [form[name] for name in NAMES],
        outputs,
        api_name="quantize",
        # handlers never wait in the queue behind a running job: jobs wait for the job lock inside their handler,
        # so a stranger's call is refused (sign in, the per-visitor limit) at once instead of holding a slot
        concurrency_limit=settings.get("QUANTIZER_CONCURRENCY"),
    )
    page["stop"].click(stop, token, page["status"], api_name="stop", cancels=[run], queue=False)
    app.unload(page_closed)


def launch(app: gr.Blocks) -> None:
    app.queue(max_size=settings.get("QUANTIZER_MAX_QUEUE"))
    # archives are served from where they are, never copied into Gradio's cache outside the download quota
    gr.set_static_paths([str(output_root())])
    app.launch(
        server_name=settings.get("GRADIO_SERVER_NAME"),
        server_port=settings.get("GRADIO_SERVER_PORT"),
        # save-only archives are served from here; their names are random (uuid4), so nobody can guess another's
        allowed_paths=[str(output_root())],
    )
