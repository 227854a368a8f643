"""The embedded benchmark's shipped teacher: its card, its size, and its measured mIoU."""

import pytest

from kdlib import shapes
from kdlib.evaluate import evaluate_checkpoint
from kdlib.models import CustomSegmentationModel, count_parameters
from kdlib.teacher import read_card
from kdlib.train import SHAPES_TEACHER, load_model


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
    root = shapes.generate(tmp_path, teacher_train=1, train=1, val=bench["splits"]["val"], size=bench["size"],
                           seed=bench["seed"], progress=False)
    result = evaluate_checkpoint(SHAPES_TEACHER, dataset="shapes", data_root=str(root), device="cpu")
    assert result["images"] == bench["splits"]["val"]
    assert result["miou"] >= card["val_miou"] - 0.01
