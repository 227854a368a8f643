import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdlib.conventions import VOID
from kdlib.losses import (
    affinity,
    attention_transfer_loss,
    cirkd_pixel_loss,
    cirkd_region_loss,
    cwd_loss,
    dist_loss,
    feature_kd_loss,
    pairwise_loss,
    response_kd_loss,
    response_ls_loss,
    supervised_loss,
)
from kdlib.methods import distillation_loss


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


def test_each_method_reads_what_it_declares_and_its_parts_are_its_terms():
    """Each method runs on a teacher dict holding only what its declaration says it reads, and
    its parts are the cross entropy plus its own terms."""
    from kdlib.methods import METHODS

    s, t, y = _outputs()
    t["raw_features"] = [torch.randn(2, 2 * f.shape[1], *f.shape[-2:]) for f in t["features"]]
    terms = {
        "none": set(),
        "response": {"response"},
        "feature": {"feature"},
        "both": {"response", "feature"},
        "pairwise": {"pairwise"},
        "cwd": {"cwd"},
        "dist": {"dist"},
        "response_ls": {"response_ls"},
        "at": {"at"},
        "feature_student": {"feature_student"},
        "cirkd": {"response", "cirkd_pixel", "cirkd_region"},
    }
    assert set(terms) == set(METHODS)
    widths = ([f.shape[1] for f in s["features"]], [f.shape[1] for f in t["raw_features"]])
    for method, declared in METHODS.items():
        wanted = {"out": "logits" in declared.reads, "features": "features" in declared.reads}
        wanted["raw_features"] = "raw_features" in declared.reads
        teacher = {k: v for k, v in t.items() if wanted[k]} if declared.needs_teacher else None
        student = s if declared.adapters is None else s | {"adapted": declared.adapters(*widths)(s["features"])}
        _, parts = distillation_loss(method, student, teacher, y)
        assert set(parts) == {"ce", "total"} | terms[method], method
        assert set(declared.terms) == terms[method] and declared.needs_teacher == any(wanted.values())
        assert declared.cacheable == (wanted == {"out": True, "features": False, "raw_features": False})


def test_method_defaults_are_the_papers():
    from kdlib.losses import CIRKD_TAU, PAIRWISE_GRID
    from kdlib.methods import CIRKD_REGION_WEIGHT, METHODS

    METHOD_DEFAULTS = {m: declared.defaults for m, declared in METHODS.items()}
    for m in ("none", "response", "feature", "both"):  # the report's Table 1
        assert METHOD_DEFAULTS[m] == {"alpha": 0.7, "beta": 0.3, "temperature": 4.0}
    assert METHOD_DEFAULTS["pairwise"]["beta"] == 0.5 and PAIRWISE_GRID == 2  # SKD: lambda_pa 0.5, pool 0.5
    assert METHOD_DEFAULTS["cwd"] | {} == {"alpha": 1.0, "beta": 3.0, "temperature": 4.0}  # CWD: 3, tau 4
    assert METHOD_DEFAULTS["dist"] == {"alpha": 1.0, "beta": 1.0, "temperature": 1.0}  # DIST: beta=gamma=1, tau 1
    assert METHOD_DEFAULTS["response_ls"] == {"alpha": 0.1, "beta": 9.0, "temperature": 2.0}  # LS: kd 9, T 2
    assert METHOD_DEFAULTS["at"] | {"temperature": 0} == {"alpha": 1.0, "beta": 500.0, "temperature": 0}  # 1000/2
    assert METHOD_DEFAULTS["feature_student"] == METHOD_DEFAULTS["feature"]  # only the adapters' side differs
    # CIRKD's train_cirkd.py: CE 1, lambda-kd 1 at kd-temperature 1, lambda-minibatch-pixel 1,
    # lambda-memory-region 0.1 (relative to the others: in the term), contrast-temperature 0.1
    assert METHOD_DEFAULTS["cirkd"] == {"alpha": 1.0, "beta": 1.0, "temperature": 1.0}
    assert CIRKD_REGION_WEIGHT == 0.1 and CIRKD_TAU == 0.1


# --------------------------------------------------------------------------- beyond the report


