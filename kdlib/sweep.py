"""The hyper-parameter map (chapter 9, `make sweep`): every (T, β) cell of a method over a few
seeds, against no KD on the same seeds, written to ``sweep.csv``."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from . import methods
from .experiment import best_kd_method, pending_runs, train_method, train_runs
from .files import atomic_write_text
from .profiles import profile_settings
from .results import collect_runs, collect_with_committed, reused_line

# The hyper-parameter map (chapter 9, `make sweep`): every (T, β) over a few seeds.
SWEEP_TEMPERATURES = (1.0, 2.0, 4.0, 8.0)


SWEEP_BETAS = (0.1, 0.3, 0.5, 0.7)


SWEEP_SEEDS = (0, 1, 2)

# The methods whose best is swept beside response KD: the three later ones that were in the table
# when docs/regime.md fixed the rule, so that a method added afterwards does not move the committed map.
SWEEP_CANDIDATES = ("pairwise", "cwd", "dist")


SWEEP_COLUMNS = ["method", "temperature", "beta", "seed", "miou", "best_epoch", "epochs", "seconds"]


def report_cell() -> tuple[float, float]:
    """The report's own (T, β) cell of the map: Table 1's."""
    return methods.TABLE1["temperature"], methods.TABLE1["beta"]


def sweep_table(
    swept=None,
    *,
    dataset: str,
    data_root: str,
    runs_dir,
    committed_dir,
    table_path,
    profile: str = "demo",
    temperatures=SWEEP_TEMPERATURES,
    betas=SWEEP_BETAS,
    seeds=SWEEP_SEEDS,
    device: str = "cpu",
) -> pd.DataFrame:
    """`make sweep` (chapter 9): no KD on the sweep's seeds, then every (T, β) cell of each swept
    method (default: response KD and the best of :data:`SWEEP_CANDIDATES` in the table of
    this machine's and the committed runs, the rule docs/regime.md states), written to
    ``table_path`` (``sweep.csv``: the no-KD rows first, their T and β empty). Returns it."""
    kw = dict(dataset=dataset, data_root=data_root, profile=profile, device=device)
    none = train_method("none", runs_dir=runs_dir, seeds=seeds, **kw)
    if swept is None:
        swept = [
            "response",
            best_kd_method(collect_with_committed(runs_dir, committed_dir), among=SWEEP_CANDIDATES),
        ]
    maps = [sweep(m, runs_dir=runs_dir, temperatures=temperatures, betas=betas, seeds=seeds, **kw) for m in swept]
    baseline = none[none["seed"].isin(list(seeds))].rename(columns={"run": "method"})
    baseline = baseline.assign(temperature=math.nan, beta=math.nan)
    table = pd.concat([baseline, *maps], ignore_index=True)[SWEEP_COLUMNS]
    Path(table_path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(table.to_csv(index=False), Path(table_path))
    return table


def sweep_dir(runs_dir, temperature: float, beta: float) -> Path:
    return Path(runs_dir) / "sweep" / f"T{temperature:g}_b{beta:g}"


def sweep(
    method: str,
    *,
    dataset: str,
    data_root: str,
    runs_dir,
    profile: str = "demo",
    temperatures=SWEEP_TEMPERATURES,
    betas=SWEEP_BETAS,
    seeds=SWEEP_SEEDS,
    device: str = "cpu",
) -> pd.DataFrame:
    """Train ``method`` at every temperature × β (α as the method's default) for each seed,
    under ``<runs_dir>/sweep/T<T>_b<β>/<method>/seed<k>`` (finished runs are reused), all cells'
    runs side by side as the profile allows. One row per run: method, temperature, beta, seed,
    best val mIoU, best epoch, epochs, seconds."""
    settings = profile_settings(profile)
    todo, reused = [], []
    for t in temperatures:
        for b in betas:
            todo += pending_runs(
                method,
                dataset=dataset,
                data_root=data_root,
                runs_dir=sweep_dir(runs_dir, t, b),
                profile=profile,
                seeds=seeds,
                device=device,
                reused=reused,
                temperature=float(t),
                beta=float(b),
            )
    if reused:  # one line for all the cells, not one per run
        print(reused_line(f"{method} sweep", reused, Path(runs_dir) / "sweep"))
    train_runs(todo, settings.get("jobs", 1), f"{method} sweep")
    return sweep_results(method, runs_dir, temperatures, betas, seeds)


def sweep_results(method: str, runs_dir, temperatures=SWEEP_TEMPERATURES, betas=SWEEP_BETAS, seeds=SWEEP_SEEDS):
    """The finished runs of ``method``'s sweep, one row each (see :func:`sweep`); an interrupted
    run is left out."""
    rows = []
    for t in temperatures:
        for b in betas:
            runs = collect_runs(sweep_dir(runs_dir, t, b), [method])
            runs = runs[runs["seed"].isin(list(seeds))]
            rows += [
                {**r, "method": method, "temperature": float(t), "beta": float(b)} for r in runs.to_dict("records")
            ]
    table = pd.DataFrame(rows)
    return table.drop(columns=["run", "folder", "pixel_accuracy"], errors="ignore")
