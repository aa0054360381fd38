"""`python -m quantizer SOURCE TARGET --quant-type ...`: the command line over the pipeline.

Compatible with the original standalone script (positional SOURCE and TARGET, --quant-type,
--device, --token, --private, --save-only). Events and the final table go to stderr; `--json`
puts the report on stdout. Exit codes: 0 all types succeeded, 1 a type failed, 2 bad input.
"""

from __future__ import annotations

import argparse
import signal
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from . import batch, hf_jobs, int4, recipes, settings, suggest
from .cancel import JobCancelled
from .console import ConsolePrinter, quiet_libraries
from .errors import InputError, QuantizerError
from .events import EventStream
from .hardware import DEVICES
from .hub import Hub
from .on_jobs import JobsOptions, run_on_jobs
from .pipeline import run
from .report import Report, results_table
from .spec import WIKITEXT, DatasetRef, JobSpec, host_deadline_seconds
from .texts import (
    DEFAULT_CALIBRATION_TEXT_NAME,
    DEFAULT_CALIBRATION_TOKENS,
    DEFAULT_EVAL_TEXT_NAME,
    DEFAULT_EVAL_TOKENS,
)

T = TypeVar("T")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m quantizer",
        description="Quantize a causal LM with torchao, verify it against the source, save or push it.",
    )
    add_job_arguments(p)
    add_int4_arguments(p)
    add_output_arguments(p)
    add_measurement_arguments(p)
    add_information_arguments(p)
    add_scale_arguments(p)
    return p


def add_job_arguments(p: argparse.ArgumentParser) -> None:
    """What to quantize, into what, and how."""
    p.add_argument("source", nargs="?", help="model folder or Hub repo id (namespace/name[@revision])")
    p.add_argument(
        "target",
        nargs="?",
        help="output name: namespace/name or name; several types add their suffix "
        "(default: {source name}-torchao-{suffix} in your namespace)",
    )
    p.add_argument(
        "--quant-type",
        action="append",
        dest="quant_types",
        metavar="TYPE",
        help=f"repeatable; one of the registry's names or 'both' (default {recipes.DEFAULT_TYPE})",
    )
    p.add_argument(
        "--streaming",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="quantize shard by shard with bounded memory (default: when the model does not fit in memory)",
    )
    p.add_argument(
        "--allow-partial",
        action="store_true",
        help="go on when less than half of the Linear-like weights can be quantized (with a type that cannot "
        "quantize a mixture of experts' 3-D expert weights, they stay in the source dtype)",
    )
    speed_only = "with --save-only, for timing random weights: quality checks measured and noted, not enforced"
    p.add_argument("--speed-only", action="store_true", help=speed_only)
    p.add_argument("--device", choices=DEVICES, default="auto")


def add_int4_arguments(p: argparse.ArgumentParser) -> None:
    """Group size, int4 method and GPTQ's calibration."""
    p.add_argument(
        "--group-size",
        type=int,
        default=None,
        help=f"int4 group size: 32, 64, 128 or 256 (default {recipes.DEFAULT_GROUP_SIZE}, "
        "lowered automatically when it does not divide the model's widths)",
    )
    p.add_argument(
        "--int4-method",
        choices=(*int4.METHODS, *int4.ABLATIONS),
        metavar="{" + ",".join(int4.METHODS) + "}",
        default=None,
        help="how int4 weights are chosen for the int4 types: "
        + "; ".join(f"{m.name} ({m.description})" for m in int4.METHODS.values())
        + f"; default: {int4.auto_description()}. Also GPTQ's ablations, for comparison: {', '.join(int4.ABLATIONS)}",
    )
    p.add_argument(
        "--int4-mixed",
        type=float,
        default=None,
        metavar="BITS",
        help="mixed precision for int4_weight_only: keep the Linear layers most sensitive to int4 (measured on the "
        "calibration text) in int8, within this average of bits per weight (int4 at group size 32 is 5.0, int8 8; "
        "for example 5.5)",
    )
    p.add_argument(
        "--calibration-text",
        type=Path,
        default=None,
        help=f"UTF-8 text for GPTQ calibration (default: {DEFAULT_CALIBRATION_TEXT_NAME})",
    )
    add_dataset_flags(p, "calibration", "train", "calibrate GPTQ on a Hub dataset instead")
    p.add_argument(
        "--calibration-tokens",
        type=int,
        default=DEFAULT_CALIBRATION_TOKENS,
        help=f"calibration tokens for GPTQ (default {DEFAULT_CALIBRATION_TOKENS})",
    )


def add_output_arguments(p: argparse.ArgumentParser) -> None:
    """Where the output goes, and with which token."""
    p.add_argument("--token", default=None, help="Hub token (default: $HF_TOKEN)")
    p.add_argument(
        "--private",
        action="store_true",
        default=None,
        help="create the target repo as private (default: private when the source is private or gated)",
    )
    p.add_argument("--save-only", action="store_true", help="save to --output-dir, do not push")
    p.add_argument(
        "--output-dir",
        type=Path,
        default=None,
        help="where outputs are kept (default ./out with --save-only; a push keeps no local copy unless given)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder or target repo")


