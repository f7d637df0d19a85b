"""`segexport doctor`: what this machine can run (loads without torch or onnx)."""

from __future__ import annotations

import click

from segexport.cli._base import main
from segexport.cli.options import json_option


@main.command("doctor")
@json_option()
def doctor(as_json: bool) -> None:
    """What this machine can do: TensorRT, CUDA and GPUs, ONNX Runtime providers, torch."""
    import json

    from segexport.doctor import environment_report, format_report

    report = environment_report()
    click.echo(json.dumps(report, indent=2) if as_json else format_report(report))
