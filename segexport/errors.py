"""Error types shared by every stage.

`SegexportError` marks a problem the user can fix (bad name, bad file, bad size):
the CLI prints its message on one line and exits non-zero, without a traceback.
Anything else escaping is a bug in segexport and keeps its traceback.
"""

from __future__ import annotations


def first_line(error: BaseException) -> str:
    """A library's (often multi-line) error message as one line for a user-facing error."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


class SegexportError(Exception):
    """A user-facing error: the message alone must say what is wrong and what to do."""

    exit_code = 2


class VerificationError(SegexportError):
    """An artifact computes something other than the PyTorch model it came from."""

    exit_code = 1


class DamagedInputError(SegexportError):
    """An input was read only in part (a damaged or truncated video): the output would lie."""

    exit_code = 1


class UnavailableError(SegexportError):
    """This machine lacks what the step needs (TensorRT, a GPU); the inputs were fine."""

    exit_code = 3