def test_pairwise_by_hand():
    # two nodes (a 1×2 map). Student: orthogonal features -> affinity [[1, 0], [0, 1]];
    # teacher (other channel count): (1, 0, 0) and (1, 1, 0), cosine 1/√2.
    # Squared differences: 0, 1/2, 1/2, 0 -> mean 1/4.
    fs = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).view(1, 2, 1, 2)
    ft = torch.tensor([[1.0, 1.0], [0.0, 1.0], [0.0, 0.0]]).view(1, 3, 1, 2)
    assert pairwise_loss(fs, ft).item() == pytest.approx(0.25, abs=1e-6)
    assert pairwise_loss(fs, 5 * ft).item() == pytest.approx(0.25, abs=1e-6)  # scale-free
    assert pairwise_loss(ft, ft).item() == pytest.approx(0.0, abs=1e-6)


def test_pairwise_pools_both_maps_to_one_small_grid():
    torch.manual_seed(0)
    fs, ft = torch.randn(2, 8, 4, 4), torch.randn(2, 16, 16, 16)
    # grid 2: both maps max-pooled over blocks of half their side
    ps = fs.view(2, 8, 2, 2, 2, 2).amax((3, 5))
    pt = ft.view(2, 16, 2, 8, 2, 8).amax((3, 5))
    a_s = F.normalize(ps.flatten(2), dim=1)
    a_t = F.normalize(pt.flatten(2), dim=1)
    expected = ((a_s.transpose(1, 2) @ a_s - a_t.transpose(1, 2) @ a_t) ** 2).mean()
    assert pairwise_loss(fs, ft, grid=2).item() == pytest.approx(expected.item(), rel=1e-5)
    # a grid finer than the smaller map stops at the smaller map's size (4×4 nodes here)
    assert affinity(fs).shape == (2, 16, 16)
    pt4 = ft.view(2, 16, 4, 4, 4, 4).amax((3, 5))
    expected4 = ((affinity(fs) - affinity(pt4)) ** 2).mean()
    assert pairwise_loss(fs, ft, grid=64).item() == pytest.approx(expected4.item(), rel=1e-5)


def test_cwd_by_hand():
    # one channel over two positions. T = 1: teacher logits (0, ln 3) -> (1/4, 3/4);
    # student (0, 0) -> (1/2, 1/2): KL = 1/4·ln(1/2) + 3/4·ln(3/2)
    kl = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    t = torch.tensor([0.0, math.log(3)]).view(1, 1, 1, 2)
    s = torch.zeros_like(t)
    assert cwd_loss(s, t, temperature=1.0).item() == pytest.approx(kl, rel=1e-6)
    # T = 2 with the teacher's logits doubled: the same distributions, times T² = 4
    assert cwd_loss(s, 2 * t, temperature=2.0).item() == pytest.approx(4 * kl, rel=1e-6)
    # the mean over channels and images: a second channel where student = teacher adds 0
    s2, t2 = torch.cat([s, t], 1), torch.cat([t, t], 1)
    assert cwd_loss(s2, t2, 1.0).item() == pytest.approx(kl / 2, rel=1e-6)


def test_cwd_distributions_range_over_valid_positions_only():
    t = torch.tensor([0.0, math.log(3), 7.0]).view(1, 1, 1, 3)
    s = torch.tensor([0.0, 0.0, -9.0]).view(1, 1, 1, 3).requires_grad_()
    valid = torch.tensor([[[True, True, False]]])
    kl = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    loss = cwd_loss(s, t, 1.0, valid)
    assert loss.item() == pytest.approx(kl, rel=1e-6)
    loss.backward()
    assert s.grad[0, 0, 0, 2].item() == 0.0 and torch.isfinite(s.grad).all()
    none_valid = torch.zeros_like(valid)
    s.grad = None
    empty = cwd_loss(s, t, 1.0, none_valid)
    empty.backward()
    assert empty.item() == 0.0 and (s.grad == 0).all()


def _pearson_oracle(a, b):
    return float(np.corrcoef(a, b)[0, 1])


