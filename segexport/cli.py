"""The `segexport` command: a thin layer over the Python API.

User mistakes (SegexportError) end with one line on stderr and a non-zero exit; with
`--json`, stdout also gets `{"ok": false, "error": ...}` so scripts need not parse stderr.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import click

from segexport import __version__
from segexport.errors import SegexportError
from segexport.extras import missing_extra_error
from segexport.runtime.backends import BACKEND_NAMES as BACKEND_CHOICES
from segexport.shapes import InputShape, parse_shape, parse_size


class _Group(click.Group):
    """Every error, click's usage errors included, as one `segexport: error: ...` line."""

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
            _fail(ctx, error)
        except ModuleNotFoundError as error:  # an optional extra that is not installed
            missing = missing_extra_error(error)
            if missing is None:
                raise
            _fail(ctx, missing)


def _fail(ctx: click.Context, error: SegexportError) -> NoReturn:
    message = str(error).replace("\n", " ")
    if ctx.meta.get("json"):
        click.echo(json.dumps({"ok": False, "error": message}))
    click.echo(f"segexport: error: {message}", err=True)
    ctx.exit(error.exit_code)


class _Float(click.FloatRange):
    """A finite float in range (click's FloatRange lets nan and inf through)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


_POSITIVE = click.IntRange(min=1)
_FRACTION = _Float(0.0, 1.0)
_NON_NEGATIVE = _Float(min=0.0)


def _size(_ctx: click.Context, _param: click.Parameter, value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        return parse_size(value)
    except SegexportError as error:
        raise click.BadParameter(str(error)) from None


def _shapes(_ctx: click.Context, _param: click.Parameter, value: str | None) -> list[InputShape] | None:
    if not value:
        return None
    try:
        return [parse_shape(item) for item in value.split(",") if item.strip()]
    except SegexportError as error:
        raise click.BadParameter(str(error)) from None


def _model_args(_ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]) -> dict[str, Any]:
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


def _progress(message: str) -> None:
    click.echo(message, err=True)


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="segexport")
def main() -> None:
    """Export PyTorch segmentation models to verified ONNX (and later TensorRT)."""


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def zoo(ctx: click.Context, as_json: bool) -> None:
    """List the model zoo: parameters, default input size, outputs."""
    from segexport.zoo import count_parameters, get_spec, list_models

    ctx.meta["json"] = as_json
    rows: list[dict[str, Any]] = []
    for name in list_models():
        spec = get_spec(name)
        rows.append(
            {
                "name": name,
                "aliases": list(spec.aliases),
                "family": spec.family,
                "parameters": count_parameters(name),
                "num_classes": spec.default_num_classes,
                "default_input": (
                    f"{spec.default_size[0]}x{spec.default_size[1]}"
                    if spec.input_kind == "image"
                    else "Nx256x14x14 + N labels"
                ),
                "size_divisible_by": spec.stride if spec.input_kind == "image" else None,
                "inputs": list(spec.input_names),
                "outputs": list(spec.output_names),
                "description": spec.description,
            }
        )
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(f"{'model':27} {'params':>8} {'input':>22}  outputs")
    for row in rows:
        params = f"{row['parameters'] / 1e6:.2f}M"
        click.echo(f"{row['name']:27} {params:>8} {row['default_input']:>22}  {', '.join(row['outputs'])}")


@main.command()
@click.option(
    "--model",
    "model_name",
    help="Zoo name or alias [default: the model the --weights describe, else segformer-b0].",
)
@click.option(
    "--weights",
    help="state_dict (.pt/.pth/.safetensors), 'demo' for the shipped checkpoint, or weights from "
    "elsewhere: a Hugging Face SegFormer directory, an mmseg/timm/port checkpoint "
    "(README: Your own weights).",
)
@click.option(
    "--num-classes", type=_POSITIVE, help="Classes of the head (default: the checkpoint's or model's)."
)
@click.option("--size", callback=_size, help="Export height x width, e.g. 512x512.")
@click.option("--batch", type=_POSITIVE, default=1, show_default=True, help="Export batch size.")
@click.option("--min-size", callback=_size, help="Smallest HxW the artifact accepts.")
@click.option("--max-size", callback=_size, help="Largest HxW the artifact accepts.")
@click.option("--max-batch", type=_POSITIVE, help="Largest batch the artifact accepts.")
@click.option("--opset", type=int, default=18, show_default=True)
@click.option("--out", "out_dir", type=click.Path(path_type=Path), help="Artifact dir [artifacts/MODEL].")
@click.option("--force", is_flag=True, help="Replace an existing artifact directory (only a segexport one).")
@click.option(
    "--allow-large",
    is_flag=True,
    help="Lift the size caps (8 Mpx per verified shape, 8192 per side, batch 1024).",
)
@click.option("--verify-shapes", callback=_shapes, help="Extra BxHxW shapes to verify, comma-separated.")
@click.option(
    "--rtol",
    "max_rel_l2",
    type=_NON_NEGATIVE,
    default=1e-4,
    show_default=True,
    help="Largest relative L2 error accepted.",
)
@click.option(
    "--model-arg",
    "model_args",
    multiple=True,
    callback=_model_args,
    help="Model option KEY=VALUE (e.g. fc_channels=1024); repeatable.",
)
@click.option("--threads", type=_POSITIVE, help="CPU threads for PyTorch and ONNX Runtime.")
@click.option(
    "--head",
    type=click.Choice(["logits", "mask", "logits+mask"]),
    default="logits",
    show_default=True,
    help="Graph outputs: class logits, a 'mask' of class ids (ArgMax in the graph), or both.",
)
@click.option(
    "--mask-dtype",
    type=click.Choice(["uint8", "int32"]),
    default="uint8",
    show_default=True,
    help="Type of the mask's class ids.",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
@click.pass_context
def onnx(
    ctx: click.Context,
    model_name: str | None,
    weights: str | None,
    num_classes: int | None,
    size: tuple[int, int] | None,
    batch: int,
    min_size: tuple[int, int] | None,
    max_size: tuple[int, int] | None,
    max_batch: int | None,
    opset: int,
    out_dir: Path | None,
    force: bool,
    allow_large: bool,
    verify_shapes: list[InputShape] | None,
    max_rel_l2: float,
    model_args: dict[str, Any],
    threads: int | None,
    head: str,
    mask_dtype: str,
    as_json: bool,
) -> None:
    """Export a model to ONNX with dynamic axes, simplify it, and verify it against PyTorch."""
    from segexport.compare import Tolerance
    from segexport.export import ExportRequest, export_onnx

    ctx.meta["json"] = as_json
    request = ExportRequest(
        model=model_name,
        num_classes=num_classes,
        weights=weights,
        size=size,
        batch=batch,
        min_size=min_size,
        max_size=max_size,
        max_batch=max_batch,
        opset=opset,
        out_dir=out_dir,
        force=force,
        model_options=model_args,
        verify_shapes=verify_shapes,
        tolerance=Tolerance(max_rel_l2=max_rel_l2),
        threads=threads,
        head=head,
        mask_dtype=mask_dtype,
        allow_large=allow_large,
    )
    manifest = export_onnx(request, progress=_progress)
    summary = export_summary(manifest, request.out_dir or Path("artifacts") / manifest["model"]["name"])
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    for shape in summary["verification"]:
        for out in shape["outputs"]:
            agreement = "" if out["agreement"] is None else f", argmax agreement {out['agreement']:.4%}"
            if out["rel_l2"] is None:  # class ids
                click.echo(f"  {shape['shape']:>12} {out['name']}: class ids agree {out['agreement']:.4%}")
                continue
            click.echo(
                f"  {shape['shape']:>12} {out['name']}: rel L2 {out['rel_l2']:.2e}, "
                f"max abs {out['max_abs']:.2e}{agreement}"
            )
    click.echo(f"wrote {summary['artifact']} ({summary['seconds']['total']:.1f} s)")


@main.command()
@click.option("--model", "model_name", required=True, help="Zoo name or alias.")
@click.option(
    "--data",
    default="synthetic",
    show_default=True,
    help="'synthetic' or a folder with images/, masks/ and classes.txt.",
)
@click.option("--epochs", type=_POSITIVE, default=10, show_default=True)
@click.option(
    "--steps", "steps_per_epoch", type=_POSITIVE, default=100, show_default=True, help="Steps per epoch."
)
@click.option("--batch-size", type=_POSITIVE, default=8, show_default=True)
@click.option("--size", callback=_size, default="128x128", show_default=True, help="Training crop HxW.")
@click.option(
    "--loss", default="ce+dice", show_default=True, help="Terms of ce, dice, focal, lovasz, boundary."
)
@click.option("--lr", type=_Float(min=0.0, min_open=True), default=2e-3, show_default=True)
@click.option(
    "--eval-images", type=_POSITIVE, default=16, show_default=True, help="Held-out images per evaluation."
)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option(
    "--model-arg", "model_args", multiple=True, callback=_model_args, help="Model option KEY=VALUE."
)
@click.option("--fp32-storage", is_flag=True, help="Store float32 weights (default: float16).")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output .safetensors file.")
@click.option("--force", is_flag=True, help="Replace an existing checkpoint.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def train(
    ctx: click.Context,
    model_name: str,
    data: str,
    epochs: int,
    steps_per_epoch: int,
    batch_size: int,
    size: tuple[int, int],
    loss: str,
    lr: float,
    eval_images: int,
    seed: int,
    model_args: dict[str, Any],
    fp32_storage: bool,
    out: Path,
    force: bool,
    as_json: bool,
) -> None:
    """Train a zoo model (a helper for demos and fine-tuning), reporting held-out mIoU."""
    from segexport.training import TrainConfig
    from segexport.training import train as run_training

    ctx.meta["json"] = as_json
    config = TrainConfig(
        model=model_name,
        out=out,
        data=data,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        batch_size=batch_size,
        size=size,
        loss=loss,
        lr=lr,
        eval_images=eval_images,
        seed=seed,
        model_options=model_args,
        fp16_storage=not fp32_storage,
        force=force,
    )
    record = run_training(config, progress=_progress)
    if as_json:
        click.echo(json.dumps(record, indent=2))
    else:
        click.echo(
            f"wrote {out}: held-out mIoU {record['held_out_miou']:.4f} in {record['train_seconds']:.0f} s"
        )


@main.command("eval")
@click.option("--model", "model_name", required=True, help="Zoo name or alias.")
@click.option("--weights", required=True, help="Checkpoint path, or 'demo'.")
@click.option(
    "--data",
    default="synthetic",
    show_default=True,
    help="'synthetic' (eval split) or a folder with images/, masks/ and classes.txt.",
)
@click.option(
    "--limit", type=click.IntRange(min=1), default=16, show_default=True, help="Synthetic images to evaluate."
)
@click.option(
    "--size", callback=_size, help="Synthetic image size (default: the checkpoint's training size)."
)
@click.option(
    "--model-arg", "model_args", multiple=True, callback=_model_args, help="Model option KEY=VALUE."
)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def evaluate_command(
    ctx: click.Context,
    model_name: str,
    weights: str,
    data: str,
    limit: int,
    size: tuple[int, int] | None,
    model_args: dict[str, Any],
    as_json: bool,
) -> None:
    """mIoU and per-class IoU of the PyTorch model on held-out data."""
    from segexport.training import evaluate_checkpoint

    ctx.meta["json"] = as_json
    report = evaluate_checkpoint(model_name, weights, data, limit, size, model_args)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(
        f"{report['model']} on {report['data']} ({report['images']} images): mIoU {report['miou']:.4f}"
    )
    for name, iou in report["per_class_iou"].items():
        click.echo(f"  {name:>12}: {'-' if iou is None else f'{iou:.4f}'}")


@main.command()
@click.option("--model", "model_name", help="Zoo name (exports first when the artifact has no model.onnx).")
@click.option("--artifacts", type=click.Path(path_type=Path), help="Artifact directory [artifacts/MODEL].")
@click.option("--weights", help="Checkpoint for the export step, or 'demo'.")
@click.option("--fp16", is_flag=True, help="Write model.fp16.onnx.")
@click.option("--int8", is_flag=True, help="Write model.int8.onnx (Q/DQ for TensorRT).")
@click.option(
    "--int8-cpu",
    is_flag=True,
    help="Write model.int8-cpu.onnx: asymmetric UINT8 Q/DQ for ONNX Runtime on x86 CPUs (not TensorRT).",
)
@click.option(
    "--cpu-isa",
    type=click.Choice(["auto", "vnni", "avx2"]),
    default="auto",
    show_default=True,
    help="INT8 arithmetic of the CPU --int8-cpu targets: vnni (exact; full-range weights) or avx2 "
    "(saturating; 7-bit weights, exact on both). auto: this machine's, found by running its kernels.",
)
@click.option("--calib", default="synthetic", show_default=True, help="'synthetic' or a folder of images.")
@click.option("--calib-size", type=_POSITIVE, default=64, show_default=True, help="Calibration images.")
@click.option(
    "--method",
    type=click.Choice(["minmax", "entropy", "percentile"]),
    default="percentile",
    show_default=True,
    help="Activation ranges. percentile: best or tied on every demo model and scheme (README: INT8 on CPUs).",
)
@click.option("--percentile", type=_Float(0.0, 100.0, min_open=True), default=99.99, show_default=True)
@click.option("--calib-cache", type=click.Path(path_type=Path), help="Reuse (or create) a calib.json.")
@click.option(
    "--min-agreement",
    type=_FRACTION,
    default=0.99,
    show_default=True,
    help="INT8 argmax agreement with PyTorch FP32 below which sensitive layers stay float.",
)
@click.option("--eval-images", type=_POSITIVE, default=16, show_default=True)
@click.option("--force", is_flag=True, help="Replace existing precision files.")
@click.option("--threads", type=_POSITIVE)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def quantize(
    ctx: click.Context,
    model_name: str | None,
    artifacts: Path | None,
    weights: str | None,
    fp16: bool,
    int8: bool,
    int8_cpu: bool,
    cpu_isa: str,
    calib: str,
    calib_size: int,
    method: str,
    percentile: float,
    calib_cache: Path | None,
    min_agreement: float,
    eval_images: int,
    force: bool,
    threads: int | None,
    as_json: bool,
) -> None:
    """FP16 and INT8 (Q/DQ) ONNX, calibrated and verified against PyTorch FP32."""
    from segexport.quantize import QuantizeRequest, quantize_artifact

    ctx.meta["json"] = as_json
    both = not (fp16 or int8 or int8_cpu)
    request = QuantizeRequest(
        artifacts=artifacts,
        model=model_name,
        weights=weights,
        fp16=fp16 or both,
        int8=int8 or both,
        int8_cpu=int8_cpu,
        cpu_isa=cpu_isa,
        calib=calib,
        calib_size=calib_size,
        method=method,
        percentile=percentile,
        calib_cache=calib_cache,
        min_agreement=min_agreement,
        eval_images=eval_images,
        force=force,
        threads=threads,
    )
    manifest = quantize_artifact(request, progress=_progress)
    summary = {"ok": True, "model": manifest["model"]["name"], "precisions": manifest["precisions"]}
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    for name, result in manifest["precisions"].items():
        miou = f", mIoU {result['miou']:.4f}" if "miou" in result else ""
        agreement = "" if result["agreement"] is None else f"agreement {result['agreement']:.4%}, "
        click.echo(f"  {name:>8}: {agreement}rel L2 {result['rel_l2']:.2e}{miou}")
        for line in _int8_details(result):
            click.echo(f"            {line}")


def _int8_details(result: dict[str, Any]) -> list[str]:
    """What quantize decided for an INT8 graph: its CPU target and the layers it kept float."""
    lines = []
    if "cpu_isa" in result:
        isa = result["cpu_isa"]
        lines.append(f"target CPU: {isa['target']} ({isa['meaning']}); this machine: {isa['detected_here']}")
    fallback = result.get("sensitivity_fallback") or []
    if fallback:
        layers = ", ".join(f"{f['node']} (+{f['benefit']:.2%})" for f in fallback)
        lines.append(
            f"kept float after the sensitivity analysis ({result['layers_measured']} layers measured): "
            f"{layers}; "
            f"{result['fallback_cost_share']:.1%} of the quantized layers' work, agreement "
            f"{result['agreement_without_fallback']:.4%} without them"
        )
    return lines


@main.command()
@click.option("--fp16", is_flag=True, help="Strongly typed engine from model.fp16.onnx (the default).")
@click.option("--int8", is_flag=True, help="Strongly typed engine from the Q/DQ model.int8.onnx.")
@click.option("--fp32", is_flag=True, help="Engine from model.onnx.")
@click.option("--model", "model_name", help="Zoo name; runs the missing earlier stages first.")
@click.option("--weights", help="Checkpoint for the export step [the shipped demo checkpoint if any].")
@click.option("--artifacts", type=click.Path(path_type=Path), help="Artifact directory [artifacts/MODEL].")
@click.option("--min-size", callback=_size, help="Smallest HxW of the profile [the ONNX's range].")
@click.option("--opt-size", callback=_size, help="HxW TensorRT tunes for [the export size].")
@click.option("--max-size", callback=_size, help="Largest HxW of the profile [the ONNX's range].")
@click.option("--max-batch", type=_POSITIVE, help="Largest batch of the profile [the ONNX's range].")
@click.option(
    "--workspace",
    "workspace_gib",
    type=_Float(min=0.0, min_open=True),
    help="Builder workspace limit in GiB.",
)
@click.option("--timing-cache", type=click.Path(path_type=Path), help="Timing cache to read and update.")
@click.option(
    "--opt-level", type=click.IntRange(0, 5), help="Builder optimization level 0-5 [TensorRT's default, 3]."
)
@click.option(
    "--dla-core", type=click.IntRange(min=0), help="Build for this DLA core (Jetson, TensorRT 10.x)."
)
@click.option("--gpu-fallback", is_flag=True, help="With --dla-core: run unsupported layers on the GPU.")
@click.option("--version-compatible", is_flag=True, help="Engine that later TensorRT releases can run.")
@click.option(
    "--hardware-compat",
    type=click.Choice(["same", "ampere+"]),
    default="same",
    show_default=True,
    help="GPUs the engine may run on.",
)
@click.option(
    "--legacy-fp16-flag", is_flag=True, help="TensorRT 10.x only: weakly typed FP16 from the FP32 ONNX."
)
@click.option("--force", is_flag=True, help="Replace an existing engine.")
@click.option(
    "--ignore-readiness", is_flag=True, help="Build even if check-trt finds errors for this TensorRT."
)
@click.option("--threads", type=_POSITIVE, help="CPU threads for the earlier stages and the check.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def trt(
    ctx: click.Context,
    fp16: bool,
    int8: bool,
    fp32: bool,
    model_name: str | None,
    weights: str | None,
    artifacts: Path | None,
    min_size: tuple[int, int] | None,
    opt_size: tuple[int, int] | None,
    max_size: tuple[int, int] | None,
    max_batch: int | None,
    workspace_gib: float | None,
    timing_cache: Path | None,
    opt_level: int | None,
    dla_core: int | None,
    gpu_fallback: bool,
    version_compatible: bool,
    hardware_compat: str,
    legacy_fp16_flag: bool,
    force: bool,
    ignore_readiness: bool,
    threads: int | None,
    as_json: bool,
) -> None:
    """Build a TensorRT engine (10.x or 11.x) from the verified precision ONNX, then check it."""
    from segexport.build import BuildOptions, BuildRequest, build_artifact, choose_precision
    from segexport.runtime.files import engine_file_name

    ctx.meta["json"] = as_json
    options = BuildOptions(
        precision=choose_precision(fp32=fp32, fp16=fp16, int8=int8),
        min_size=min_size,
        opt_size=opt_size,
        max_size=max_size,
        max_batch=max_batch,
        workspace_gib=workspace_gib,
        timing_cache=timing_cache,
        opt_level=opt_level,
        dla_core=dla_core,
        gpu_fallback=gpu_fallback,
        version_compatible=version_compatible,
        hardware_compat=hardware_compat,
        legacy_fp16_flag=legacy_fp16_flag,
    )
    if model_name is None and artifacts is None:
        model_name = "segformer-b0"
    request = BuildRequest(options, artifacts, model_name, weights, force, threads, ignore_readiness)
    manifest = build_artifact(request, progress=_progress)
    name = engine_file_name(options.precision)
    record = manifest["engines"][name]
    if as_json:
        click.echo(json.dumps({"ok": True, "engine": name, **record}, indent=2))
        return
    click.echo(
        f"wrote {name}: TensorRT {record['tensorrt']} on {record['gpu']['name']}, "
        f"{record['build_seconds']:.1f} s"
    )


@main.command("check-trt")
@click.option(
    "--artifacts", type=click.Path(path_type=Path), required=True, help="Artifact directory to check."
)
@click.option(
    "--target",
    type=click.Choice(["10.3", "10.x", "11.x", "all"]),
    default="all",
    show_default=True,
    help="TensorRT release(s) whose parser rules apply (10.x: the newest 10.x with rules, 11.x likewise).",
)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def check_trt(ctx: click.Context, artifacts: Path, target: str, as_json: bool) -> None:
    """Will TensorRT's ONNX parser take these graphs? Offline, per release; exit 1 on errors."""
    from segexport.readiness import check_artifacts, format_report

    ctx.meta["json"] = as_json
    report = check_artifacts(artifacts, target)
    if as_json:
        click.echo(json.dumps({"ok": report["errors"] == 0, **report}, indent=2))
    else:
        for line in format_report(report):
            click.echo(line)
    if report["errors"]:
        ctx.exit(1)


