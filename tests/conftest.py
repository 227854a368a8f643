import pytest
import torch

from kdlib import shapes
from kdlib.models import build_model


@pytest.fixture(scope="session")
def tiny_shapes(tmp_path_factory):
    """A tiny generated benchmark: 8 train, 6 val, 4 teacher_train images of 64 px."""
    root = tmp_path_factory.mktemp("shapes")
    return shapes.generate(root, teacher_train=4, train=8, val=6, size=64, seed=0, progress=False)


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory):
    """A randomly initialised lraspp_resnet18 teacher saved as a kdlib checkpoint."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    model = build_model("lraspp_resnet18")
    torch.save({"model": model.state_dict(), "config": {"model": "lraspp_resnet18", "num_classes": 21}}, path)
    return path
