"""The results of `segexport verify` and their reports: Markdown for people, JSON for CI,
a PNG per artifact.

They say the same things: REPORT.md (a table per artifact, the localisation of failures),
REPORT.json (the same content, NaN/Inf as null), and REPORT_<file>.png, the artifact's worst
image (lowest argmax agreement): input | reference mask | artifact mask | disagreement.
All are written atomically, so CI never reads half a report.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from segexport.errors import SegexportError
from segexport.runtime.artifacts import atomic_write
from segexport.runtime.compare import OutputComparison, ShapeResult, Tolerance
from segexport.runtime.media import default_palette
from segexport.runtime.outputs import check_output
from segexport.runtime.preprocessing import to_pixels

if TYPE_CHECKING:  # it imports onnx: the torch-free verify writes reports on the base install
    from segexport.localize import Localization


@dataclass
class WorstImage:
    """The image with the lowest argmax agreement, kept to draw and to localise on."""

    index: int
    agreement: float
    image: np.ndarray = field(repr=False)  # the preprocessed input [1, 3, H, W]
    reference: np.ndarray = field(repr=False)  # label maps [H', W']
    candidate: np.ndarray = field(repr=False)
    png: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "agreement": self.agreement, "png": self.png}


@dataclass
class ArtifactResult:
    file: str
    precision: str
    status: str  # passed | failed | skipped
    tolerance: Tolerance | None = None
    runner: str | None = None
    reason: str | None = None  # why it was skipped, or the error that stopped it
    outputs: list[OutputComparison] = field(default_factory=list)  # over the whole data set
    shapes: list[ShapeResult] = field(default_factory=list)  # --shapes, random inputs
    worst: WorstImage | None = None
    localization: Localization | None = None  # when it failed and could be localised
    seconds: float = 0.0

    def failures(self) -> list[str]:
        lines = [] if self.reason is None or self.status == "skipped" else [self.reason]
        lines += [f"output {o.name}: {'; '.join(o.reasons)}" for o in self.outputs if not o.passed]
        lines += [
            f"shape {shape.shape}: {shape.error or 'outside the tolerance'}"
            for shape in self.shapes
            if not shape.passed
        ]
        return lines

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "precision": self.precision,
            "status": self.status,
            "reason": self.reason,
            "runner": self.runner,
            "tolerance": None if self.tolerance is None else asdict(self.tolerance),
            "outputs": [asdict(o) for o in self.outputs],
            "shapes": [asdict(s) for s in self.shapes],
            "worst_image": None if self.worst is None else self.worst.to_dict(),
            "localization": None if self.localization is None else self.localization.to_dict(),
            "failures": self.failures(),
            "seconds": round(self.seconds, 2),
        }


@dataclass
class ParityReport:
    model: str
    directory: Path
    against: str
    reference: str
    data: dict[str, Any]
    artifacts: list[ArtifactResult]
    preprocessing: dict[str, Any]
    seconds: float = 0.0
    files: dict[str, Any] = field(default_factory=dict)  # the reports written

    @property
    def passed(self) -> bool:
        return all(a.status != "failed" for a in self.artifacts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.passed,
            "model": self.model,
            "artifacts_dir": str(self.directory),
            "against": self.against,
            "reference": self.reference,
            "data": self.data,
            "seconds": round(self.seconds, 2),
            "artifacts": [a.to_dict() for a in self.artifacts],
            "reports": self.files,
        }


def picture_path(markdown: Path, file: str) -> Path:
    return markdown.with_name(f"{markdown.stem}_{file.replace('.', '_')}.png")


def check_report_paths(markdown: Path, files: Iterable[str], reads: Iterable[Path | None]) -> None:
    """The output policy for verify's reports, before any work: each may replace an earlier
    report file, never a directory, a symlink, or anything verify reads (`reads`)."""
    reads = list(reads)
    paths = [markdown, markdown.with_suffix(".json"), *(picture_path(markdown, file) for file in files)]
    for path in paths:
        check_output(path, True, directory=False, reads=reads, option="--report")


def finish_report(report: ParityReport, started: float, markdown: Path) -> ParityReport:
    """Stamp the seconds since `started` and write the reports: the one ending of every parity check."""
    report.seconds = time.perf_counter() - started
    write_reports(report, markdown)
    return report


def write_reports(report: ParityReport, markdown: Path) -> None:
    """REPORT.md, REPORT.json and one PNG per artifact with a worst image; paths go in `report.files`."""
    try:
        markdown.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise SegexportError(f"cannot write the report to {markdown.parent}: {error}") from error
    pictures = []
    for artifact in report.artifacts:
        if artifact.worst is None:
            continue
        path = picture_path(markdown, artifact.file)
        atomic_write(path, partial(_save_png, worst_image_panels(artifact.worst, report.preprocessing)))
        artifact.worst.png = path.name
        pictures.append(str(path))
    data_path = markdown.with_suffix(".json")
    report.files = {"markdown": str(markdown), "json": str(data_path), "png": pictures}
    content = json_safe(report.to_dict())
    atomic_write(data_path, lambda temp: temp.write_text(json.dumps(content, indent=2) + "\n"))
    atomic_write(markdown, lambda temp: temp.write_text(render_markdown(report)))


def json_safe(value: Any) -> Any:
    """Plain JSON: NaN and Inf become null (their counts are reported beside them)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


