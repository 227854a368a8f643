import math

import pytest
import torch
import torch.nn.functional as F

from kdlib.conventions import VOID
from kdlib.losses import (
    distillation_loss,
    feature_kd_loss,
    response_kd_loss,
    supervised_loss,
)


def test_supervised_loss_by_hand():
    # one image, 2 classes, 1×2 pixels: logits (0, ln 3) -> p = (1/4, 3/4)
    logits = torch.tensor([[[[0.0, 0.0]], [[math.log(3), math.log(3)]]]])
    target = torch.tensor([[[1, 0]]])
    expected = (-math.log(0.75) - math.log(0.25)) / 2
    assert supervised_loss(logits, target).item() == pytest.approx(expected, rel=1e-6)


def test_supervised_loss_ignores_void_and_never_clamps_it():
    logits = torch.tensor([[[[0.0, 5.0]], [[math.log(3), -5.0]]]])
    target = torch.tensor([[[1, VOID]]])
    assert supervised_loss(logits, target).item() == pytest.approx(-math.log(0.75), rel=1e-6)


def test_response_kd_by_hand():
    # T = 2: teacher logits (0, 2 ln 3) -> p_t = (1/4, 3/4); student (0, 0) -> log p_s = ln 1/2
    t = torch.tensor([[[[0.0]], [[2 * math.log(3)]]]])
    s = torch.zeros_like(t)
    loss = response_kd_loss(s, t, temperature=2.0)
    assert loss.item() == pytest.approx(math.log(2), rel=1e-6)
    assert response_kd_loss(s, t, 2.0, scale_by_t2=True).item() == pytest.approx(4 * math.log(2), rel=1e-6)
    # student equal to teacher: the value is the teacher's entropy
    h = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert response_kd_loss(t, t, 2.0).item() == pytest.approx(h, rel=1e-6)


def test_response_kd_valid_mask_averages_valid_pixels_only():
    torch.manual_seed(0)
    s, t = torch.randn(2, 5, 3, 4), torch.randn(2, 5, 3, 4)
    valid = torch.zeros(2, 3, 4, dtype=torch.bool)
    valid[0, 1, 2] = valid[1, 0, 0] = True
    per_pixel = -(F.softmax(t / 4, 1) * F.log_softmax(s / 4, 1)).sum(1)
    expected = (per_pixel[0, 1, 2] + per_pixel[1, 0, 0]) / 2
    assert response_kd_loss(s, t, 4.0, valid).item() == pytest.approx(expected.item(), rel=1e-6)


def test_response_kd_large_temperature_limit():
    # as T -> inf both distributions become uniform: the loss tends to ln C, its gradient to 0
    torch.manual_seed(0)
    s = torch.randn(1, 7, 4, 4, requires_grad=True)
    t = torch.randn(1, 7, 4, 4)
    loss = response_kd_loss(s, t, temperature=1e4)
    assert loss.item() == pytest.approx(math.log(7), rel=1e-4)
    loss.backward()
    assert s.grad.abs().max().item() < 1e-5
    # with T^2 scaling the gradient stays finite and non-vanishing: (p_s - p_t)/T * T^2 -> (z_s - z_t)/C
    s.grad = None
    response_kd_loss(s, t, temperature=1e3, scale_by_t2=True).backward()
    expected = (s.detach() - s.detach().mean(1, keepdim=True) - (t - t.mean(1, keepdim=True))) / 7 / 16
    assert torch.allclose(s.grad, expected, atol=1e-4)


def test_response_kd_rejects_bad_inputs():
    with pytest.raises(ValueError, match="differ"):
        response_kd_loss(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 2, 2))
    with pytest.raises(ValueError, match="temperature"):
        response_kd_loss(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4), temperature=0)


def test_feature_kd_by_hand():
    # level 1: identical directions -> 0; level 2: orthogonal -> 1; mean over levels = 0.5
    a = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1).expand(1, 2, 2, 2)
    b = torch.tensor([0.0, 3.0]).view(1, 2, 1, 1).expand(1, 2, 2, 2)
    assert feature_kd_loss([a, a], [2 * a, b]).item() == pytest.approx(0.5, abs=1e-6)
    # opposite directions give 2
    assert feature_kd_loss([a], [-a]).item() == pytest.approx(2.0, abs=1e-6)


def test_feature_kd_resizes_teacher_bilinearly():
    torch.manual_seed(0)
    fs, ft = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 4, 4)
    up = F.interpolate(ft, size=(8, 8), mode="bilinear", align_corners=False)
    expected = (1 - F.cosine_similarity(fs, up, dim=1)).mean()
    assert feature_kd_loss([fs], [ft]).item() == pytest.approx(expected.item(), rel=1e-6)


def test_feature_kd_rejects_channel_mismatch():
    with pytest.raises(ValueError, match="channels"):
        feature_kd_loss([torch.zeros(1, 4, 2, 2)], [torch.zeros(1, 8, 2, 2)])


