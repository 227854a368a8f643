"""The statistics of a comparison: each method against no KD paired by seed (intervals,
t-test, Holm, Wilcoxon), mean ± std per method, and whether each run converged."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from .methods import run_names


def holm(pvalues) -> list[float]:
    """Holm's step-down correction of ``pvalues`` for testing them together (family-wise error):
    the k-th smallest is multiplied by (m - k + 1), and the results are kept non-decreasing."""
    tested = sorted((i for i, p in enumerate(pvalues) if not math.isnan(p)), key=lambda i: pvalues[i])
    adjusted, running = [math.nan] * len(pvalues), 0.0  # a NaN (no test) is not one of the family
    for rank, i in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def _paired_tests(d: np.ndarray) -> tuple[float, float, float]:
    """(95 % CI half-width, paired t-test p, Wilcoxon signed-rank p) of per-seed differences."""
    from scipy import stats

    n, sd = len(d), float(d.std(ddof=1))
    half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    if sd <= 1e-12 * max(1.0, abs(float(d.mean()))):  # identical differences: t is infinite (or 0/0)
        p_t = 1.0 if d.mean() == 0 else 0.0
    else:
        p_t = float(stats.ttest_1samp(d, 0.0).pvalue)
    p_w = float(stats.wilcoxon(d).pvalue) if np.any(d != 0) else 1.0
    return half, p_t, p_w


LARGER = "larger than seed noise"


NOT_AFTER_HOLM = f"{LARGER}, not after Holm"
ONE_SEED = "one seed: no verdict"  # a difference of one pair has no interval


def _kernel_classes(runs: pd.DataFrame, names, seeds) -> set:
    """The classes of arithmetic (``kernels``: :func:`kdlib.cpu_kernels.kernel_class`) of the
    paired runs; a table without that column counts as one class."""
    if "kernels" not in runs:
        return set()
    return set(runs[runs["run"].isin(names) & runs["seed"].isin(seeds)]["kernels"])


def paired_comparison(runs: pd.DataFrame, baseline: str = "none", metric: str = "miou") -> pd.DataFrame:
    """Each method against ``baseline``, paired by seed: mean difference, its 95 % confidence
    interval (Student's t over the per-seed differences, n-1 degrees of freedom, quantile from
    ``scipy.stats``) and whether it excludes 0, i.e. whether the difference is larger than seed
    noise. The interval's half-width, ``detectable``, is the smallest difference this design
    (these seeds, this spread) can tell from zero. ``same_kernels`` says whether all the
    paired runs computed with one class of CPU kernels (a difference across classes also holds
    the hosts' drift: docs/reliability.md). Beside it: the paired t-test's p-value,
    that p corrected by Holm for all the methods of the table tested together (``p_holm``; a
    difference larger than seed noise whose corrected p is not below 0.05 has the verdict
    :data:`NOT_AFTER_HOLM`), and the Wilcoxon signed-rank test's p (no normality assumed; with
    6 seeds it cannot go below 0.031). With one seed nothing can be said."""
    base = runs[runs["run"] == baseline].set_index("seed")[metric]
    rows = []
    for name in runs["run"].unique():
        if name == baseline:
            continue
        other = runs[runs["run"] == name].set_index("seed")[metric]
        seeds = sorted(set(base.index) & set(other.index))
        classes = _kernel_classes(runs, [baseline, name], seeds)
        d = np.array([other[s] - base[s] for s in seeds])
        n = len(d)
        mean = float(d.mean()) if n else math.nan
        if n >= 2:
            half, p_t, p_w = _paired_tests(d)
            verdict = LARGER if abs(mean) > half else "within seed noise"
        else:
            half, p_t, p_w, verdict = math.nan, math.nan, math.nan, ONE_SEED
        rows.append(
            {
                "run": name,
                "vs": baseline,
                "seeds": n,
                "mean_diff": mean,
                "ci95_low": mean - half,
                "ci95_high": mean + half,
                "detectable": half,
                "p": p_t,
                "p_holm": math.nan,
                "p_wilcoxon": p_w,
                "verdict": verdict,
                "same_kernels": len(classes) <= 1,
            }
        )
    table = pd.DataFrame(rows)
    if not table.empty:
        table["p_holm"] = holm(table["p"].tolist())
        if len(table) > 1:  # the verdict of one comparison among many says whether it survives them
            lost = (table["verdict"] == LARGER) & ~(table["p_holm"] < 0.05)
            table.loc[lost, "verdict"] = NOT_AFTER_HOLM
    return table


CONVERGED_GAIN = 0.02  # a run has converged when its last quarter gains less than this


def convergence(history: pd.DataFrame, early_stopped: bool = False, gain: float = CONVERGED_GAIN) -> dict:
    """Whether one run trained to convergence: early stopping ended it, or the best val mIoU
    of its last quarter of epochs is less than ``gain`` above the best before it. Also the
    train mIoU at the best epoch (the whole training split, unaugmented): well above the val
    mIoU, the student is limited by its data rather than by its training."""
    miou = history["val_miou"].to_numpy()
    quarter = max(1, math.ceil(len(miou) / 4))
    before = float(np.nanmax(miou[:-quarter])) if len(miou) > quarter else math.nan
    last = float(np.nanmax(miou[-quarter:]))
    best = int(np.nanargmax(miou))
    train = history["train_miou"].to_numpy() if "train_miou" in history else np.full(len(miou), np.nan)
    return {
        "epochs": len(miou),
        "best_epoch": int(history["epoch"].iloc[best]),
        "val_miou": float(miou[best]),
        "train_miou": float(train[best]),
        "last_quarter_gain": last - before,
        "converged": bool(early_stopped or (last - before < gain)),
    }


def convergence_table(runs: pd.DataFrame) -> pd.DataFrame:
    """:func:`convergence` of every run in ``runs`` (a :func:`kdlib.results.collect_runs` table)."""
    import json

    rows = []
    for name, seed, folder in zip(runs["run"], runs["seed"], runs["folder"]):
        history = pd.read_csv(Path(folder) / "history.csv")
        stopped = json.loads((Path(folder) / "metrics.json").read_text()).get("early_stopped", False)
        rows.append({"run": name, "seed": seed, **convergence(history, stopped)})
    return pd.DataFrame(rows)


def summary_table(runs: pd.DataFrame, order=None) -> pd.DataFrame:
    """Section 4's table: mIoU mean ± std over seeds, epochs, mean training time per run. Rows in
    ``order``, by default the registry's (:func:`kdlib.methods.run_names`: the report's
    methods first), then any others as they appear."""

    g = runs.groupby("run")
    table = pd.DataFrame(
        {
            "seeds": g.size(),
            "miou_mean": g["miou"].mean(),
            "miou_std": g["miou"].std(ddof=1),
            "epochs_mean": g["epochs"].mean(),
            "seconds_mean": g["seconds"].mean(),
        }
    )
    if order is None:
        order = [*run_names(), *(m for m in runs["run"].unique() if m not in run_names())]
    return table.loc[[m for m in order if m in table.index]]
