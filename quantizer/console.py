"""What the CLI prints while a job runs: its events on stderr, and libraries kept quiet."""

from __future__ import annotations

import sys
from typing import TextIO

from .events import Event, format_line


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
