"""What the training step optimises, checked where the trainer computes it: the settings each
row of the report rests on reach the term the student learns from, every distillation term
sends the student a gradient, and unlabeled images reach the distillation terms alone.
Expected values are computed here by hand (numpy or the formula), not by kdlib."""

import inspect

import numpy as np
import pytest
import torch
from torch import nn

from kdlib import losses, methods
from kdlib.config import Config
from kdlib.conventions import VOID
from kdlib.methods import METHODS, kd_names
from kdlib.train import build_adapters, fit, kd_parameters, train_step

KD_METHODS = kd_names()


class FixedLogits(nn.Module):
    """A "student" whose logits are a parameter: the step's gradient with respect to it is the
    gradient of the objective with respect to the logits, which the formula gives by hand."""

    def __init__(self, logits):
        super().__init__()
        self.logits = nn.Parameter(logits.clone())

    def forward(self, x):
        return {"out": self.logits, "features": []}


def _softmax(z, axis=1):
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def test_hintons_form_is_response_kd_times_t_squared_in_the_trained_objective(tmp_path):
    """`response_t2` and `response` are the run configs the report's rows train with; through
    the trainer's step, the response term and its gradient differ by exactly T², and the total
    is α·CE + β·term with the run's own α, β, T."""
    from kdlib.profiles import run_config

    kw = dict(dataset="shapes", data_root="data/shapes", runs_dir=tmp_path)
    plain = run_config("response", 0, **kw).resolved()
    hinton = run_config("response_t2", 0, **kw).resolved()
    differ = {k for k, v in plain.__dict__.items() if hinton.__dict__[k] != v}
    assert differ == {"out", "scale_by_t2"} and plain.temperature != 1  # T² = 1 would show nothing
    g = torch.Generator().manual_seed(0)
    zs, zt = 3 * torch.randn(2, 21, 6, 6, generator=g), 3 * torch.randn(2, 21, 6, 6, generator=g)
    y = torch.randint(0, 21, (2, 6, 6), generator=g)
    y[0, :2] = VOID

    # by hand: soft-target cross entropy over the valid pixels, its gradient w·(p_s - p_t)/T
    t, valid = plain.temperature, (y != VOID).numpy()
    zs_np, zt_np = zs.double().numpy(), zt.double().numpy()
    p_s, p_t = _softmax(zs_np / t), _softmax(zt_np / t)
    w = valid / valid.sum()
    soft = float((-(p_t * np.log(p_s)).sum(1) * w).sum())
    soft_grad = w[:, None] * (p_s - p_t) / t
    p = _softmax(zs_np)
    label = np.where(valid, y.numpy(), 0)
    ce = float((-np.log(np.take_along_axis(p, label[:, None], 1)[:, 0]) * w).sum())
    onehot = np.eye(21)[label].transpose(0, 3, 1, 2)
    ce_grad = w[:, None] * (p - onehot)

    results = {}
    for name, cfg in (("response", plain), ("response_t2", hinton)):
        cfg = Config(**{**cfg.__dict__, "channels_last": False})
        student = FixedLogits(zs)
        optimizer = torch.optim.SGD(student.parameters(), lr=0.0)
        parts = train_step(cfg, student, None, optimizer, torch.zeros(2, 3, 6, 6), y, cached=zt)
        results[name] = (parts, student.logits.grad.double().numpy())
    factor = {"response": 1.0, "response_t2": t * t}
    for name, (parts, grad) in results.items():
        term = soft * factor[name]
        assert float(parts["response"]) == pytest.approx(term, rel=1e-5), name
        assert float(parts["total"]) == pytest.approx(plain.alpha * ce + plain.beta * term, rel=1e-5), name
        expected = plain.alpha * ce_grad + plain.beta * factor[name] * soft_grad
        np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-9, err_msg=name)
    # the two runs' gradients differ by β·(T² - 1) times the soft term's: nothing else changed
    np.testing.assert_allclose(
        results["response_t2"][1] - results["response"][1], plain.beta * (t * t - 1) * soft_grad, atol=1e-7
    )


@pytest.fixture(scope="module")
def models(tiny_teacher):
    from kdlib.checkpoints import load_model
    from kdlib.models import TeacherWrapper, build_model

    torch.manual_seed(0)
    return build_model("student"), TeacherWrapper(load_model(tiny_teacher))