@main.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def doctor(ctx: click.Context, as_json: bool) -> None:
    """What this machine can do: TensorRT, CUDA and GPUs, ONNX Runtime providers, torch."""
    from segexport.doctor import environment_report, format_report

    ctx.meta["json"] = as_json
    report = environment_report()
    click.echo(json.dumps(report, indent=2) if as_json else format_report(report))


@main.command()
@click.option("--artifacts", type=click.Path(path_type=Path), help="Artifact directory [artifacts/MODEL].")
@click.option("--model", "model_name", help="Zoo name (exports first when artifacts/MODEL is empty).")
@click.option(
    "--weights", help="Reference checkpoint if the recorded path moved (sha256 must match), or 'demo'."
)
@click.option(
    "--against",
    type=click.Choice(["pytorch", "onnx"]),
    default="pytorch",
    show_default=True,
    help="Reference: the PyTorch model, or the FP32 model.onnx through ONNX Runtime.",
)
@click.option(
    "--data", default="synthetic", show_default=True, help="'synthetic', 'random', or a folder of images."
)
@click.option("--limit", type=click.IntRange(min=1), default=32, show_default=True, help="Images to check.")
@click.option("--shapes", callback=_shapes, help="Extra BxHxW random-input shapes, comma-separated.")
@click.option(
    "--precision",
    type=click.Choice(["all", "fp32", "fp16", "int8", "engine"]),
    default="all",
    show_default=True,
)
@click.option("--atol", type=_NON_NEGATIVE, help="Largest max abs error accepted (default: unchecked).")
@click.option("--rtol", type=_NON_NEGATIVE, help="Largest relative L2 error accepted [per precision].")
@click.option(
    "--min-agreement", type=_FRACTION, help="Smallest argmax agreement accepted (default: per precision)."
)
@click.option(
    "--report", type=click.Path(path_type=Path), help="Markdown report [ARTIFACTS/verify_report.md]."
)
@click.option("--threads", type=_POSITIVE, help="CPU threads for PyTorch and ONNX Runtime.")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON report on stdout.")
@click.pass_context
def verify(
    ctx: click.Context,
    artifacts: Path | None,
    model_name: str | None,
    weights: str | None,
    against: str,
    data: str,
    limit: int,
    shapes: list[InputShape] | None,
    precision: str,
    atol: float | None,
    rtol: float | None,
    min_agreement: float | None,
    report: Path | None,
    threads: int | None,
    as_json: bool,
) -> None:
    """Check every artifact against PyTorch on real data; exit 1 if any fails."""
    from segexport.errors import VerificationError
    from segexport.report import json_safe
    from segexport.verify import VerifyRequest, verify_artifacts

    ctx.meta["json"] = as_json
    request = VerifyRequest(
        artifacts=artifacts,
        model=model_name,
        weights=weights,
        against=against,
        data=data,
        limit=limit,
        shapes=shapes,
        precision=precision,
        atol=atol,
        rtol=rtol,
        min_agreement=min_agreement,
        report=report,
        threads=threads,
    )
    result = verify_artifacts(request, progress=_progress)
    if as_json:
        click.echo(json.dumps(json_safe(result.to_dict()), indent=2))
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