# --------------------------------------------------------------------------- PNG


def worst_image_panels(worst: WorstImage, preprocessing: dict[str, Any]) -> np.ndarray:
    """input | reference mask | artifact mask | disagreement (red), side by side, RGB uint8."""
    from PIL import Image

    picture = to_pixels(preprocessing, worst.image[0])
    height, width = picture.shape[:2]

    def full_size(array: np.ndarray) -> np.ndarray:
        return np.asarray(Image.fromarray(array).resize((width, height), Image.Resampling.NEAREST))

    colours = default_palette()
    reference = full_size(colours[worst.reference.astype(np.int64) % 256])
    candidate = full_size(colours[worst.candidate.astype(np.int64) % 256])
    differs = full_size((worst.reference != worst.candidate).astype(np.uint8) * 255) > 0
    disagreement = np.repeat((picture.mean(axis=2, keepdims=True) * 0.4).astype(np.uint8), 3, axis=2)
    disagreement[differs] = (255, 0, 0)
    return np.concatenate([picture, reference, candidate, disagreement], axis=1)


def _save_png(picture: np.ndarray, path: Path) -> None:  # path: a temp name without .png
    from PIL import Image

    Image.fromarray(picture).save(path, format="PNG")


# --------------------------------------------------------------------------- Markdown


def render_markdown(report: ParityReport) -> str:
    data = report.data
    verdict = "PASSED" if report.passed else "FAILED"
    lines = [
        f"# segexport verify: {report.model} — {verdict}",
        "",
        f"- artifacts: `{report.directory}`",
        f"- reference: {report.reference} (`--against {report.against}`)",
        f"- data: {data['source']}, {data['images']} images at {data['size'][0]}x{data['size'][1]}, "
        f"ground truth: {'yes' if data['labels'] else 'no'}" + (f" ({data['note']})" if data["note"] else ""),
        f"- time: {report.seconds:.1f} s",
        "",
        "| file | precision | result | argmax agreement | rel L2 | mIoU vs labels (artifact / reference) |",
        "|---|---|---|---|---|---|",
    ]
    for artifact in report.artifacts:
        main = _main_output(artifact)
        result = artifact.status if not artifact.reason else f"{artifact.status}: {artifact.reason}"
        if main is None:
            lines.append(f"| `{artifact.file}` | {artifact.precision} | {result} | - | - | - |")
            continue
        lines.append(
            f"| `{artifact.file}` | {artifact.precision} | {result} | {_percent(main.agreement)} | "
            f"{_number(main.rel_l2)} | {_number(main.miou)} / {_number(main.miou_reference)} |"
        )
    for artifact in report.artifacts:
        if artifact.status != "skipped":
            lines += ["", *_artifact_section(artifact, data)]
    return "\n".join(lines) + "\n"


def _main_output(artifact: ArtifactResult) -> OutputComparison | None:
    outputs = [o for o in artifact.outputs if o.agreement is not None] or artifact.outputs
    return outputs[0] if outputs else None


