"""`python -m quantizer SOURCE TARGET --quant-type ...`: the command line over the pipeline.

Compatible with the original standalone script (positional SOURCE and TARGET, --quant-type,
--device, --token, --private, --save-only). Events and the final table go to stderr; `--json`
puts the report on stdout. Exit codes: 0 all types succeeded, 1 a type failed, 2 bad input.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path
from typing import TextIO

from . import int4, recipes, settings, suggest
from .cancel import JobCancelled
from .errors import InputError, QuantizerError
from .events import Event, EventStream, format_line
from .hardware import DEVICES
from .pipeline import JobSpec, run
from .report import results_table
from .spec import WIKITEXT, DatasetRef, host_deadline_seconds
from .texts import (
    DEFAULT_CALIBRATION_TEXT_NAME,
    DEFAULT_CALIBRATION_TOKENS,
    DEFAULT_EVAL_TEXT_NAME,
    DEFAULT_EVAL_TOKENS,
)


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


class ConsolePrinter:
    """Prints events to stderr: one line per stage and log, a redrawn bar for progress on a terminal."""

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream or sys.stderr  # looked up now, not at import, so redirection is honoured
        self.tty = self.stream.isatty()
        self._bar_open = False

    def __call__(self, event: Event) -> None:
        if event.kind == "progress" and self.tty:
            prefix = f"[{event.quant_type}] " if event.quant_type else ""
            filled = int((event.fraction or 0.0) * 24)
            self.stream.write(f"\r{prefix}  {event.stage} [{'#' * filled}{'.' * (24 - filled)}] {event.message}")
            self.stream.flush()
            self._bar_open = True
            return
        line = format_line(event)
        if line is not None:
            self._end_bar()
            self._line(line)

    def _end_bar(self) -> None:
        if self._bar_open:
            self.stream.write("\n")
            self._bar_open = False

    def _line(self, text: str) -> None:
        print(text, file=self.stream, flush=True)


def quiet_libraries() -> None:
    """Our events report progress; transformers' own bars and load reports would only add noise."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


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
        calibration_text=args.calibration_text,
        calibration_tokens=args.calibration_tokens,
        streaming=args.streaming,
        allow_partial=args.allow_partial,
        track=not args.no_tracking,
        trackio_project=args.trackio_project,
        deadline_seconds=host_deadline_seconds(),
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list_quant_types:
        print(recipes.registry_table())
        return 0
    if args.suggest_for:
        try:
            print(suggest.suggest(args.suggest_for).text())
        except InputError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return exc.exit_code
        return 0
    if not args.source:
        print(
            "error: SOURCE is required (see --help): a model folder or a Hub repo id (namespace/name).", file=sys.stderr
        )
        return 2
    spec = spec_from_args(args)
    quiet_libraries()
    events = EventStream(ConsolePrinter())
    try:
        report = run(spec, events)
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
    print("\n" + events.scrub(results_table(report)), file=sys.stderr)
    if report.tracking:
        print(f"recorded in {report.tracking}", file=sys.stderr)
    if args.json:
        print(events.scrub(report.to_json()))
    failed = [r for r in report.results if not r.ok]
    for r in failed:
        print(f"error: {r.quant_type}: {events.scrub(r.error or '')}", file=sys.stderr)
    return 1 if failed else 0
