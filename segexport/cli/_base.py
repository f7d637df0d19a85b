"""The `segexport` click group, its one-line errors, and the parameter types every command shares.

User mistakes (SegexportError) end with one line on stderr and a non-zero exit; with
`--json`, stdout also gets `{"ok": false, "error": ...}` so scripts need not parse stderr.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import click

from segexport import __version__
from segexport.errors import SegexportError
from segexport.extras import missing_extra_error
from segexport.shapes import InputShape, parse_shape, parse_size

# Old spellings, kept one release: command -> old option -> what it now reads.
DEPRECATED_SPELLINGS: dict[str, dict[str, tuple[str, ...]]] = {
    "trt": {
        "--fp16": ("--precision", "fp16"),
        "--int8": ("--precision", "int8"),
        "--fp32": ("--precision", "fp32"),
    },
    "quantize": {"--eval-images": ("--limit",)},
    "bench": {"--eval-images": ("--limit",)},
    "train": {"--batch-size": ("--batch",), "--eval-images": ("--limit",)},
}


class _Command(click.Command):
    """A command that reads the old spellings in DEPRECATED_SPELLINGS, with a deprecation line."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        old = DEPRECATED_SPELLINGS.get(self.name or "", {})
        if old:
            args = _respell(args, old)
        return super().parse_args(ctx, args)


def _respell(args: list[str], old: dict[str, tuple[str, ...]]) -> list[str]:
    """`args` in today's spellings; two old flags for one option (`--fp16 --int8`) are refused."""
    respelled: list[str] = []
    used: dict[str, str] = {}
    for arg in args:
        name, sep, value = arg.partition("=")
        if name not in old:
            respelled.append(arg)
            continue
        new = old[name]
        if len(new) > 1 and new[0] in used:
            raise click.UsageError(f"{used[new[0]]} and {name} are mutually exclusive: pick one {new[0]}")
        used[new[0]] = name
        click.echo(f"segexport: note: {name} is deprecated; use {' '.join(new)}", err=True)
        respelled += [*new, value] if sep else list(new)
    return respelled


class _Group(click.Group):
    """Every error, click's usage errors included, as one `segexport: error: ...` line."""

    command_class = _Command

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        argv = list(sys.argv[1:] if args is None else args)
        try:
            code = super().main(argv, prog_name, complete_var, False, **extra)
        except click.exceptions.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        except click.exceptions.NoArgsIsHelpError as error:  # bare `segexport`: the help, as click shows it
            error.show()
            sys.exit(error.exit_code)
        except click.ClickException as error:
            message = error.format_message().replace("\n", " ")
            if "unexpected extra argument" in message:  # `--input photos/*.png`: the shell expanded it
                message += "; an option takes one path: for many images, pass the folder (--input photos/)"
            context = getattr(error, "ctx", None)
            message += f" (see '{context.command_path if context else 'segexport'} --help')"
            if "--json" in argv:
                click.echo(json.dumps({"ok": False, "error": message}))
            click.echo(f"segexport: error: {message}", err=True)
            sys.exit(error.exit_code)
        sys.exit(code if isinstance(code, int) else 0)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SegexportError as error:
            fail(ctx, error)
        except ModuleNotFoundError as error:  # an optional extra that is not installed
            missing = missing_extra_error(error)
            if missing is None:
                raise
            fail(ctx, missing)


def fail(ctx: click.Context, error: SegexportError) -> NoReturn:
    """End with the error as one line (and as JSON on stdout under `--json`)."""
    message = str(error).replace("\n", " ")
    if ctx.meta.get("json"):
        click.echo(json.dumps({"ok": False, "error": message}))
    click.echo(f"segexport: error: {message}", err=True)
    ctx.exit(error.exit_code)


class Float(click.FloatRange):
    """A finite float in range (click's FloatRange lets nan and inf through)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


POSITIVE = click.IntRange(min=1)
FRACTION = Float(0.0, 1.0)
NON_NEGATIVE = Float(min=0.0)


def size(_ctx: click.Context, _param: click.Parameter, value: str | None) -> tuple[int, int] | None:
    """Callback: `HxW` as (height, width)."""
    if value is None:
        return None
    try:
        return parse_size(value)
    except SegexportError as error:
        raise click.BadParameter(str(error)) from None


def shapes(_ctx: click.Context, _param: click.Parameter, value: str | None) -> list[InputShape] | None:
    """Callback: comma-separated `BxHxW` shapes."""
    if not value:
        return None
    try:
        return [parse_shape(item) for item in value.split(",") if item.strip()]
    except SegexportError as error:
        raise click.BadParameter(str(error)) from None


def model_args(_ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]) -> dict[str, Any]:
    """Callback: repeated `KEY=VALUE` as a dict, VALUE parsed as JSON where it is JSON."""
    options: dict[str, Any] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE")
        try:
            options[key] = json.loads(raw)
        except json.JSONDecodeError:
            options[key] = raw
    return options


def progress(message: str) -> None:
    """The API's progress messages go to stderr, so stdout stays the result."""
    click.echo(message, err=True)


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2))


def take_fields(params: dict[str, Any], cls: type) -> dict[str, Any]:
    """Remove and return the options named like the dataclass `cls`'s fields.

    Options are named like the API's request fields, so a command builds its request as
    `Request(**params)` and a parameter is spelled once, in its decorator. This splits the
    options of a command that fills two dataclasses.
    """
    names = {field.name for field in dataclasses.fields(cls)}
    return {name: params.pop(name) for name in list(params) if name in names}


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="segexport")
def main() -> None:
    """Export PyTorch segmentation models to verified ONNX, FP16/INT8 ONNX and TensorRT engines,
    and run them (torch-free) on images, folders, videos and cameras.

    Exit codes: 0 ok; 1 verification failed (an artifact differs from its reference);
    2 a usage or input error (fix the command); 3 this install or machine lacks something
    (an extra, TensorRT, a GPU).
    """