def _outputs(seed=0, n=2, c=21, size=32):
    g = torch.Generator().manual_seed(seed)
    student = {
        "out": torch.randn(n, c, size, size, generator=g, requires_grad=True),
        "features": [
            torch.randn(n, ch, size // s, size // s, generator=g, requires_grad=True)
            for ch, s in ((32, 4), (64, 8), (128, 16), (256, 32))
        ],
    }
    teacher = {
        "out": torch.randn(n, c, size, size, generator=g),
        "features": [
            torch.randn(n, ch, size // s, size // s, generator=g) for ch, s in ((32, 4), (64, 8), (128, 16), (256, 32))
        ],
    }
    target = torch.randint(0, c, (n, size, size), generator=g)
    return student, teacher, target


def test_distillation_loss_combines_terms_as_the_report():
    s, t, y = _outputs()
    ce = supervised_loss(s["out"], y)
    resp = response_kd_loss(s["out"], t["out"], 4.0, y != VOID)
    feat = feature_kd_loss(s["features"], t["features"], y != VOID)
    total, parts = distillation_loss("none", s, None, y)
    assert total.item() == pytest.approx(ce.item()) and set(parts) == {"ce", "total"}
    total, parts = distillation_loss("response", s, t, y)
    assert total.item() == pytest.approx(0.7 * ce.item() + 0.3 * resp.item(), rel=1e-6)
    total, parts = distillation_loss("feature", s, t, y)
    assert total.item() == pytest.approx(0.7 * ce.item() + 0.3 * feat.item(), rel=1e-6)
    total, parts = distillation_loss("both", s, t, y, alpha=0.5, beta=2.0)
    assert total.item() == pytest.approx(0.5 * ce.item() + 2.0 * (resp.item() + feat.item()), rel=1e-6)
    assert set(parts) == {"ce", "response", "feature", "total"}
    assert all(not v.requires_grad for v in parts.values())


def test_distillation_loss_leaves_void_out_of_every_term():
    s, t, y = _outputs()
    y_void = y.clone()
    y_void[:, :, 16:] = VOID  # right half void
    # changing the student's outputs on void pixels must not change any term
    s2 = {"out": s["out"].detach().clone(), "features": [f.detach().clone() for f in s["features"]]}
    s2["out"][:, :, :, 16:] += 10 * torch.randn_like(s2["out"][:, :, :, 16:])
    s2["features"][0][:, :, :, 4:] += 10 * torch.randn_like(s2["features"][0][:, :, :, 4:])
    _, a = distillation_loss("both", s, t, y_void)
    _, b = distillation_loss("both", s2, t, y_void)
    for key in ("ce", "response"):
        assert a[key].item() == pytest.approx(b[key].item(), rel=1e-6)
    # feature level 0 (8×8) changed only in void columns -> level-0 term unchanged
    fa = feature_kd_loss(s["features"][:1], t["features"][:1], y_void != VOID)
    fb = feature_kd_loss(s2["features"][:1], t["features"][:1], y_void != VOID)
    assert fa.item() == pytest.approx(fb.item(), rel=1e-6)


def test_all_void_batch_gives_zero_not_nan():
    s, t, y = _outputs()
    y = torch.full_like(y, VOID)
    total, parts = distillation_loss("both", s, t, y)
    assert all(torch.isfinite(v) for v in parts.values())
    assert total.item() == 0.0
    total.backward()
    assert all(torch.isfinite(f.grad).all() for f in s["features"])
    assert torch.isfinite(s["out"].grad).all()


def test_unknown_method_and_missing_teacher():
    s, t, y = _outputs()
    with pytest.raises(ValueError, match="unknown method"):
        distillation_loss("hint", s, t, y)
    with pytest.raises(ValueError, match="teacher"):
        distillation_loss("response", s, None, y)


@pytest.mark.parametrize("chunk", [1 << 20, 2 * 5 * 6 * 7])  # one chunk; chunks of 2 images and a remainder
def test_response_gradient_in_closed_form_equals_autograds(monkeypatch, chunk):
    """response_kd_loss computes its gradient by hand, a few images at a time; value and
    gradient must equal autograd's through the formula, void pixels included, with and
    without T², for large logits too; without a gradient (evaluation) the value is the same."""
    from kdlib.losses import _SoftTargetCrossEntropy

    monkeypatch.setattr(_SoftTargetCrossEntropy, "CHUNK", chunk)
    torch.manual_seed(0)
    for size in (1.0, 40.0):
        s = (size * torch.randn(3, 5, 6, 7)).requires_grad_()
        t = size * torch.randn(3, 5, 6, 7)
        valid = torch.rand(3, 6, 7) > 0.3
        for scale in (False, True):
            fast = response_kd_loss(s, t, 3.0, valid, scale_by_t2=scale)
            (g_fast,) = torch.autograd.grad(fast * 2.5, s)
            per_pixel = -(F.softmax(t / 3.0, 1) * F.log_softmax(s / 3.0, 1)).sum(1)
            slow = (per_pixel * valid).sum() / valid.sum() * (9.0 if scale else 1.0)
            (g_slow,) = torch.autograd.grad(slow * 2.5, s)
            assert torch.allclose(fast, slow, rtol=1e-5, atol=1e-6)
            assert torch.allclose(g_fast, g_slow, rtol=1e-4, atol=1e-7)
            with torch.no_grad():
                assert torch.allclose(response_kd_loss(s, t, 3.0, valid, scale_by_t2=scale), slow, rtol=1e-5, atol=1e-6)


def test_the_method_predicates_say_which_terms_each_objective_holds():
    from kdlib.losses import METHODS, needs_features, needs_logits, needs_teacher

    torch.manual_seed(0)
    student = {"out": torch.randn(2, 21, 8, 8), "features": [torch.randn(2, 4, 4, 4)]}
    teacher = {"out": torch.randn(2, 21, 8, 8), "features": [torch.randn(2, 4, 4, 4)]}
    target = torch.randint(0, 21, (2, 8, 8))
    for method in METHODS:
        _, parts = distillation_loss(method, student, teacher if needs_teacher(method) else None, target)
        assert ("response" in parts) == needs_logits(method) and ("feature" in parts) == needs_features(method)
        assert needs_teacher(method) == (needs_logits(method) or needs_features(method))
