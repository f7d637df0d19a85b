"""`segexport verify`: every artifact file against PyTorch (or the FP32 ONNX) on real data."""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path
from typing import Any

import click

from segexport.cli._base import FRACTION, NON_NEGATIVE, echo_json, main, progress, shapes
from segexport.cli.options import (
    artifacts_option,
    data_option,
    json_option,
    limit_option,
    model_option,
    threads_option,
    weights_option,
)


@main.command("verify")
@artifacts_option()
@model_option("Zoo name (exports first when artifacts/MODEL is empty).")
@weights_option("Reference checkpoint if the recorded path moved (sha256 must match), or 'demo'.")
@click.option(
    "--against",
    type=click.Choice(["pytorch", "onnx", "recorded"]),
    default="pytorch",
    show_default=True,
    help="Reference: the PyTorch model, the FP32 model.onnx through ONNX Runtime, or PyTorch's outputs "
    "recorded at export (reference.npz; what 'pytorch' means where PyTorch is not installed).",
)
@data_option("'synthetic', 'random', or a folder of images.")
@limit_option("Images to check.", 32, dest="limit")
@click.option("--shapes", callback=shapes, help="Extra BxHxW random-input shapes, comma-separated.")
@click.option(
    "--precision",
    type=click.Choice(["all", "fp32", "fp16", "int8", "engine"]),
    default="all",
    show_default=True,
    help="Which artifact files to check.",
)
@click.option("--atol", type=NON_NEGATIVE, help="Largest max abs error accepted (default: unchecked).")
@click.option("--rtol", type=NON_NEGATIVE, help="Largest relative L2 error accepted [per precision].")
@click.option(
    "--min-agreement", type=FRACTION, help="Smallest argmax agreement accepted (default: per precision)."
)
@click.option(
    "--report", type=click.Path(path_type=Path), help="Markdown report [ARTIFACTS/verify_report.md]."
)
@threads_option()
@json_option("Print the JSON report on stdout.")
@click.pass_context
def verify(ctx: click.Context, as_json: bool, **params: Any) -> None:
    """Check every artifact against PyTorch on real data; exit 1 if any fails."""
    from segexport.errors import VerificationError
    from segexport.report import json_safe

    if params["against"] == "recorded" or (params["against"] == "pytorch" and find_spec("torch") is None):
        result = _verify_recorded(params)
    else:
        from segexport.verify import VerifyRequest, verify_artifacts

        result = verify_artifacts(VerifyRequest(**params), progress=progress)
    if as_json:
        echo_json(json_safe(result.to_dict()))
        ctx.meta["json"] = False  # stdout already holds the report, with "ok": false
    else:
        for artifact in result.artifacts:
            reason = f" ({artifact.reason})" if artifact.reason else ""
            click.echo(f"  {artifact.file:>18} {artifact.precision:>6}: {artifact.status}{reason}")
        click.echo(f"wrote {result.files['markdown']} and {result.files['json']}")
    if not result.passed:
        failed = [a for a in result.artifacts if a.status == "failed"]
        raise VerificationError(
            f"{len(failed)} artifact(s) differ from the reference: "
            + " | ".join(f"{a.file}: {(a.failures() or ['failed'])[0]}" for a in failed)
        )


# What only a PyTorch rerun can do: the recorded reference is fixed inputs of a fixed model.
_NEEDS_PYTORCH = {"model": None, "weights": None, "data": "synthetic", "shapes": None}


def _verify_recorded(params: dict[str, Any]) -> Any:
    """Every file against reference.npz (no PyTorch): `segexport.verify_recorded`."""
    from segexport.errors import SegexportError
    from segexport.verify_recorded import verify_recorded

    given = [f"--{name}" for name, unset in _NEEDS_PYTORCH.items() if params[name] != unset]
    why = "--against recorded" if params["against"] == "recorded" else "PyTorch is not installed"
    if given:
        raise SegexportError(
            f"{', '.join(given)}: {why}, so verify judges the recorded reference of --artifacts DIR only; "
            "install the 'export' extra to rerun PyTorch"
        )
    if params["artifacts"] is None:
        raise SegexportError(f"{why}: name the artifact with --artifacts DIR")
    return verify_recorded(
        params["artifacts"],
        params["precision"],
        rtol=params["rtol"],
        min_agreement=params["min_agreement"],
        atol=params["atol"],
        report_path=params["report"],
        threads=params["threads"],
        progress=progress,
    )
