"""One exception hierarchy whose messages are written for the person running the job.

Every error the pipeline raises on purpose is a `QuantizerError`: its `str()` is one or two
sentences saying what is wrong and what to do. The CLI prints exactly that (no traceback unless
`--debug`), the UI shows it, and tracking records it. Anything else is a bug.
"""

from __future__ import annotations


class QuantizerError(Exception):
    """Base class: a failure the user can act on. `exit_code` tells the CLI how to exit."""

    exit_code = 1

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InputError(QuantizerError):
    """Bad input caught before any work (source, options, target): nothing was written."""

    exit_code = 2


class SourceError(InputError):
    """The source folder or repo cannot be quantized as it is."""


class RecipeError(InputError):
    """Unknown quantization type, or one the chosen device cannot run."""


class GroupSizeError(InputError):
    """The group size is invalid or does not divide every layer that would be quantized."""


class OutputExistsError(InputError):
    """The output folder or target repo exists and `--overwrite` was not given."""


class QuantizationError(QuantizerError):
    """torchao failed while quantizing or saving."""


class VerificationError(QuantizerError):
    """The saved output does not reload, or its outputs are far from the source's."""


class AuthError(InputError):
    """The token is missing, invalid, or lacks a permission."""


class HubError(QuantizerError):
    """The Hub refused or failed an operation."""
