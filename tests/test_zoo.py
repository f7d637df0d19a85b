"""The model zoo: names and aliases resolve, architectures match the papers,
logits come at the input's size.
"""

from __future__ import annotations

import pytest
import torch

from segexport.errors import SegexportError
from segexport.shapes import InputShape
from segexport.zoo import count_parameters, create_model, get_spec, list_models
from segexport.zoo.setr import SETR
from segexport.zoo.unet import UNet

REQUIRED = [
    "fcn",
    "fcn8s",
    "unet",
    "attention-unet",
    "deeplabv3plus",
    "deeplabv3plus-mobilenetv2",
    "setr",
    "segformer",
    "segformer-b1",
    "segformer-b2",
    "segformer-b3",
    "segformer-b4",
    "segformer-b5",
    "maskrcnn-mask-head",
    "panoptic-fpn",
]

# SegFormer paper, table 1 (ADE20K heads, 150 classes), millions of parameters.
SEGFORMER_PAPER_PARAMS = {"b0": 3.8, "b1": 13.7, "b2": 27.5, "b3": 47.3, "b4": 64.1, "b5": 84.7}


@pytest.mark.parametrize("name", REQUIRED)
def test_required_names_resolve(name: str) -> None:
    assert get_spec(name).name in list_models()


def test_segformer_alias_is_b0() -> None:
    assert get_spec("segformer").name == "segformer-b0"


@pytest.mark.parametrize("variant", sorted(SEGFORMER_PAPER_PARAMS))
def test_segformer_parameter_counts_match_paper(variant: str) -> None:
    params = count_parameters(f"segformer-{variant}", num_classes=150) / 1e6
    assert params == pytest.approx(SEGFORMER_PAPER_PARAMS[variant], rel=0.03)


def test_deeplab_resnet_channels_as_seed_expects() -> None:
    model = create_model("deeplabv3plus")
    low, high = model.backbone(torch.randn(1, 3, 64, 64))
    assert low.shape[1:] == (256, 16, 16)  # stride 4, 256 channels
    assert high.shape[1:] == (2048, 4, 4)  # output stride 16, 2048 channels


def test_unknown_model_suggests_close_names() -> None:
    with pytest.raises(SegexportError, match=r"did you mean.*segformer"):
        get_spec("segfromer")


def test_bad_model_option_is_a_user_error() -> None:
    with pytest.raises(SegexportError, match="bad model option"):
        create_model("unet", no_such_option=3)


@pytest.mark.parametrize("name", [n for n in list_models() if get_spec(n).input_kind == "image"])
def test_logits_at_input_resolution(name: str) -> None:
    spec = get_spec(name)
    options = {"fc_channels": 16} if spec.family == "fcn" else {}
    model = create_model(name, num_classes=5, **options)
    image = spec.example_inputs(InputShape(2, 64, 96), 5)["image"]
    with torch.no_grad():
        out = model(image)
    first = out[0] if isinstance(out, tuple) else out
    assert first.shape == (2, 5, 64, 96)


def test_setr_runs_at_sizes_other_than_its_position_grid() -> None:
    """Seed bug: pos_embed was tied to img_size and the token grid assumed a square."""
    model = SETR(num_classes=3, img_size=64, embed_dim=32, depth=1, num_heads=2).eval()
    with torch.no_grad():
        native = model(torch.randn(1, 3, 64, 64))
        other = model(torch.randn(1, 3, 96, 160))
    assert native.shape == (1, 3, 64, 64)
    assert other.shape == (1, 3, 96, 160)


def test_setr_position_embedding_is_identity_at_native_grid() -> None:
    model = SETR(num_classes=3, img_size=64, embed_dim=32, depth=1, num_heads=2)
    resized = model.position_embedding(4, 4)
    assert torch.allclose(resized, model.pos_embed, atol=1e-6)


def test_segformer_can_keep_quarter_resolution() -> None:
    model = create_model("segformer-b0", num_classes=4, full_resolution=False)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 4, 16, 16)


def test_unet_features_default_is_not_shared_mutable_state() -> None:
    """Seed bug: a mutable list default shared between instances."""
    first = UNet(num_classes=2, features=(8, 16, 32, 64, 128))
    second = UNet(num_classes=2)
    assert first.final_conv.in_channels == 8
    assert second.final_conv.in_channels == 64


def test_mask_head_selects_the_labelled_class() -> None:
    model = create_model("maskrcnn-mask-head", num_classes=4)
    features = torch.randn(3, 256, 14, 14)
    labels = torch.tensor([0, 3, 1])
    with torch.no_grad():
        masks = model(features, labels)
        every_class = model.mask_head(features)
    assert masks.shape == (3, 1, 28, 28)
    for row, label in enumerate(labels.tolist()):
        assert torch.equal(masks[row, 0], every_class[row, label])


def test_panoptic_outputs_are_named_and_shaped() -> None:
    spec = get_spec("panoptic-fpn")
    model = create_model("panoptic-fpn", num_classes=7)
    with torch.no_grad():
        outputs = model(torch.randn(1, 3, 64, 64))
    assert len(outputs) == len(spec.output_names) == 5
    assert outputs[0].shape == (1, 7, 64, 64)
    assert [o.shape[-1] for o in outputs[1:]] == [16, 8, 4, 2]


def test_size_rule_names_the_stride() -> None:
    with pytest.raises(SegexportError, match="divisible by its output stride 32; got 500x512"):
        get_spec("segformer").check_size(500, 512)