@main.command("run")
@click.option(
    "--artifacts",
    type=click.Path(path_type=Path),
    required=True,
    help="Artifact directory (from segexport onnx/quantize/trt).",
)
@click.option(
    "--input", "source", required=True, help="An image, a folder of images, a video file or a camera index."
)
@click.option(
    "--output",
    type=click.Path(path_type=Path),
    required=True,
    help="A folder (images: masks/ and overlays/) or a video file (.mp4, .mkv, ...).",
)
@click.option("--overlay", is_flag=True, help="Also write overlays (images) / write an overlay video.")
@click.option("--tta", is_flag=True, help="Average over scales 0.75/1/1.25 and horizontal flips.")
@click.option("--crf", is_flag=True, help="Refine masks with a dense-CRF approximation (slow).")
@click.option(
    "--backend",
    type=click.Choice(["auto", *BACKEND_CHOICES]),
    default="auto",
    show_default=True,
)
@click.option(
    "--precision", type=click.Choice(["auto", "fp32", "fp16", "int8"]), default="auto", show_default=True
)
@click.option(
    "--resize",
    "resize_mode",
    type=click.Choice(["fixed", "keep-aspect", "native"]),
    default="fixed",
    show_default=True,
    help="fixed: the export size; keep-aspect: scale and pad; native: pad only.",
)
@click.option(
    "--batch", type=click.IntRange(min=1), default=1, show_default=True, help="Frames per inference."
)
@click.option(
    "--color",
    type=click.Choice(["rgb", "bgr"]),
    help="Colour order of camera frames [the camera library's].",
)
@click.option("--threads", type=_POSITIVE, help="CPU threads for ONNX Runtime.")
@click.option("--device", type=click.IntRange(min=0), default=0, show_default=True, help="GPU index.")
@click.option("--force", is_flag=True, help="Replace an existing output.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
@click.pass_context
def run(
    ctx: click.Context,
    artifacts: Path,
    source: str,
    output: Path,
    overlay: bool,
    tta: bool,
    crf: bool,
    backend: str,
    precision: str,
    resize_mode: str,
    batch: int,
    color: str | None,
    threads: int | None,
    device: int,
    force: bool,
    as_json: bool,
) -> None:
    """Segment an image, a folder, a video or a camera with an artifact; masks at the input's size."""
    from segexport.runtime.pipeline import run_media
    from segexport.runtime.segmenter import TTA, Segmenter

    ctx.meta["json"] = as_json
    segmenter = Segmenter.load(
        artifacts,
        backend,
        precision,
        device,
        threads,
        resize=resize_mode,
        tta=TTA() if tta else None,
        refine="crf" if crf else None,
    )
    with segmenter:
        _progress(segmenter.describe())
        summary = run_media(segmenter, source, output, overlay, force, batch, color, progress=_frame_progress)
    click.echo("", err=True)
    if as_json:
        click.echo(json.dumps({"ok": True, **summary.to_dict()}, indent=2))
    else:
        click.echo(
            f"{summary.frames} frames in {summary.seconds:.1f} s ({summary.fps:.1f} fps) on "
            f"{summary.backend} {summary.precision}; wrote {summary.output}"
        )


def _frame_progress(done: int, total: int | None, fps: float) -> None:
    """A progress bar on a terminal; a line every 50 frames (and at the end) in logs."""
    tty = sys.stderr.isatty()
    if not (tty or done == total or done % 50 == 0):
        return
    if total:
        filled = 30 * done // total
        text = f"  [{'#' * filled}{'.' * (30 - filled)}] {done}/{total} frames, {fps:.1f} fps"
    else:
        text = f"  {done} frames, {fps:.1f} fps"
    click.echo(text + ("\r" if tty else "\n"), err=True, nl=False)


@main.command()
@click.option("--artifacts", type=click.Path(path_type=Path), required=True, help="Artifact directory.")
@click.option("--repo", type=click.Path(path_type=Path), required=True, help="Triton model repository.")
@click.option("--name", help="Model name [MODEL-FORMAT, e.g. segformer-b0-onnx-fp16].")
@click.option(
    "--format",
    "format_name",
    type=click.Choice(["onnx-fp32", "onnx-fp16", "onnx-int8", "engine"]),
    default="onnx-fp32",
    show_default=True,
    help="Which artifact file to serve (ONNX Runtime backend, or TensorRT plan).",
)
@click.option("--engine", help="Engine file when the artifact has several (e.g. model.fp16.engine).")
@click.option("--max-batch", type=int, help="max_batch_size [the artifact's or profile's largest batch].")
@click.option("--instances", type=_POSITIVE, default=1, show_default=True, help="Model instances per device.")
@click.option("--kind", type=click.Choice(["gpu", "cpu"]), default="gpu", show_default=True)
@click.option("--dynamic-batching", is_flag=True, help="Let Triton combine requests into batches.")
@click.option("--preferred-batch", help="Preferred batch sizes, e.g. 4,8 (implies --dynamic-batching).")
@click.option(
    "--max-queue-delay-us",
    type=click.IntRange(min=0),
    help="How long a request may wait for a batch (implies it).",
)
@click.option(
    "--ort-trt",
    type=click.Choice(["fp16", "int8"]),
    help="ONNX Runtime's TensorRT accelerator at this precision (int8: the Q/DQ model.int8.onnx).",
)
@click.option("--cuda-graphs", is_flag=True, help="CUDA graphs for a plan, at the served size.")
@click.option("--ensemble", is_flag=True, help="Add Python pre/post-processing: raw images in, masks out.")
@click.option("--size", callback=_size, help="HxW the ensemble resizes images to [the export size].")
@click.option("--force", is_flag=True, help="Replace existing model directories.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def triton(
    ctx: click.Context,
    artifacts: Path,
    repo: Path,
    name: str | None,
    format_name: str,
    engine: str | None,
    max_batch: int | None,
    instances: int,
    kind: str,
    dynamic_batching: bool,
    preferred_batch: str | None,
    max_queue_delay_us: int | None,
    ort_trt: str | None,
    cuda_graphs: bool,
    ensemble: bool,
    size: tuple[int, int] | None,
    force: bool,
    as_json: bool,
) -> None:
    """A Triton Inference Server model repository for an artifact, checked offline."""
    from segexport.serving.triton import TritonRequest, write_repository

    ctx.meta["json"] = as_json
    try:
        preferred = tuple(int(part) for part in (preferred_batch or "").split(",") if part.strip())
    except ValueError:
        raise SegexportError(f"--preferred-batch {preferred_batch!r}: give sizes like 4,8") from None
    request = TritonRequest(
        artifacts=artifacts,
        repo=repo,
        name=name,
        format=format_name,
        engine=engine,
        max_batch=max_batch,
        instances=instances,
        kind=kind,
        dynamic_batching=dynamic_batching,
        preferred_batch=preferred,
        max_queue_delay_us=max_queue_delay_us,
        ort_trt=ort_trt,
        cuda_graphs=cuda_graphs,
        ensemble=ensemble,
        size=size,
        force=force,
    )
    summary = write_repository(request, progress=_progress)
    if as_json:
        click.echo(json.dumps({"ok": True, **summary}, indent=2))
        return
    for model in summary["models"]:
        click.echo(f"wrote {Path(summary['repository']) / model['name']}")
    click.echo(f"checked: {summary['checked']}")
    for note in summary["notes"]:
        click.echo(f"note: {note}")


@main.command()
@click.option("--artifacts", type=click.Path(path_type=Path), help="Benchmark this artifact as it is.")
@click.option("--model", "model_name", help="Zoo name: export (and quantize) it first, then benchmark.")
@click.option(
    "--weights", help="Checkpoint for --model, or 'demo' (default: seeded random weights, timed only)."
)
@click.option(
    "--formats",
    default="pytorch,onnx-fp32,onnx-fp16,onnx-int8,onnx-int8-cpu,engine-*",
    show_default=True,
    help="Comma-separated: pytorch, onnx-fp32, onnx-fp16, onnx-int8, onnx-int8-cpu, engine-fp32/fp16/int8.",
)
@click.option(
    "--backends",
    default="ort-cpu,ort-cuda,ort-trt,tensorrt",
    show_default=True,
    help="ONNX files run on the ort-* backends, engines on tensorrt; PyTorch is the CPU baseline.",
)
@click.option(
    "--scenario",
    type=click.Choice(["single-stream", "multi-stream", "offline"]),
    default="single-stream",
    show_default=True,
    help="After MLPerf's edge scenarios: p90 at batch 1; p99 of multi-frame queries; best-batch throughput.",
)
@click.option(
    "--size", callback=_size, help="HxW [the checkpoint's training size, else the model's default]."
)
@click.option(
    "--batch",
    "batches",
    help="Frames per query (multi-stream) [4], or batch sizes to try (offline) [1,4].",
)
@click.option("--threads", type=_POSITIVE, help="CPU threads for every format [usable cores].")
@click.option("--warmup", type=click.IntRange(min=0), default=3, show_default=True)
@click.option("--runs", type=_POSITIVE, help="Timed runs per format (instead of --seconds).")
@click.option("--seconds", type=_Float(min=0.0, min_open=True), help="Timed seconds per format [2].")
@click.option("--data", default="synthetic", show_default=True, help="'synthetic' or a labelled folder.")
@click.option(
    "--eval-images", type=_POSITIVE, default=8, show_default=True, help="Images for mIoU/agreement."
)
@click.option("--report", type=click.Path(path_type=Path), help="Also write the table as Markdown (.md).")
@click.option(
    "--plot", type=click.Path(path_type=Path), help="Latency vs mIoU plot (.png; segexport[bench])."
)
@click.option("--force", is_flag=True, help="Replace an existing --report/--plot file.")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON result only.")
@click.pass_context
def bench(
    ctx: click.Context,
    artifacts: Path | None,
    model_name: str | None,
    weights: str | None,
    formats: str,
    backends: str,
    scenario: str,
    size: tuple[int, int] | None,
    batches: str | None,
    threads: int | None,
    warmup: int,
    runs: int | None,
    seconds: float | None,
    data: str,
    eval_images: int,
    report: Path | None,
    plot: Path | None,
    force: bool,
    as_json: bool,
) -> None:
    """One table of every format and backend: status, size, latency percentiles, FPS, memory, mIoU."""
    from segexport.bench import BenchRequest, check_request, parse_batches, run_bench
    from segexport.bench.report import check_outputs, format_report, write_plot, write_report
    from segexport.report import json_safe

    ctx.meta["json"] = as_json
    request = BenchRequest(
        artifacts=artifacts,
        model=model_name,
        weights=weights,
        formats=formats,
        backends=backends,
        scenario=scenario,
        size=size,
        batches=None if batches is None else parse_batches(batches),
        threads=threads,
        warmup=warmup,
        runs=runs,
        seconds=seconds,
        data=data,
        eval_images=eval_images,
    )
    check_request(request)
    check_outputs(report, plot, force)
    if plot is not None:
        import matplotlib  # noqa: F401  (the [bench] extra, checked before minutes of work)
    result = run_bench(request, progress=_progress)
    if report is not None:
        write_report(result, report)
    if plot is not None:
        write_plot(result, plot)
    if as_json:
        click.echo(json.dumps(json_safe(result.to_dict()), indent=2))
        return
    click.echo(format_report(result), nl=False)
    for path in (report, plot):
        if path is not None:
            click.echo(f"wrote {path}")


def export_summary(manifest: dict[str, Any], directory: Path) -> dict[str, Any]:
    """The compact view of an export that `--json` prints."""
    fp32 = manifest["verification"]["fp32"]
    return {
        "ok": fp32["passed"],
        "model": manifest["model"]["name"],
        "artifact": str(directory),
        "onnx": str(directory / "model.onnx"),
        "inputs": manifest["inputs"],
        "outputs": manifest["outputs"],
        "dynamic_axes": manifest["dynamic_axes"],
        "simplified": manifest["onnx"]["simplified"],
        "nodes": manifest["onnx"]["nodes"],
        "seconds": manifest["seconds"],
        "head": manifest.get("head"),
        "verification": [
            {
                "shape": shape["shape"],
                "passed": shape["passed"],
                "error": shape["error"],
                "outputs": [
                    # a mask's class ids have no error norms (NaN): null in JSON
                    {
                        k: None if out[k] != out[k] else out[k]
                        for k in ("name", "max_abs", "rel_l2", "agreement", "passed")
                    }
                    for out in shape["outputs"]
                ],
            }
            for shape in fp32["shapes"]
        ],
    }


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
