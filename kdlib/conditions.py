"""The demo's verdicts under other conditions: other draws of the benchmark (``make draws``),
longer budgets (``make budget``) and the same training compute for no KD.

What each measurement is, and the rule that reads it, was decided before any of its runs
(docs/regime.md, "Other draws, longer budgets, the same compute"); the constants below are
those decisions, and the functions train and read the runs they name.

Layout, beside the demo's own runs (``<runs_dir>/<method>/seed<k>``, the 1x budget on draw 0):

- ``<runs_dir>/draws/draw<d>/<method>/seed<k>`` and the teacher's score on that draw,
  ``<runs_dir>/draws/draw<d>/teacher_eval.json``, trained on ``<data_root>-draw<d>``;
- ``<runs_dir>/budget/x<f>/<method>/seed<k>``: ``f`` times the demo's epochs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from .experiment import pending_runs, train_runs
from .profiles import prepare_data, profile_settings
from .teacher import evaluate_teacher

# The methods and seeds of every condition: no KD, the report's three, and cwd and dist.
METHODS = ("none", "response", "feature", "both", "cwd", "dist")
# Benchmark generator seeds of the other draws (the demo's benchmark is seed 0).
DRAWS = (1, 2)
# Budget factors (times the profile's epochs) and the seeds each trains (None: the profile's).
BUDGETS = {2: None, 4: (0, 1, 2)}


def draw_data_root(data_root, draw: int) -> Path:
    """Where draw ``draw`` of the benchmark lives: beside the demo's, ``<data_root>-draw<d>``."""
    root = Path(data_root)
    return root.with_name(f"{root.name}-draw{draw}")


def draw_runs_dir(runs_dir, draw: int) -> Path:
    return Path(runs_dir) / "draws" / f"draw{draw}"


def budget_runs_dir(runs_dir, factor: int) -> Path:
    return Path(runs_dir) / "budget" / f"x{factor}"


def budget_settings(profile: str, factor: int) -> dict:
    """A budget ``factor`` times the profile's: the epochs (the cosine schedule stretched with
    them) and early stopping's patience, so that it acts no more than in the profile's runs."""
    from .config import Config

    return {"epochs": profile_settings(profile)["epochs"] * factor, "early_stop": Config.early_stop * factor}


def train_draws(*, data_root, runs_dir, profile: str = "demo", device: str = "cpu", draws=DRAWS, names=METHODS):
    """``make draws``: every run of ``names`` on each other draw of the benchmark (generated
    when absent, seed ``draw``), side by side as the profile allows, then the shipped teacher
    scored on each draw's val split. Finished runs are reused, interrupted ones resumed."""
    settings = profile_settings(profile)
    todo = []
    for draw in draws:
        root = prepare_data("shapes", str(draw_data_root(data_root, draw)), profile, seed=draw)
        for name in names:
            todo += pending_runs(
                name, dataset="shapes", data_root=str(root), runs_dir=draw_runs_dir(runs_dir, draw),
                profile=profile, device=device,
            )  # fmt: skip
    train_runs(todo, settings.get("jobs", 1), "draws")
    for draw in draws:
        out = draw_runs_dir(runs_dir, draw)
        teacher = evaluate_teacher("shapes", draw_data_root(data_root, draw), device=device, report_dir=out)
        print(f"[draws] the teacher on draw {draw}: val mIoU {teacher['miou']:.4f} -> {out / 'teacher_eval.json'}")


def train_budgets(*, data_root, runs_dir, profile: str = "demo", device: str = "cpu", budgets=None, names=METHODS):
    """``make budget``: the 1x runs first (the demo's and ``make methods``' own, reused when
    finished), then every run of ``names`` at each budget factor in ``budgets`` (default: all of
    :data:`BUDGETS`) on the demo's draw, side by side as the profile allows."""
    settings = profile_settings(profile)
    root = prepare_data("shapes", str(data_root), profile)
    kw = dict(dataset="shapes", data_root=str(root), profile=profile, device=device)
    todo = []
    for name in names:
        todo += pending_runs(name, runs_dir=runs_dir, **kw)
    for factor in BUDGETS if budgets is None else budgets:
        if factor not in BUDGETS:
            raise ValueError(f"budget x{factor} was not planned; the budgets are {', '.join(f'x{f}' for f in BUDGETS)}")
        seeds = BUDGETS[factor]
        for name in names:
            todo += pending_runs(
                name, runs_dir=budget_runs_dir(runs_dir, factor), seeds=seeds, **kw, **budget_settings(profile, factor)
            )
    train_runs(todo, settings.get("jobs", 1), "budget")


def training_compute(run) -> float:
    """CPU seconds of a run's training steps, summed over its epochs (``train_cpu_seconds``;
    NaN for a run recorded before kdlib measured it)."""
    history = pd.read_csv(Path(run) / "history.csv")
    if "train_cpu_seconds" not in history:
        return float("nan")
    return float(history["train_cpu_seconds"].sum())


def teacher_on_draw(runs_dir, draw: int) -> dict | None:
    path = draw_runs_dir(runs_dir, draw) / "teacher_eval.json"
    return json.loads(path.read_text()) if path.is_file() else None
