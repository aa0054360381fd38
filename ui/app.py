"""The page: a form over the pipeline, a streaming log, results, and the `quantize` API endpoint."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import gradio as gr

from quantizer import int4, recipes
from quantizer.events import Event, format_line
from quantizer.hardware import detect
from quantizer.pipeline import JobSpec
from quantizer.recipes import DEFAULT_GROUP_SIZE, GROUP_SIZES
from quantizer.report import Report, results_table
from quantizer.source import parse_repo_ref

from . import auth
from .history import HISTORY_COLUMNS, dashboard_help, history_frame
from .jobs import Finished, JobProgress, stream_job
from .render import RESULT_COLUMNS, results_frame, samples_markdown, sizes_frame

EXAMPLE_SOURCES = ["HuggingFaceTB/SmolLM3-3B", "HuggingFaceTB/SmolLM2-135M-Instruct"]
AUTO_GROUP = f"auto ({DEFAULT_GROUP_SIZE}, lowered to fit the model)"
AUTO_METHOD = "auto (gptq when it fits in about 15 minutes here, else asym)"
METHOD_CHOICES = [(AUTO_METHOD, "auto")] + [(f"{name}: {text}", name) for name, text in int4.METHODS.items()]
OUTPUT_ROOT = Path(os.environ.get("QUANTIZER_OUTPUT_ROOT", "out/space"))
LOG_INTERVAL = 0.25  # seconds between page updates while events stream in


def type_choices() -> tuple[list[tuple[str, str]], list[str]]:
    """Checkbox choices for the types this hardware runs, and a line for each it cannot (shown disabled)."""
    hardware = detect("auto")
    runnable, refused = [], []
    for r in recipes.RECIPES.values():
        reason = r.unsupported_reason(hardware)
        if reason:
            refused.append(f"- ~~{r.name}~~: {reason}")
        else:
            runnable.append((f"{r.name}: {r.description} ({r.hardware_text})", r.name))
    return runnable, refused


def suggested_name(source: str, types: list[str]) -> str:
    """`{source name}-torchao-{suffix}` for one type; several types each add their suffix to `{name}-torchao`."""
    parsed = parse_repo_ref(source or "")
    name = parsed[0].split("/")[1] if parsed else Path(source or "model").name or "model"
    if len(types or []) == 1 and types[0] in recipes.RECIPES:
        return f"{name}-torchao-{recipes.RECIPES[types[0]].suffix}"
    return f"{name}-torchao"


def build_spec(
    source: str,
    types: list[str],
    group_size: str,
    int4_method: str,
    target_name: str,
    namespace: str,
    private: bool,
    overwrite: bool,
    save_only: bool,
    token: str | None,
) -> JobSpec:
    name = (target_name or "").strip() or None
    target = f"{namespace}/{name}" if name and namespace else name
    return JobSpec(
        source=(source or "").strip(),
        target=target,
        quant_types=list(types or []),
        group_size=None if group_size in (None, "", AUTO_GROUP) else int(group_size),
        int4_method=None if int4_method in (None, "", "auto") else int4_method,
        save_only=save_only,
        output_dir=OUTPUT_ROOT / uuid.uuid4().hex[:12] if save_only else None,
        overwrite=overwrite,
        token=token,
        private=private,
    )


def quantize(
    source: str,
    quant_types: list[str],
    group_size: str,
    int4_method: str,
    target_name: str,
    namespace: str,
    private: bool,
    overwrite: bool,
    save_only: bool,
    token: str,
    oauth_token: gr.OAuthToken | None = None,
    progress: gr.Progress = gr.Progress(),  # noqa: B008 - gradio's way of asking for a progress bar
) -> Iterator[tuple]:
    """Quantize SOURCE with each type, verify, and push (or save on the Space); streams the log as it goes.

    Returns (status, log, results table, sizes chart, samples, report as JSON).
    """
    started = time.time()
    log: list[str] = []

    def stamp(line: str) -> str:
        return f"{time.time() - started:6.1f}s {line}"

    def view(status: str, report: Report | None = None) -> tuple:
        # the chart only changes once there is something to draw: an empty frame would fix its axes' types
        chart = sizes_frame(report) if report and report.results else gr.skip()
        return (
            status,
            "\n".join(log),
            results_frame(report),
            chart,
            samples_markdown(report),
            report.to_dict() if report else None,
        )

    if not (source or "").strip():
        yield view("❌ give a source: a Hub repo id (namespace/name) or a folder on this machine.")
        return
    if not quant_types:
        yield view("❌ choose at least one quantization type.")
        return
    secret = auth.resolve_token(token, oauth_token.token if oauth_token else None)
    spec = build_spec(
        source, quant_types, group_size, int4_method, target_name, namespace, private, overwrite, save_only, secret
    )
    log.append(
        stamp(
            f"job started: {spec.source} -> {', '.join(spec.quant_types)}"
            f"{' (saved on the Space only)' if save_only else ''}"
        )
    )
    yield view("⏳ running…")
    tracker = JobProgress(len(spec.quant_types), push=not save_only)
    last_update = 0.0
    for item in stream_job(spec):
        if isinstance(item, Finished):
            yield finished_view(item, log, view, stamp)
            return
        event: Event = item
        fraction = tracker.update(event)
        line = format_line(event)
        if line:
            log.append(stamp(line))
        progress(fraction, desc=f"{event.stage or event.kind}")
        if line and (time.time() - last_update >= LOG_INTERVAL or event.kind in ("stage_start", "error")):
            last_update = time.time()
            yield view("⏳ running…")


def finished_view(item: Finished, log: list[str], view, stamp) -> tuple:
    if item.report is None:
        log.append(stamp(f"✗ {item.error}"))
        return view(f"❌ {item.error}")
    report = item.report
    log.extend(["", results_table(report)])
    failed = [r for r in report.results if not r.ok]
    if failed:
        return view("❌ " + " ".join(f"{r.quant_type}: {r.error}" for r in failed), report)
    where = ", ".join(r.url or r.output_dir or "" for r in report.results)
    return view(f"✅ done: {where}", report)


def refresh_namespaces(token: str, oauth_token: gr.OAuthToken | None = None):
    choices, note = auth.namespaces(auth.resolve_token(token, oauth_token.token if oauth_token else None))
    return gr.update(choices=choices, value=choices[0] if choices else None, info=note)


def show_history():
    """Past jobs from Trackio's store, newest first."""
    return history_frame()