def test_dist_against_numpys_correlations():
    torch.manual_seed(0)
    s, t = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    for temp in (1.0, 2.0):
        ys = F.softmax(s / temp, 1).permute(0, 2, 3, 1).reshape(-1, 4).numpy()  # pixels × classes
        yt = F.softmax(t / temp, 1).permute(0, 2, 3, 1).reshape(-1, 4).numpy()
        inter = 1 - np.mean([_pearson_oracle(ys[i], yt[i]) for i in range(len(ys))])
        intra = 1 - np.mean([_pearson_oracle(ys[:, j], yt[:, j]) for j in range(4)])
        got = dist_loss(s, t, temperature=temp, inter_weight=2.0, intra_weight=0.5).item()
        assert got == pytest.approx(temp**2 * (2.0 * inter + 0.5 * intra), rel=1e-5)
        # masked: the same as the valid pixels alone
        valid = torch.rand(2, 3, 3) > 0.4
        keep = valid.reshape(-1).numpy()
        inter = 1 - np.mean([_pearson_oracle(ys[i], yt[i]) for i in np.flatnonzero(keep)])
        intra = 1 - np.mean([_pearson_oracle(ys[keep, j], yt[keep, j]) for j in range(4)])
        got = dist_loss(s, t, temp, valid).item()
        assert got == pytest.approx(temp**2 * (inter + intra), rel=1e-5)