def add_measurement_arguments(p: argparse.ArgumentParser) -> None:
    """What the outputs are measured on, and where the job is recorded."""
    p.add_argument(
        "--eval-text",
        type=Path,
        default=None,
        help=f"UTF-8 text for perplexity (default: {DEFAULT_EVAL_TEXT_NAME})",
    )
    add_dataset_flags(
        p,
        "eval",
        "test",
        f"measure perplexity on a Hub dataset instead; alone, {WIKITEXT} as torchao's published tables",
        alone=WIKITEXT,
    )
    p.add_argument(
        "--eval-tokens",
        type=int,
        default=DEFAULT_EVAL_TOKENS,
        help=f"tokens of eval text used for perplexity (default {DEFAULT_EVAL_TOKENS})",
    )
    p.add_argument("--no-tracking", action="store_true", help="do not record the job in Trackio")
    p.add_argument(
        "--trackio-project", default=None, help="Trackio project (default: $QUANTIZER_TRACKIO_PROJECT or 'quantizer')"
    )


def add_information_arguments(p: argparse.ArgumentParser) -> None:
    """Output format, and the options that print something and exit."""
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    p.add_argument("--list-quant-types", action="store_true", help="print the quantization types and exit")
    p.add_argument(
        "--suggest-for",
        choices=tuple(suggest.TABLES),
        metavar="TARGET",
        help="print the type (and int4 method) the measured tables favour for where the model will run: "
        f"{', '.join(suggest.TABLES)}; then exit",
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks (secrets scrubbed)")


def add_scale_arguments(p: argparse.ArgumentParser) -> None:
    """Beyond this machine: a Hugging Face Job, and several sources at once."""
    p.add_argument(
        "--on-jobs",
        metavar="FLAVOR",
        default=None,
        help="run the job on Hugging Face Jobs on this hardware (billed to your account; --list-jobs-hardware "
        "shows the flavors and their prices)",
    )
    p.add_argument(
        "--jobs-image",
        default=None,
        help="the Docker image the Job runs, one holding this tool: hf.co/spaces/OWNER/NAME "
        "(default: $QUANTIZER_JOBS_IMAGE, or this Space's own on a Space)",
    )
    p.add_argument(
        "--jobs-timeout", type=int, default=None, help="the Job's deadline in seconds (default: from the estimate)"
    )
    p.add_argument("--jobs-namespace", default=None, help="run and bill the Job under this organization")
    p.add_argument("--list-jobs-hardware", action="store_true", help="print the Jobs flavors and their prices")
    p.add_argument(
        "--batch",
        metavar="FILE|collection:SLUG",
        default=None,
        help="several sources: a file with one source a line (optionally followed by its target), or a Hub "
        "collection; each is its own job with the other flags",
    )
    p.add_argument("--report-to-log", action="store_true", help=argparse.SUPPRESS)  # set by --on-jobs in the Job


def add_dataset_flags(
    p: argparse.ArgumentParser, role: str, split: str, help_text: str, alone: str | None = None
) -> None:
    """--{role}-dataset REPO[:CONFIG] with its --{role}-split and --{role}-column (read with `datasets`); with
    `alone`, the flag without a value names that dataset."""
    p.add_argument(
        f"--{role}-dataset",
        metavar="REPO[:CONFIG]",
        nargs="?" if alone else None,
        const=alone,
        default=None,
        help=f"{help_text} (read with the datasets library)",
    )
    p.add_argument(f"--{role}-split", default=split, help=f"the {role} dataset's split (default {split})")
    p.add_argument(f"--{role}-column", default="text", help="its text column (default text)")


def dataset_ref(args: argparse.Namespace, role: str) -> DatasetRef | None:
    value = getattr(args, f"{role}_dataset")
    if not value:
        return None
    return DatasetRef.parse(value, getattr(args, f"{role}_split"), getattr(args, f"{role}_column"))


def spec_from_args(args: argparse.Namespace) -> JobSpec:
    return JobSpec(
        source=args.source,
        target=args.target,
        quant_types=args.quant_types or [recipes.DEFAULT_TYPE],
        group_size=args.group_size,
        device=args.device,
        save_only=args.save_only,
        output_dir=args.output_dir,
        overwrite=args.overwrite,
        token=args.token or settings.get("HF_TOKEN"),
        private=args.private,
        eval_text=args.eval_text,
        eval_dataset=dataset_ref(args, "eval"),
        calibration_dataset=dataset_ref(args, "calibration"),
        eval_tokens=args.eval_tokens,
        debug=args.debug,
        int4_method=args.int4_method,
        int4_mixed=args.int4_mixed,
        calibration_text=args.calibration_text,
        calibration_tokens=args.calibration_tokens,
        streaming=args.streaming,
        allow_partial=args.allow_partial,
        speed_only=args.speed_only,
        track=not args.no_tracking,
        trackio_project=args.trackio_project,
        deadline_seconds=host_deadline_seconds(),
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    informed = information(args)
    if informed is not None:
        return informed
    if args.batch:
        if args.source:
            return usage_error("--batch takes its sources from the file or collection: leave SOURCE out.")
        return batch_main(args)
    if not args.source:
        return usage_error("SOURCE is required (see --help): a model folder or a Hub repo id (namespace/name).")
    spec = spec_from_args(args)
    quiet_libraries()
    events = EventStream(ConsolePrinter())
    stop_on_sigterm(events)
    outcome = guarded(args, events, lambda: run_one(spec, args, events))
    if isinstance(outcome, int):
        return outcome
    return print_report(outcome, args, events)


def information(args: argparse.Namespace) -> int | None:
    """The options that print something and exit; None when none was given."""
    if args.list_quant_types:
        print(recipes.registry_table())
        return 0
    if args.list_jobs_hardware:
        return (
            guarded(
                args, EventStream(), lambda: print(hf_jobs.flavors_table(Hub(args.token or settings.get("HF_TOKEN"))))
            )
            or 0
        )
    if args.suggest_for:
        try:
            print(suggest.suggest(args.suggest_for).text())
        except InputError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return exc.exit_code
        return 0
    return None


def usage_error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def run_one(spec: JobSpec, args: argparse.Namespace, events: EventStream) -> Report:
    """The job here, or in a Hugging Face Job."""
    if args.on_jobs:
        return run_on_jobs(spec, jobs_options(args), events)
    return run(spec, events)


def jobs_options(args: argparse.Namespace) -> JobsOptions:
    return JobsOptions(
        flavor=args.on_jobs, image=args.jobs_image, timeout=args.jobs_timeout, namespace=args.jobs_namespace
    )


def stop_on_sigterm(events: EventStream) -> None:
    """A Job that is cancelled (or any `kill`) stops the job the way Ctrl-C does: what it made is removed."""
    signal.signal(signal.SIGTERM, lambda *_: events.cancel.cancel("the job was cancelled (SIGTERM)"))


def guarded(args: argparse.Namespace, events: EventStream, work: Callable[[], T]) -> T | int:
    """`work`'s value, or the exit code after its error was printed (scrubbed)."""
    try:
        return work()
    except QuantizerError as exc:
        if args.debug:
            print(events.scrub(traceback.format_exc()), file=sys.stderr)
        print(f"error: {events.scrub(str(exc))}", file=sys.stderr)
        return exc.exit_code if isinstance(exc, InputError) else 1
    except KeyboardInterrupt:
        print("interrupted: nothing was kept", file=sys.stderr)
        return 130
    except JobCancelled:
        print(f"stopped: {events.cancel.reason}; nothing was kept", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:  # the traceback, with every secret scrubbed like everything else the CLI prints
            print(events.scrub(traceback.format_exc()), file=sys.stderr)
        print(
            f"error: unexpected failure ({type(exc).__name__}: {events.scrub(str(exc))}); "
            "rerun with --debug for the traceback and report it.",
            file=sys.stderr,
        )
        return 1


def print_report(report: Report, args: argparse.Namespace, events: EventStream) -> int:
    if not args.on_jobs:  # a Job's log has already shown its table
        print("\n" + events.scrub(results_table(report)), file=sys.stderr)
    if report.tracking:
        print(f"recorded in {report.tracking}", file=sys.stderr)
    if args.json:
        print(events.scrub(report.to_json()))
    if args.report_to_log:  # the Job's last line, which --on-jobs reads back
        print(events.scrub(hf_jobs.report_line(report)), flush=True)
    failed = [r for r in report.results if not r.ok]
    for r in failed:
        print(f"error: {r.quant_type}: {events.scrub(r.error or '')}", file=sys.stderr)
    return 1 if failed else 0


def batch_main(args: argparse.Namespace) -> int:
    """`--batch`: each source its own job, here or one Job each; then the summary table."""
    quiet_libraries()
    events = EventStream(ConsolePrinter())
    stop_on_sigterm(events)

    def say(line: str) -> None:
        print(events.scrub(line), file=sys.stderr, flush=True)

    def work() -> list:
        template = spec_from_args(args)
        items = batch.read_batch(args.batch, Hub(template.token, events))
        if args.on_jobs:
            return batch.run_on_jobs(items, template, jobs_options(args), events)
        return batch.run_here(items, template, lambda spec: run(spec, events), say)

    rows = guarded(args, events, work)
    if isinstance(rows, int):
        return rows
    print("\n" + events.scrub(batch.summary_table(rows)), file=sys.stderr)
    return 1 if batch.failed(rows) else 0
