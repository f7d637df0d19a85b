"""Running the `segexport` command in-process, and the one-line error contract every test checks."""

from __future__ import annotations

from click.testing import CliRunner

from segexport.cli import main


def run(*args: str) -> tuple[int, str, str]:
    """`segexport ARGS`: exit code, stdout, stderr; an exception other than an exit is raised."""
    result = CliRunner().invoke(main, list(args))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def assert_one_line_error(
    code: int, stderr: str, pattern: str, exit_code: int = 2, after_progress: bool = False
) -> None:
    """The command refused with `exit_code` and one `segexport: error:` line holding `pattern`.

    That line is all of stderr: a mistake is refused before any work. A failure found by the
    work itself (a verification, a bad image in a folder) passes `after_progress=True`: the
    progress lines before it are allowed, the error must still be the last and only error line.
    """
    assert code == exit_code, stderr
    assert "Traceback" not in stderr and "Usage:" not in stderr, stderr
    lines = stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("segexport: error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], stderr
    assert after_progress or len(lines) == 1, stderr
    assert pattern in lines[-1], lines[-1]
