import pytest
import torch
from torch import nn

from kdlib import models
from kdlib.methods import distillation_loss
from kdlib.models import (
    CustomSegmentationModel,
    TeacherWrapper,
    build_model,
    count_parameters,
    fcn_resnet50_teacher,
)


def test_student_parameter_count_matches_report():
    n = count_parameters(CustomSegmentationModel(21))
    assert n == 3_689_061
    assert abs(n - 3.7e6) / 3.7e6 <= 0.03


def test_student_layout_is_section_1():
    m = CustomSegmentationModel(21)
    stem_conv = m.stem[0][0]
    assert (
        stem_conv.in_channels,
        stem_conv.out_channels,
        stem_conv.kernel_size,
        stem_conv.stride,
        stem_conv.padding,
    ) == (3, 32, (3, 3), (2, 2), (1, 1))
    assert isinstance(m.stem[0][1], nn.BatchNorm2d)
    assert (m.pool.kernel_size, m.pool.stride) == (3, 2)
    widths = [stage[-1].conv2[0].out_channels for stage in m.stages]
    assert widths == [32, 64, 128, 256]
    assert [stage[0].conv1[0].stride[0] for stage in m.stages] == [1, 2, 2, 2]
    assert all(len(stage) == 2 for stage in m.stages)
    # 1×1 conv shortcut exactly where the shape changes
    assert isinstance(m.stages[0][0].shortcut, nn.Identity)
    assert all(isinstance(m.stages[i][0].shortcut, nn.Sequential) for i in (1, 2, 3))
    ups = [step.up[0] for step in m.decoder]
    assert all(isinstance(u, nn.ConvTranspose2d) for u in ups)
    assert [(u.in_channels, u.out_channels) for u in ups] == [(256, 128), (128, 64), (64, 32), (32, 16)]
    assert all((u.kernel_size, u.stride, u.padding) == ((4, 4), (2, 2), (1, 1)) for u in ups)
    assert (m.classifier.in_channels, m.classifier.out_channels, m.classifier.kernel_size) == (16, 21, (1, 1))