def build_app() -> gr.Blocks:
    runnable, refused = type_choices()
    hardware = detect("auto")
    with gr.Blocks(title="torchao quantizer") as app:
        gr.Markdown(
            "# 🗜️ torchao quantizer\n"
            "Quantize a causal LM from the Hub with [torchao](https://github.com/pytorch/ao), verify it against the "
            "source (stock transformers reload, perplexity, top-1 agreement), and push it with a model card. "
            f"Running on **{hardware.name}**."
        )
        with gr.Row():
            if auth.oauth_configured():
                gr.LoginButton()
            token = gr.Textbox(
                label="Hugging Face token",
                type="password",
                placeholder="hf_…",
                visible=not auth.on_space(),
                info="write access to the target namespace; never shown or stored",
            )
        with gr.Tab("Quantize"):
            with gr.Row():
                with gr.Column(scale=3):
                    source = gr.Textbox(
                        label="Source model", placeholder="namespace/name or namespace/name@revision", elem_id="source"
                    )
                    gr.Examples(EXAMPLE_SOURCES, inputs=source, label="Examples")
                    quant_types = gr.CheckboxGroup(
                        runnable,
                        value=[runnable[0][1]] if runnable else [],
                        label="Quantization types",
                        elem_id="quant-types",
                    )
                    if refused:
                        gr.Markdown("Not available on this hardware:\n" + "\n".join(refused))
                    group_size = gr.Dropdown(
                        [AUTO_GROUP, *map(str, GROUP_SIZES)], value=AUTO_GROUP, label="Group size (int4 types)"
                    )
                    int4_method = gr.Dropdown(
                        METHOD_CHOICES,
                        value="auto",
                        label="int4 method (int4 types stored as Intx)",
                        info="how the 4-bit values are chosen: gptq is calibrated on real text and closest to the "
                        "source; asym is instant; rtn is torchao's plain rounding",
                        elem_id="int4-method",
                    )
                with gr.Column(scale=2):
                    namespace = gr.Dropdown(
                        [],
                        label="Namespace",
                        allow_custom_value=True,
                        info="sign in or give a token to choose where to push",
                    )
                    target_name = gr.Textbox(
                        label="Target name", elem_id="target-name", info="several types each add their suffix"
                    )
                    private = gr.Checkbox(label="Private repo")
                    overwrite = gr.Checkbox(label="Overwrite an existing repo")
                    save_only = gr.Checkbox(label="Save on the Space only (no push)", elem_id="save-only")
                    run_button = gr.Button("Quantize", variant="primary", elem_id="run")
            status = gr.Markdown(elem_id="status")
            log = gr.Textbox(label="Log", lines=14, max_lines=30, autoscroll=True, elem_id="log")
            with gr.Row():
                results = gr.Dataframe(
                    headers=RESULT_COLUMNS,
                    label="Results",
                    elem_id="results",
                    datatype=["str", "str", "markdown", *["str"] * 7],
                    wrap=True,
                )
            with gr.Row():
                chart = gr.BarPlot(x="model", y="MB", title="Weights on disk (MB)", y_lim=[0, None], elem_id="sizes")
                samples = gr.Markdown(elem_id="samples")
            with gr.Accordion("Report (JSON)", open=False):
                report = gr.JSON()

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

        for trigger in (source.change, quant_types.change):
            trigger(suggested_name, [source, quant_types], target_name, api_name=False, show_progress="hidden")
        token.blur(refresh_namespaces, token, namespace, api_name=False)
        app.load(refresh_namespaces, token, namespace, api_name=False)
        for trigger in (history_tab.select, refresh.click):
            trigger(show_history, None, history, api_name=False)
        app.load(show_history, None, history, api_name="history")
        run_button.click(
            quantize,
            [
                source,
                quant_types,
                group_size,
                int4_method,
                target_name,
                namespace,
                private,
                overwrite,
                save_only,
                token,
            ],
            [status, log, results, chart, samples, report],
            api_name="quantize",
            concurrency_limit=int(os.environ.get("QUANTIZER_CONCURRENCY", "1")),
        )
    return app


def launch(app: gr.Blocks) -> None:
    app.queue(max_size=int(os.environ.get("QUANTIZER_MAX_QUEUE", "8")))
    app.launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
    )
