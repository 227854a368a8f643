"""The method registry: one declaration is all a KD method needs. A toy method defined here,
outside kdlib, trains, is reported, plotted and benchmarked with no edit to kdlib."""

import json

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from kdlib import methods
from kdlib.conventions import VOID


def logit_mse(student_logits, teacher_logits, valid):
    """The toy term: mean squared difference of the two softmaxes over the valid pixels,
    L = 1/|V| · Σ_{p∈V} Σ_c (softmax(z_s(p))_c - softmax(z_t(p))_c)²."""
    diff = (F.softmax(student_logits.float(), 1) - F.softmax(teacher_logits.detach().float(), 1)).pow(2).sum(1)
    return (diff * valid).sum() / valid.sum().clamp_min(1)


TOY = methods.Method(
    "toy",
    "Toy logit MSE",
    {"alpha": 1.0, "beta": 2.0, "temperature": 1.0},
    "this test",
    reads=("logits",),
    terms={"toy": lambda s, t, y, seen, objective: logit_mse(s["out"], t["out"], seen)},
)


@pytest.fixture
def toy():
    methods.register(TOY)
    yield TOY
    del methods.METHODS["toy"], methods.VARIANTS["toy_unlabeled"]


def test_a_declaration_is_checked_and_names_are_unique():
    with pytest.raises(ValueError, match="the name 'cwd' is taken"):
        methods.register(methods.Method("cwd", "again", TOY.defaults, "x", reads=("logits",), terms=TOY.terms))
    with pytest.raises(ValueError, match="reads \\('logit',\\)"):
        methods.register(methods.Method("typo", "t", TOY.defaults, "x", reads=("logit",), terms=TOY.terms))
    with pytest.raises(ValueError, match="loss terms exactly when it reads the teacher"):
        methods.register(methods.Method("empty", "e", TOY.defaults, "x", reads=("logits",)))
    with pytest.raises(ValueError, match="adapters are built to the teacher's feature widths"):
        methods.register(methods.Method("blind", "b", TOY.defaults, "x", ("logits",), TOY.terms, adapters=print))
    assert not {"typo", "empty", "blind"} & set(methods.METHODS)
    with pytest.raises(ValueError, match="unknown method 'hint'; choose one of none, feature, response"):
        methods.get("hint")


def test_the_registry_is_what_the_report_declares():
    """The report's four methods and the three later ones, their defaults and their sources."""
    assert methods.names("report") == ("none", "feature", "response", "both")
    assert methods.names("new") == ("pairwise", "cwd", "dist", "response_ls", "at", "feature_student", "cirkd")
    assert methods.get("both").terms.keys() == {"response", "feature"} and methods.get("both").trains_projections
    # the two with adapters on the student's side; the teacher's projections do not train for them
    assert [m for m in methods.names() if methods.get(m).adapters is not None] == ["feature_student", "cirkd"]
    assert not any(methods.get(m).trains_projections for m in ("feature_student", "cirkd"))
    assert methods.get("cirkd").terms.keys() == {"response", "cirkd_pixel", "cirkd_region"}
    assert [m for m in methods.names() if methods.get(m).cacheable] == ["response", "cwd", "dist", "response_ls"]
    assert methods.method_of("cwd_unlabeled").name == "cwd" and methods.VARIANTS["cwd_unlabeled"].unlabeled
    assert methods.VARIANTS["response_t2"].overrides == {"scale_by_t2": True}
    names = methods.run_names()
    assert names.index("dist") < names.index("response_t2") < names.index("response_unlabeled")


def test_a_method_registered_outside_kdlib_trains_reports_plots_and_benchmarks(
    toy, tiny_shapes, tiny_teacher, tmp_path, capsys
):
    from kdlib import plots, report
    from kdlib.cli import main
    from kdlib.config import Config
    from kdlib.results import collect_runs
    from kdlib.train import fit

    # its objective: α·CE + β·L_toy with its own defaults, on the pixels it may see
    g = torch.Generator().manual_seed(0)
    s, t = {"out": torch.randn(2, 21, 8, 8, generator=g)}, {"out": torch.randn(2, 21, 8, 8, generator=g)}
    y = torch.randint(0, 21, (2, 8, 8), generator=g)
    y[0, 0] = VOID
    total, parts = methods.distillation_loss("toy", s, t, y)
    by_hand = F.cross_entropy(s["out"], y, ignore_index=VOID) + 2.0 * logit_mse(s["out"], t["out"], y != VOID)
    assert set(parts) == {"ce", "toy", "total"} and float(total) == pytest.approx(float(by_hand), rel=1e-6)

    # trains: its settings recorded, its term a column of the history
    runs = tmp_path / "runs"
    for name in ("none", "toy"):
        for seed in (0, 1):
            out = runs / name / f"seed{seed}"
            cfg = Config(method=name, dataset="shapes", data_root=str(tiny_shapes), out=str(out), epochs=2, seed=seed)
            fit(cfg, batch_size=4, workers=0, teacher_weights=str(tiny_teacher), progress="none")
    config = json.loads((runs / "toy" / "seed0" / "config.json").read_text())
    assert (config["method"], config["alpha"], config["beta"], config["temperature"]) == ("toy", 1.0, 2.0, 1.0)
    history = pd.read_csv(runs / "toy" / "seed0" / "history.csv")
    assert history["train_toy"].notna().all() and history["val_toy"].notna().all()
    assert pd.read_csv(runs / "none" / "seed0" / "history.csv")["train_toy"].isna().all()
    assert len(collect_runs(runs, ["toy"])) == 2

    # reported: a row with its name, weights and target, and a paired verdict
    text = report.build_report(runs, tmp_path / "figures", tmp_path / "report", "shapes").read_text()
    assert "| Toy logit MSE | make methods | 1 / 2 / 1 | " in text
    assert "- **Toy logit MSE** " in text
    assert "`toy` (`" in text  # Section 2 lists its term, whose formula kdlib cannot know

    # plotted: its term has a loss panel of its own
    fig = plots.loss_curves(history, "toy")
    assert [ax.get_title() for ax in fig.axes] == ["total loss", "cross entropy", "toy KD term", "mIoU"]

    # benchmarked: timed, with its KD overhead, like the built-in methods
    bench = tmp_path / "bench.json"
    args = ["bench", "--setting", "shapes", "--data-root", str(tiny_shapes), "--batch-size", "4", "--repeats", "2"]
    assert main(args + ["--workers", "0", "--teacher-weights", str(tiny_teacher), "--out", str(bench)]) == 0
    result = json.loads(bench.read_text())
    assert (
        "toy" in result["kd_overhead_ratio"]["shapes"] and "toy" in result["settings"]["shapes"]["train_images_per_s"]
    )
    assert "\ntoy " in capsys.readouterr().out


def test_every_term_names_the_loss_it_computes_and_that_loss_states_its_formula():
    from kdlib import losses, methods

    for name in methods.names():
        for term, fn in methods.get(name).terms.items():
            assert callable(getattr(losses, fn.loss)), (name, term)
            assert losses.formula(getattr(losses, fn.loss)), (name, term)
    # the block is the docstring's indented lines, nothing of the prose around them
    assert losses.formula(losses.feature_kd_loss) == "L_feature = 1/N · Σ_i mean_p (1 - cos(f_t^i(p), f_s^i(p)))"
    cwd = losses.formula(losses.cwd_loss).splitlines()
    assert len(cwd) == 2 and cwd[0].startswith("φ(z)_c,p =") and cwd[1].startswith("L_cwd = T²/(N·C)")