@pytest.mark.parametrize("method, term", [(m, t) for m in KD_METHODS for t in METHODS[m].terms])
def test_every_distillation_term_sends_the_student_a_gradient(models, tmp_path, method, term):
    """Each term of each method alone (α = 0, the method's other terms left out), through the
    trainer's step with the run's own settings: its gradient must reach the student's first
    layer (every term reads something the stem computes) and, for a feature term, every
    projection, or every adapter of a term that reads the student's adapted features."""
    import copy
    import dataclasses

    from kdlib.profiles import run_config

    student, teacher = (copy.deepcopy(m) for m in models)
    cfg = run_config(method, 0, dataset="shapes", data_root="data/shapes", runs_dir=tmp_path)
    cfg = dataclasses.replace(cfg, alpha=0.0, channels_last=False).resolved()
    declared = METHODS[method]
    alone = methods.Objective(
        dataclasses.replace(declared, terms={term: declared.terms[term]}), 0.0, cfg.beta, cfg.temperature
    )
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(2, 3, 64, 64, generator=g), torch.randint(0, 21, (2, 64, 64), generator=g)
    adapters = build_adapters(declared, student, teacher, "cpu")
    params = list(student.parameters()) + kd_parameters(declared, teacher, adapters)
    optimizer = torch.optim.SGD(params, lr=0.0)
    parts = train_step(cfg, student, teacher, optimizer, x, y, objective=alone, adapters=adapters)
    assert float(parts["total"]) > 0 and set(parts) == {"ce", term, "total"}

    def norm(p):
        return 0.0 if p.grad is None else float(p.grad.abs().sum())

    assert norm(student.stem[0][0].weight) > 0, "no gradient reaches the student's stem"
    assert sum(norm(p) for p in student.parameters()) > 0
    if term == "feature":
        weights = [m.weight for m in teacher.projections.modules() if isinstance(m, nn.Conv2d)]
        assert len(weights) == 4 and all(norm(w) > 0 for w in weights), "a projection gets no gradient"
    if term in ("feature_student", "cirkd_region"):  # 4 levels' 1×1 convs; CIRKD's head has 2
        weights = [m.weight for m in adapters.modules() if isinstance(m, nn.Conv2d)]
        assert len(weights) == {"feature_student": 4, "cirkd_region": 2}[term]
        assert all(norm(w) > 0 for w in weights), "an adapter gets no gradient"


MASKED_TERMS = {  # loss function -> the argument holding the pixels it averages over
    "response_kd_loss": "valid_mask",
    "feature_kd_loss": "valid_mask",
    "cwd_loss": "valid_mask",
    "dist_loss": "valid_mask",
    "response_ls_loss": "valid_mask",
    "cirkd_region_loss": "valid_mask",
}


@pytest.mark.parametrize("method, cached", [(m, False) for m in KD_METHODS] + [("response", True)])
def test_unlabeled_images_reach_every_distillation_term_and_never_the_cross_entropy(
    tiny_shapes, tiny_teacher, tmp_path, monkeypatch, method, cached
):
    """Through ``fit``'s own epoch loop: each training step's cross entropy sees the labelled
    images' non-void pixels only, and each distillation term sees those plus every pixel of
    the unlabeled images (pair-wise KD, attention transfer and CIRKD's pixel-to-pixel term, which
    mask nothing, see their features; CIRKD's pixel-to-region term takes its regions from the labels)."""
    calls = []

    def spy(name, original):
        signature = inspect.signature(original)

        def wrapper(*args, **kwargs):
            if torch.is_grad_enabled():  # the training step, not evaluation
                calls.append((name, signature.bind(*args, **kwargs).arguments))
            return original(*args, **kwargs)

        return wrapper

    for name in (*MASKED_TERMS, "pairwise_loss", "attention_transfer_loss", "cirkd_pixel_loss", "supervised_loss"):
        monkeypatch.setattr(losses, name, spy(name, getattr(losses, name)))
    batch = 4
    extra = {"teacher_cache": str(tmp_path / "cache")} if cached else {}
    fit(
        Config(
            method=method,
            dataset="shapes",
            data_root=str(tiny_shapes),
            out=str(tmp_path / "run"),
            epochs=1,
            max_batches=2,
            batch_size=batch,
            workers=0,
            teacher_weights=str(tiny_teacher),
            unlabeled_split="teacher_train",
            progress="none",
            **extra,
        )
    )
    steps = [args for name, args in calls if name == "supervised_loss"]
    assert len(steps) == 2
    terms = [(name, args) for name, args in calls if name != "supervised_loss"]
    assert len(terms) == 2 * len(METHODS[method].terms), [n for n, _ in terms]
    for i, (name, args) in enumerate(terms):
        target = steps[i // (len(terms) // 2)]["target"]
        assert target.shape[0] == 2 * batch  # as many unlabeled images as labelled ones
        labelled_pixels = int((target[:batch] != VOID).sum())
        assert labelled_pixels > 0 and bool((target[batch:] == VOID).all())  # no cross entropy on them
        if name in ("pairwise_loss", "cirkd_pixel_loss"):
            assert args["student_feature"].shape[0] == args["teacher_feature"].shape[0] == 2 * batch
            continue
        if name == "attention_transfer_loss":  # whole-image maps: it masks nothing either
            assert all(f.shape[0] == 2 * batch for f in (*args["student_features"], *args["teacher_features"]))
            continue
        mask = args[MASKED_TERMS[name]]
        assert mask is not None and mask.shape == target.shape, name
        assert int(mask.sum()) == labelled_pixels + batch * target.shape[1] * target.shape[2], name
        assert torch.equal(mask[:batch], target[:batch] != VOID), name
        if name == "cirkd_region_loss":  # its regions come from the labels: none on unlabeled images
            assert torch.equal(args["labels"], target)