def test_dist_matches_relations_not_values():
    torch.manual_seed(0)
    t = torch.randn(2, 5, 4, 4)
    assert dist_loss(t, t).item() == pytest.approx(0.0, abs=1e-6)
    assert dist_loss(-t, t).item() > 1.0  # reversed rankings
    s = torch.randn(2, 5, 4, 4, requires_grad=True)
    loss = dist_loss(s, t, valid_mask=torch.zeros(2, 4, 4, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(s.grad).all()


def test_new_methods_combine_as_alpha_ce_plus_beta_term():
    s, t, y = _outputs()
    t["raw_features"] = [torch.randn(2, 7, *f.shape[-2:]) for f in t["features"]]
    y[:, :4] = VOID
    ce = supervised_loss(s["out"], y)
    cases = {
        "pairwise": pairwise_loss(s["features"][-1], t["raw_features"][-1], 2),
        "cwd": cwd_loss(s["out"], t["out"], 4.0, y != VOID),
        "dist": dist_loss(s["out"], t["out"], 4.0, y != VOID),
        "response_ls": response_ls_loss(s["out"], t["out"], 4.0, y != VOID),
        "at": attention_transfer_loss(s["features"], t["raw_features"]),
    }
    for method, term in cases.items():
        total, parts = distillation_loss(method, s, t, y, alpha=1.0, beta=3.0, temperature=4.0)
        assert total.item() == pytest.approx(ce.item() + 3.0 * term.item(), rel=1e-5)
        assert parts[method].item() == pytest.approx(term.item(), rel=1e-6)


def test_kd_mask_lets_distillation_see_pixels_the_cross_entropy_does_not():
    """On unlabeled images (all void) the cross entropy is 0 and the distillation terms see
    every pixel of ``kd_mask``."""
    s, t, y = _outputs()
    unlabeled = torch.full_like(y, VOID)
    everywhere = torch.ones_like(y, dtype=torch.bool)
    for method in ("response", "cwd", "dist", "response_ls"):
        _, parts = distillation_loss(method, s, t, unlabeled, kd_mask=everywhere)
        _, reference = distillation_loss(method, s, t, torch.zeros_like(y))  # every pixel labelled
        assert parts["ce"].item() == 0.0
        assert parts[method].item() == pytest.approx(reference[method].item(), rel=1e-6)


def test_new_losses_take_bf16_outputs_as_amp_gives_them():
    """Under --amp the models' outputs are bf16; each term computes in float32 and stays close
    to its float32 value."""
    s, t, y = _outputs()
    t["raw_features"] = [torch.randn(2, 7, *f.shape[-2:]) for f in t["features"]]
    half = {
        k: v.detach().bfloat16() if torch.is_tensor(v) else [f.detach().bfloat16() for f in v] for k, v in s.items()
    }
    t_half = {k: v.bfloat16() if torch.is_tensor(v) else [f.bfloat16() for f in v] for k, v in t.items()}
    for method in ("pairwise", "cwd", "dist", "response_ls", "at"):
        _, full = distillation_loss(method, s, t, y)
        _, low = distillation_loss(method, half, t_half, y)
        assert low[method].dtype == torch.float32
        assert low[method].item() == pytest.approx(full[method].item(), rel=0.03, abs=1e-3)


def _softmax_np(z, axis):
    e = np.exp(z - z.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


def test_response_ls_against_numpy():
    """Z-score per pixel over the classes (unbiased std), softmax at T, KL(teacher‖student)
    averaged over the valid pixels, times T²: computed in numpy."""
    g = torch.Generator().manual_seed(3)
    zs, zt = torch.randn(2, 5, 3, 4, generator=g), 3.0 * torch.randn(2, 5, 3, 4, generator=g) + 1.0
    valid = torch.rand(2, 3, 4, generator=g) > 0.3
    a, b, T = zs.numpy().astype(np.float64), zt.numpy().astype(np.float64), 2.0
    za = (a - a.mean(1, keepdims=True)) / a.std(1, ddof=1, keepdims=True)
    zb = (b - b.mean(1, keepdims=True)) / b.std(1, ddof=1, keepdims=True)
    ps, pt = _softmax_np(za / T, 1), _softmax_np(zb / T, 1)
    kl = (pt * (np.log(pt) - np.log(ps))).sum(1)
    m = valid.numpy()
    expected = T**2 * kl[m].mean()
    assert response_ls_loss(zs, zt, T, valid).item() == pytest.approx(expected, rel=1e-5)


def test_response_ls_ignores_the_scale_and_shift_of_either_models_logits():
    """What standardisation is for: a student whose logits are the teacher's times 5 plus 2 has
    nothing left to learn (loss 0), where the report's response KD still pulls it."""
    g = torch.Generator().manual_seed(4)
    zt = torch.randn(2, 6, 4, 4, generator=g)
    assert response_ls_loss(5.0 * zt + 2.0, zt, 2.0).item() == pytest.approx(0.0, abs=1e-6)
    assert response_kd_loss(5.0 * zt + 2.0, zt, 2.0).item() > response_kd_loss(zt, zt, 2.0).item() + 0.1


def test_attention_transfer_against_numpy():
    """mean_c f², flattened, L2-normalised per image; squared differences averaged over images
    and positions, summed over levels; a teacher map twice the size is brought down by the mean
    of each 2×2 block (what a bilinear halving is), and the widths differ."""
    g = torch.Generator().manual_seed(5)
    fs = [torch.randn(2, 4, 4, 4, generator=g), torch.randn(2, 8, 2, 2, generator=g)]
    ft = [torch.randn(2, 6, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)]

    def att(f, halve=False):
        q = (f.numpy().astype(np.float64) ** 2).mean(1)
        if halve:
            q = q.reshape(q.shape[0], q.shape[1] // 2, 2, q.shape[2] // 2, 2).mean((2, 4))
        q = q.reshape(q.shape[0], -1)
        return q / np.linalg.norm(q, axis=1, keepdims=True)

    expected = ((att(fs[0]) - att(ft[0])) ** 2).mean() + ((att(fs[1]) - att(ft[1], halve=True)) ** 2).mean()
    assert attention_transfer_loss(fs, ft).item() == pytest.approx(expected, rel=1e-5)
    # the same attention up to a factor gives 0; the teacher gets no gradient
    same = [2.0 * f for f in fs]
    assert attention_transfer_loss(fs, same).item() == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="levels"):
        attention_transfer_loss(fs, ft[:1])


def _unit(f):
    """Per-pixel unit vectors of an N×C×P array (normalised across channels)."""
    return f / np.linalg.norm(f, axis=1, keepdims=True)


def _kl_rows(t_logits, s_logits):
    """KL(softmax(teacher row) ‖ softmax(student row)) for each row of the last axis."""
    pt, ps = _softmax_np(t_logits, -1), _softmax_np(s_logits, -1)
    return (pt * (np.log(pt) - np.log(ps))).sum(-1)


def test_cirkd_pixel_against_numpy():
    """For every ordered pair of images (i, j), i = j included, each pixel of i against every
    pixel of j: cosine similarities / 0.1, softmax over j's pixels, KL(teacher‖student) per
    row; averaged over the rows and the B² pairs (CIRKD's batchmean, then / B²). The two widths
    differ; a teacher map twice the size is brought down by the mean of each 2×2 block (what a
    bilinear halving is)."""
    g = torch.Generator().manual_seed(6)
    fs, ft = torch.randn(3, 4, 2, 3, generator=g), torch.randn(3, 6, 4, 6, generator=g)
    a = _unit(fs.double().numpy().reshape(3, 4, 6))
    b = _unit(ft.double().numpy().reshape(3, 6, 2, 2, 3, 2).mean((3, 5)).reshape(3, 6, 6))
    pairs = [_kl_rows(b[i].T @ b[j] / 0.1, a[i].T @ a[j] / 0.1).mean() for i in range(3) for j in range(3)]
    assert cirkd_pixel_loss(fs, ft).item() == pytest.approx(np.mean(pairs), rel=1e-5)
    # only the relations count: a student whose map is the teacher's, scaled, matches them all
    small = ft[..., ::2, ::2].contiguous()
    assert cirkd_pixel_loss(3.0 * small, small).item() == pytest.approx(0.0, abs=1e-6)


def test_cirkd_region_against_numpy():
    """A region is the pixels of one class in one image (labels at the feature's size by nearest
    neighbour, the top-left pixel of each 2×2 block here; void left out); its embedding the
    normalised mean of the teacher's unit vectors. Each anchor pixel (``valid_mask``, by default
    the non-void ones) against every region of the batch: cosines / 0.1, softmax over the
    regions, KL(teacher‖student), averaged over the anchors."""
    g = torch.Generator().manual_seed(7)
    fs, ft = torch.randn(2, 5, 2, 3, generator=g), torch.randn(2, 5, 4, 6, generator=g)
    labels = torch.randint(0, 3, (2, 4, 6), generator=g)
    labels[0, 0, 0] = labels[1, 2, 4] = VOID  # two feature pixels without a label
    valid = torch.rand(2, 4, 6, generator=g) > 0.3
    a = _unit(fs.double().numpy().reshape(2, 5, 6))
    b = _unit(ft.double().numpy().reshape(2, 5, 2, 2, 3, 2).mean((3, 5)).reshape(2, 5, 6))
    y = labels.numpy()[:, ::2, ::2].reshape(2, 6)
    regions = []
    for n in range(2):
        for k in sorted(set(y[n].tolist()) - {VOID}):
            mean = b[n][:, y[n] == k].mean(1)
            regions.append(mean / np.linalg.norm(mean))
    r = np.stack(regions)  # regions × channels
    assert 4 <= len(r) <= 6  # the batch's regions, several per image

    def expected(anchors):
        rows = [_kl_rows(r @ b[n][:, p] / 0.1, r @ a[n][:, p] / 0.1) for n, p in zip(*np.nonzero(anchors))]
        return np.mean(rows)

    got = cirkd_region_loss(fs, ft, labels, valid).item()
    assert got == pytest.approx(expected(valid.numpy()[:, ::2, ::2].reshape(2, 6)), rel=1e-5)
    assert cirkd_region_loss(fs, ft, labels).item() == pytest.approx(expected(y != VOID), rel=1e-5)


def test_cirkd_region_is_zero_without_a_region_or_an_anchor_and_checks_widths():
    g = torch.Generator().manual_seed(8)
    fs, ft = torch.randn(2, 5, 2, 2, generator=g, requires_grad=True), torch.randn(2, 5, 2, 2, generator=g)
    void = torch.full((2, 8, 8), VOID)
    loss = cirkd_region_loss(fs, ft, void, torch.ones(2, 8, 8, dtype=torch.bool))  # anchors, no region
    loss.backward()
    assert loss.item() == 0.0 and (fs.grad == 0).all()
    labels = torch.randint(0, 3, (2, 8, 8), generator=g)
    assert cirkd_region_loss(fs, ft, labels, torch.zeros(2, 8, 8, dtype=torch.bool)).item() == 0.0  # no anchor
    assert cirkd_region_loss(2.0 * ft, ft, labels).item() == pytest.approx(0.0, abs=1e-6)  # same directions
    with pytest.raises(ValueError, match="teacher's width"):
        cirkd_region_loss(fs, torch.randn(2, 7, 2, 2), labels)


def test_feature_student_compares_the_adapted_student_with_the_raw_teacher():
    """0.7·CE + 0.3·mean over the four levels of mean_p (1 - cos) between the student's maps
    through its adapters (the teacher's widths) and the teacher's own maps: by numpy, every
    pixel labelled."""
    s, t, y = _outputs()
    g = torch.Generator().manual_seed(9)
    t["raw_features"] = [torch.randn(2, 2 * f.shape[1], *f.shape[-2:], generator=g) for f in t["features"]]
    s["adapted"] = [torch.randn_like(f) for f in t["raw_features"]]
    per_level = []
    for fa, fr in zip(s["adapted"], t["raw_features"]):
        u, v = _unit(fa.detach().double().flatten(2).numpy()), _unit(fr.double().flatten(2).numpy())
        per_level.append((1 - (u * v).sum(1)).mean())
    ce = F.cross_entropy(s["out"].double(), y).item()
    total, parts = distillation_loss("feature_student", s, {"raw_features": t["raw_features"]}, y)
    assert parts["feature_student"].item() == pytest.approx(np.mean(per_level), rel=1e-5)
    assert total.item() == pytest.approx(0.7 * ce + 0.3 * np.mean(per_level), rel=1e-5)


def test_cirkd_objective_is_ce_plus_logit_kd_pixel_and_a_tenth_of_region():
    """CIRKD's objective with its defaults: CE + soft-target CE at T 1 over the non-void pixels
    + the pixel-to-pixel term on the student's raw last level + 0.1 × the pixel-to-region term
    on its adapted last level, each computed here by numpy."""
    s, t, y = _outputs(c=5, size=64)
    y[:, :8] = VOID
    g = torch.Generator().manual_seed(10)
    t["raw_features"] = [torch.randn(2, 2 * f.shape[1], *f.shape[-2:], generator=g) for f in s["features"]]
    s["adapted"] = [torch.randn_like(t["raw_features"][-1])]
    m = (y != VOID).numpy()
    zs, zt = s["out"].detach().double().numpy(), t["out"].double().numpy()
    ce = -np.log(np.take_along_axis(_softmax_np(zs, 1), np.where(m, y.numpy(), 0)[:, None], 1)[:, 0])[m].mean()
    soft = -(_softmax_np(zt, 1) * np.log(_softmax_np(zs, 1))).sum(1)[m].mean()
    last_s, last_t = s["features"][-1].detach().double().flatten(2).numpy(), t["raw_features"][-1].double().numpy()
    a, b = _unit(last_s), _unit(last_t.reshape(2, 512, -1))
    pixel = np.mean([_kl_rows(b[i].T @ b[j] / 0.1, a[i].T @ a[j] / 0.1).mean() for i in range(2) for j in range(2)])
    labels = y.numpy()[:, ::32, ::32].reshape(2, -1)  # nearest to the 2×2 last level
    sa = _unit(s["adapted"][0].detach().double().flatten(2).numpy())
    r = []
    for n in range(2):
        for k in sorted(set(labels[n].tolist()) - {VOID}):
            mean = b[n][:, labels[n] == k].mean(1)
            r.append(mean / np.linalg.norm(mean))
    r = np.stack(r)
    anchors = zip(*np.nonzero(labels != VOID))
    region = np.mean([_kl_rows(r @ b[n][:, p] / 0.1, r @ sa[n][:, p] / 0.1) for n, p in anchors])
    total, parts = distillation_loss("cirkd", s, t, y)
    assert parts["response"].item() == pytest.approx(soft, rel=1e-5)
    assert parts["cirkd_pixel"].item() == pytest.approx(pixel, rel=1e-5)
    assert parts["cirkd_region"].item() == pytest.approx(0.1 * region, rel=1e-5)
    assert total.item() == pytest.approx(ce + soft + pixel + 0.1 * region, rel=1e-5)
