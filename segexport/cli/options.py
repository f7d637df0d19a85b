"""Options several commands take, declared once.

Each is a decorator factory; the help text is a parameter where the option means something
slightly different per command (e.g. `--model` exports first in some, is required in others).
Option destinations are the API request's field names (`--model` -> `model`, `--model-arg` ->
`model_options`), so commands pass their options to the request unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from segexport.cli._base import POSITIVE, model_args, size

Command = Callable[..., Any]
Decorator = Callable[[Command], Command]


def _remember_json(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    """Record `--json` where the error handler looks (`ctx.meta` is shared by all contexts)."""
    ctx.meta["json"] = value
    return value


def json_option(help: str = "Print the result as JSON on stdout.") -> Decorator:
    """`--json`, passed to the command as `as_json`; errors then also go to stdout as JSON."""
    return click.option("--json", "as_json", is_flag=True, callback=_remember_json, help=help)


def artifacts_option(
    help: str = "Artifact directory [artifacts/MODEL].", required: bool = False
) -> Decorator:
    return click.option("--artifacts", type=click.Path(path_type=Path), required=required, help=help)


def model_option(help: str = "Zoo name or alias.", required: bool = False) -> Decorator:
    return click.option("--model", required=required, help=help)


def weights_option(help: str, required: bool = False) -> Decorator:
    return click.option("--weights", required=required, help=help)


def model_arg_option(help: str = "Model option KEY=VALUE.") -> Decorator:
    return click.option("--model-arg", "model_options", multiple=True, callback=model_args, help=help)


def threads_option(help: str = "CPU threads for PyTorch and ONNX Runtime.") -> Decorator:
    """`--threads`, 1 to 4 per core of this machine (more crashes ONNX Runtime or only contends)."""
    from segexport.runtime.runners import MAX_THREADS, THREADS_PER_CORE_CAP

    cap = f" At most {MAX_THREADS} ({THREADS_PER_CORE_CAP} per core)."
    return click.option("--threads", type=click.IntRange(1, MAX_THREADS), help=help + cap)


def force_option(help: str) -> Decorator:
    return click.option("--force", is_flag=True, help=help)


def data_option(help: str) -> Decorator:
    return click.option("--data", default="synthetic", show_default=True, help=help)


def limit_option(help: str, default: int, dest: str = "eval_images") -> Decorator:
    """`--limit N`: how many images a command evaluates or checks (one spelling everywhere)."""
    return click.option("--limit", dest, type=POSITIVE, default=default, show_default=True, help=help)


def size_option(help: str, name: str = "--size", **extra: Any) -> Decorator:
    """An `HxW` option (`--size`, `--min-size`, ...), parsed to (height, width)."""
    return click.option(name, callback=size, help=help, **extra)


def max_batch_option(help: str, type: click.ParamType | type = POSITIVE) -> Decorator:
    return click.option("--max-batch", type=type, help=help)


def precision_flags(helps: dict[str, str]) -> Decorator:
    """Flags choosing precision files (`--fp16`, `--int8`, ...), in the order given."""

    def decorate(function: Command) -> Command:
        for name, text in reversed(helps.items()):
            function = click.option(name, is_flag=True, help=text)(function)
        return function

    return decorate
