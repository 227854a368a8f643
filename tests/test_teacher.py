"""The embedded benchmark's shipped teacher: its card, its size, and its measured mIoU."""

import pytest

from kdlib import shapes
from kdlib.checkpoints import load_model
from kdlib.config import SHAPES_TEACHER
from kdlib.data import build_dataset
from kdlib.evaluate import evaluate_augmented, evaluate_checkpoint, evaluate_model
from kdlib.models import CustomSegmentationModel, count_parameters
from kdlib.teacher import read_card


def test_card_describes_the_checkpoint():
    card = read_card()
    for key in ("architecture", "model", "benchmark", "command", "val_miou", "train_seconds", "recipe"):
        assert key in card
    assert card["benchmark"]["version"] == shapes.BENCHMARK_VERSION
    assert SHAPES_TEACHER.stat().st_size <= 25 * 1024 * 1024
    model = load_model(SHAPES_TEACHER)
    assert count_parameters(model) == card["parameters"]
    assert count_parameters(model) >= 3 * count_parameters(CustomSegmentationModel(21))


@pytest.mark.slow
def test_shipped_teacher_reaches_its_card_on_a_regenerated_val_split(tmp_path):
    card = read_card()
    bench = card["benchmark"]
    # val images are a pure function of (seed, split, index): the other splits can be tiny
    root = _val_split_of_the_card(tmp_path, bench)
    result = evaluate_checkpoint(SHAPES_TEACHER, dataset="shapes", data_root=str(root), device="cpu")
    assert result["images"] == bench["splits"]["val"]
    assert result["miou"] >= card["val_miou"] - 0.01


@pytest.mark.slow
def test_the_students_colour_jitter_preserves_labels(tmp_path):
    """The shipped teacher scores the same on val images through the students' colour jitter
    (Table 2: brightness, contrast, saturation ±20 %, hue ±36°) as on clean ones: the jitter
    moves no object into another class."""
    card = read_card()
    bench = card["benchmark"]
    root = _val_split_of_the_card(tmp_path, bench)
    model = load_model(SHAPES_TEACHER)
    clean = evaluate_model(model, build_dataset("shapes", root, "val", train=False, image_size=bench["size"]))
    jittered = evaluate_augmented(model, "shapes", root, "val", augment="color")
    assert abs(jittered["miou"] - clean["miou"]) <= 0.02
    assert jittered["miou"] == pytest.approx(card["val_miou_color_jitter"], abs=0.01)
    assert clean["miou"] >= 0.85


def _val_split_of_the_card(folder, bench):
    """The benchmark the card names, with its full val split and a token image elsewhere."""
    splits = {"teacher_train": 1, "train": 1, "val": bench["splits"]["val"]}
    return shapes.generate(folder, **splits, size=bench["size"], seed=bench["seed"], progress=False)