def _artifact_section(artifact: ArtifactResult, data: dict[str, Any]) -> list[str]:
    tolerance = artifact.tolerance
    lines = [f"## `{artifact.file}` ({artifact.precision}): {artifact.status}", ""]
    if artifact.runner:
        lines.append(f"- runner: {artifact.runner}")
    if tolerance is not None:
        bounds = [f"rel L2 <= {tolerance.max_rel_l2:g}"]
        if tolerance.min_agreement is not None:
            bounds.append(f"argmax agreement >= {tolerance.min_agreement:.2%}")
        if tolerance.max_abs is not None:
            bounds.append(f"max abs <= {tolerance.max_abs:g}")
        lines.append(f"- thresholds: {', '.join(bounds)}; no NaN/Inf")
    for failure in artifact.failures():
        lines.append(f"- **fails**: {failure}")
    lines += [
        "",
        "| shape | output | max abs | mean abs | rel L2 | cosine | agreement | mIoU vs reference | "
        "mIoU vs labels (artifact / reference) | NaN / Inf | result |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    data_shape = f"data {data['images']}x{data['size'][0]}x{data['size'][1]}"
    rows = [(data_shape, out) for out in artifact.outputs]
    rows += [(f"{shape.shape} random", out) for shape in artifact.shapes for out in shape.outputs]
    for shape_name, out in rows:
        lines.append(
            f"| {shape_name} | {out.name} | {_number(out.max_abs)} | {_number(out.mean_abs)} | "
            f"{_number(out.rel_l2)} | {_number(out.cosine, 6)} | {_percent(out.agreement)} | "
            f"{_number(out.miou_vs_reference)} | {_number(out.miou)} / {_number(out.miou_reference)} | "
            f"{out.nan} / {out.nonfinite - out.nan} | {'pass' if out.passed else 'FAIL'} |"
        )
    for shape in artifact.shapes:
        if shape.error:
            lines.append(f"| {shape.shape} random | - | {shape.error} | | | | | | | | FAIL |")
    if artifact.worst is not None:
        worst = artifact.worst
        lines += [
            "",
            f"Worst image: #{worst.index}, argmax agreement {_percent(worst.agreement)} "
            "(input | reference | artifact | disagreement in red):",
            "",
            f"![worst image of {artifact.file}]({worst.png})",
        ]
    if artifact.localization is not None:
        lines += ["", *_localization_section(artifact.localization)]
    return lines


def _localization_section(found: Localization) -> list[str]:
    lines = [f"### Localisation against {found.reference or 'the FP32 reference'}", ""]
    if found.note and found.first_divergence is None and not found.largest_added:
        return [*lines, found.note]
    lines.append(f"{found.tensors_compared} intermediate tensors compared on {found.images} images.")
    node = found.first_divergence
    if node is None:
        lines += ["", found.note or "no node stands out"]
    else:
        module = f", module `{node.module}`" if node.module else ""
        nonfinite = f", {node.nan} NaN / {node.inf} Inf" if node.nan or node.inf else ""
        lines += [
            "",
            f"**First divergence: node `{node.node}` ({node.op_type}){module}** — output `{node.tensor}`: "
            f"rel L2 {_number(node.rel_l2)} (its inputs: {_number(node.input_rel_l2)}), "
            f"max abs {_number(node.max_abs)}{nonfinite}.",
        ]
        for weight in node.weights:
            lines.append(
                f"- its weight `{weight['name']}` differs from the reference: rel L2 "
                f"{_number(weight['rel_l2'])}, max abs {_number(weight['max_abs'])}, {weight['nan']} NaN"
            )
    if found.largest_added:
        lines += [
            "",
            "| largest error added by | op | module | rel L2 | inputs' rel L2 | max abs |",
            "|---|---|---|---|---|---|",
        ]
        for item in found.largest_added:
            lines.append(
                f"| `{item.node}` | {item.op_type} | {item.module or '-'} | {_number(item.rel_l2)} | "
                f"{_number(item.input_rel_l2)} | {_number(item.max_abs)} |"
            )
    return lines


def _number(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "-"
    if not math.isfinite(value):
        return str(value)
    return f"{value:.{digits}g}"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.4%}"
