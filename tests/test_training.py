"""Training loop, evaluation, and the shipped demo checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from segexport.cli import main
from segexport.errors import SegexportError
from segexport.training import TrainConfig, evaluate_checkpoint, train
from segexport.weights import checkpoint_record, demo_checkpoint

DEMO_MODELS = ["segformer-b0", "unet-small", "deeplabv3plus-mobilenetv2"]


def test_train_runs_a_short_epoch_and_saves_a_loadable_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "tiny.safetensors"
    record = train(
        TrainConfig(
            "unet-small", out, epochs=1, steps_per_epoch=2, batch_size=2, size=(32, 32), eval_images=2
        )
    )
    assert out.is_file()
    assert record["history"][0]["epoch"] == 1
    assert 0.0 <= record["held_out_miou"] <= 1.0
    assert checkpoint_record(out)["class_names"][0] == "background"
    report = evaluate_checkpoint("unet-small", out, limit=2)
    assert report["size"] == [32, 32] and 0.0 <= report["miou"] <= 1.0


def test_train_cli_refuses_overwrite_and_bad_sizes(tmp_path: Path) -> None:
    out = tmp_path / "x.safetensors"
    out.write_bytes(b"keep me")
    result = CliRunner().invoke(main, ["train", "--model", "unet-small", "--out", str(out)])
    assert result.exit_code == 2 and "already exists" in result.stderr
    assert out.read_bytes() == b"keep me"
    result = CliRunner().invoke(
        main, ["train", "--model", "unet-small", "--size", "40x40", "--out", str(tmp_path / "y.safetensors")]
    )
    assert result.exit_code == 2 and "divisible by its output stride 16" in result.stderr


def test_unknown_demo_is_a_clear_error() -> None:
    with pytest.raises(SegexportError, match="no demo checkpoint for setr; shipped:"):
        evaluate_checkpoint("setr", "demo")


@pytest.mark.parametrize("name", DEMO_MODELS)
def test_shipped_demo_checkpoints_reach_miou(name: str) -> None:
    path = demo_checkpoint(name)
    assert path.stat().st_size <= 16 * 1024 * 1024
    record = checkpoint_record(path)
    assert record is not None and record["held_out_miou"] >= 0.80  # the recipe's own held-out figure
    report = evaluate_checkpoint(name, "demo", limit=16)
    assert report["images"] == 16
    assert report["miou"] >= 0.75


def test_eval_cli_json_prints_miou() -> None:
    result = CliRunner().invoke(
        main, ["eval", "--model", "segformer-b0", "--weights", "demo", "--data", "synthetic", "--json"]
    )
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["model"] == "segformer-b0" and report["miou"] >= 0.75
    assert set(report["per_class_iou"]) == set(
        checkpoint_record(demo_checkpoint("segformer-b0"))["class_names"]
    )


def test_export_with_demo_weights_carries_class_names(tmp_path: Path) -> None:
    from segexport.export import ExportRequest, export_onnx

    manifest = export_onnx(ExportRequest("unet-small", weights="demo", size=(64, 64), out_dir=tmp_path / "a"))
    assert manifest["model"]["class_names"][:3] == ["background", "stripes", "checkers"]
    assert manifest["model"]["num_classes"] == 7
    assert manifest["model"]["trained"]["held_out_miou"] >= 0.80
    agreements = [o["agreement"] for s in manifest["verification"]["fp32"]["shapes"] for o in s["outputs"]]
    assert min(agreements) >= 0.999


def test_folder_evaluation_matches_synthetic_on_the_same_images(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    from segexport.data import SYNTHETIC_CLASSES, SyntheticScenes

    scenes = SyntheticScenes("eval", 4, (128, 128))
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for index, (image, labels) in enumerate(scenes):
        Image.fromarray(image).save(tmp_path / "images" / f"{index}.png")
        Image.fromarray(labels.astype(np.uint8), mode="L").save(tmp_path / "masks" / f"{index}.png")
    (tmp_path / "classes.txt").write_text("\n".join(SYNTHETIC_CLASSES))
    from_folder = evaluate_checkpoint("unet-small", "demo", data=str(tmp_path))
    from_generator = evaluate_checkpoint("unet-small", "demo", limit=4, size=(128, 128))
    assert from_folder["images"] == 4
    assert from_folder["miou"] == pytest.approx(from_generator["miou"], abs=1e-9)