@pytest.mark.parametrize("size", [(64, 64), (96, 160), (224, 224)])
def test_student_shapes(size):
    m = CustomSegmentationModel(21).eval()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        out = m(x)
    h, w = size
    assert out["out"].shape == (2, 21, h, w)
    expected = [
        (2, 32, h // 4, w // 4),
        (2, 64, h // 8, w // 8),
        (2, 128, h // 16, w // 16),
        (2, 256, h // 32, w // 32),
    ]
    assert [tuple(f.shape) for f in out["features"]] == expected


def test_student_rejects_sizes_not_divisible_by_32():
    with pytest.raises(ValueError, match="divide by 32"):
        CustomSegmentationModel(21)(torch.randn(1, 3, 100, 96))


def test_student_num_classes():
    assert CustomSegmentationModel(5)(torch.randn(1, 3, 64, 64))["out"].shape[1] == 5


@pytest.fixture(scope="module")
def small_teacher():
    torch.manual_seed(0)
    return build_model("lraspp_resnet18")


def test_shapes_teacher_is_three_times_the_student(small_teacher):
    assert count_parameters(small_teacher) >= 3 * count_parameters(CustomSegmentationModel(21))


def test_wrapper_outputs_and_projections(small_teacher):
    w = TeacherWrapper(small_teacher)
    assert w.teacher_channels == (64, 128, 256, 512)
    out = w(torch.randn(2, 3, 64, 96))
    assert out["out"].shape == (2, 21, 64, 96)
    assert [f.shape[1] for f in out["features"]] == [32, 64, 128, 256]
    assert [p.out_channels for p in w.projections] == [32, 64, 128, 256]


def test_wrapper_is_frozen_for_real(small_teacher):
    w = TeacherWrapper(small_teacher)
    trainable = {n for n, p in w.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in w.named_parameters() if n.startswith("projections.")}
    assert not any(p.requires_grad for p in w.model.parameters())

    parent = nn.ModuleDict({"teacher": w, "student": CustomSegmentationModel(21)})
    parent.train()
    assert not w.model.training and all(not m.training for m in w.model.modules())
    assert w.projections.training

    bn_before = {k: v.clone() for k, v in w.model.state_dict().items()}
    x = torch.randn(4, 3, 64, 64) * 3 + 1  # statistics far from the running ones
    out = w(x)
    after = w.model.state_dict()
    assert all(torch.equal(bn_before[k], after[k]) for k in bn_before)
    # no graph through the teacher: the logits are constants, features depend on projections only
    assert out["out"].grad_fn is None and not out["out"].requires_grad
    assert all(f.requires_grad for f in out["features"])
    raw = w.teacher_forward(x)
    assert all(f.grad_fn is None for f in raw["features"])


def test_gradients_reach_student_and_projections_never_the_teacher(small_teacher):
    w = TeacherWrapper(small_teacher)
    student = CustomSegmentationModel(21)
    x = torch.randn(2, 3, 64, 64)
    y = torch.randint(0, 21, (2, 64, 64))
    total, _ = distillation_loss("both", student(x), w(x), y)
    total.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in w.projections.parameters())
    assert all(p.grad is None for p in w.model.parameters())
    assert sum(p.grad.abs().sum() for p in student.parameters() if p.grad is not None) > 0


def test_wrapper_rejects_unknown_layers(small_teacher):
    with pytest.raises(ValueError, match="no layer"):
        TeacherWrapper(small_teacher, feature_layers=("layer1", "layer2", "layer3", "conv9"))
    with pytest.raises(TypeError, match="backbone"):
        TeacherWrapper(CustomSegmentationModel(21))


@pytest.fixture
def fcn50_state(tmp_path):
    torch.manual_seed(0)
    model = build_model("fcn_resnet50")
    path = tmp_path / "fcn.pth"
    torch.save(model.state_dict(), path)
    return model, path


@pytest.mark.slow
def test_fcn_resnet50_teacher_loads_given_file_and_env(fcn50_state, monkeypatch, tmp_path):
    model, path = fcn50_state
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    loaded = fcn_resnet50_teacher(path)
    key = "backbone.layer1.0.conv1.weight"
    assert torch.equal(loaded.state_dict()[key], model.state_dict()[key])
    assert not loaded.training
    monkeypatch.setenv(models.TEACHER_WEIGHTS_ENV, str(path))
    loaded = fcn_resnet50_teacher()
    assert torch.equal(loaded.state_dict()[key], model.state_dict()[key])
    w = TeacherWrapper(loaded)
    assert w.teacher_channels == (256, 512, 1024, 2048)
    out = w(torch.randn(1, 3, 64, 64))
    assert out["out"].shape == (1, 21, 64, 64) and [f.shape[1] for f in out["features"]] == [32, 64, 128, 256]


def test_fcn_resnet50_teacher_reads_hub_cache(fcn50_state, monkeypatch, tmp_path):
    _, path = fcn50_state
    monkeypatch.delenv(models.TEACHER_WEIGHTS_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    target = models._hub_checkpoint()
    target.parent.mkdir(parents=True)
    path.rename(target)
    assert isinstance(fcn_resnet50_teacher(), nn.Module)


def test_fcn_resnet50_teacher_missing_file_fails_at_once_with_advice(monkeypatch, tmp_path):
    monkeypatch.delenv(models.TEACHER_WEIGHTS_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    with pytest.raises(FileNotFoundError) as err:
        fcn_resnet50_teacher()
    message = str(err.value)
    assert models.FCN_RESNET50_FILE in message and models.FCN_RESNET50_URL in message
    assert str(tmp_path / "hub") in message and models.TEACHER_WEIGHTS_ENV in message


def test_fcn_resnet50_teacher_rejects_wrong_state_dict(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    bad = tmp_path / "bad.pth"
    torch.save(CustomSegmentationModel(21).state_dict(), bad)
    with pytest.raises(RuntimeError, match="not a usable FCN-ResNet50"):
        fcn_resnet50_teacher(bad)


def test_adapters_map_the_students_widths_to_the_teachers_and_count_by_hand():
    """feature_student: a 1×1 conv (with bias) per level, student width -> teacher width:
    Σ (c_s·c_t + c_t) = 2,112 + 8,320 + 33,024 + 131,584 = 175,040 for ResNet-18's widths.
    CIRKD's head on the last level: conv 256->512 (no bias), BN (2·512), conv 512->512 (no bias):
    131,072 + 1,024 + 262,144 = 394,240."""
    from kdlib.adapters import cirkd_projector, level_adapters
    from kdlib.models import STUDENT_CHANNELS, count_parameters

    teacher_channels = (64, 128, 256, 512)
    torch.manual_seed(0)
    features = [torch.randn(2, c, 16 // 2**i, 16 // 2**i) for i, c in enumerate(STUDENT_CHANNELS)]
    levels = level_adapters(STUDENT_CHANNELS, teacher_channels)
    assert count_parameters(levels) == 175_040
    assert [tuple(f.shape) for f in levels(features)] == [
        (2, 64, 16, 16),
        (2, 128, 8, 8),
        (2, 256, 4, 4),
        (2, 512, 2, 2),
    ]
    head = cirkd_projector(STUDENT_CHANNELS, teacher_channels)
    assert count_parameters(head) == 394_240
    (last,) = head(features)
    assert tuple(last.shape) == (2, 512, 2, 2)
