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
import math
from pathlib import Path

import numpy as np
import pandas as pd

from .experiment import pending_runs, train_runs
from .profiles import prepare_data, profile_settings
from .results import collect_runs
from .stats import paired_comparison
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
    """``make budget``: every run of ``names`` at each budget factor in ``budgets`` on the demo's
    draw, side by side as the profile allows; 1 is the 1x runs (the demo's and ``make methods``'
    own, reused when finished). By default all of them, the 1x runs first; a list trains one part
    each (``make budget BUDGETS=4``), so that each part fits a sitting. A part trained without
    the 1x runs of this machine is read against the committed ones (of the same kernels, or
    said otherwise: :func:`budget_trend`)."""
    settings = profile_settings(profile)
    root = prepare_data("shapes", str(data_root), profile)
    kw = dict(dataset="shapes", data_root=str(root), profile=profile, device=device)
    factors = [1, *BUDGETS] if budgets is None else list(budgets)
    unplanned = [f for f in factors if f != 1 and f not in BUDGETS]
    if unplanned:
        planned = ", ".join(f"x{f}" for f in (1, *BUDGETS))
        raise ValueError(f"budget x{unplanned[0]} was not planned; the budgets are {planned} (docs/regime.md)")
    todo = []
    if 1 in factors:
        for name in names:
            todo += pending_runs(name, runs_dir=runs_dir, **kw)
    for factor in (f for f in factors if f != 1):
        seeds = BUDGETS[factor]
        for name in names:
            todo += pending_runs(
                name, runs_dir=budget_runs_dir(runs_dir, factor), seeds=seeds, **kw, **budget_settings(profile, factor)
            )
    train_runs(todo, settings.get("jobs", 1), "budget")


def teacher_on_draw(runs_dir, draw: int) -> dict | None:
    path = draw_runs_dir(runs_dir, draw) / "teacher_eval.json"
    return json.loads(path.read_text()) if path.is_file() else None


# --------------------------------------------------------------------------- reading the runs

BEATS, WORSE, UNRESOLVED = "beats no KD", "worse than no KD", "no resolved difference"
NO_BASELINE, ONE_SEED = "no KD not trained on these seeds", "fewer than 2 paired seeds"


def verdict(row) -> str:
    """The rule of docs/regime.md for one paired row (:func:`kdlib.stats.paired_comparison`):
    the 95 % interval of the paired difference on one side of 0 and Holm's p below 0.05."""
    if row["seeds"] == 0:
        return NO_BASELINE
    if row["seeds"] < 2:
        return ONE_SEED
    if not row["p_holm"] < 0.05:
        return UNRESOLVED
    if row["ci95_low"] > 0:
        return BEATS
    if row["ci95_high"] < 0:
        return WORSE
    return UNRESOLVED


def holm_over_the_plan(pvalues) -> list[float]:
    """Holm's correction over the five KD methods docs/regime.md fixed, whatever subset of them
    has a p-value yet: a method not (yet) tested counts as p = 1, so a partly trained condition
    is corrected as strictly as a complete one."""
    from .stats import holm

    family = len(METHODS) - 1
    padded = list(pvalues) + [1.0] * max(0, family - len(pvalues))
    return holm([1.0 if math.isnan(p) else p for p in padded])[: len(pvalues)]


def _paired(runs: pd.DataFrame) -> pd.DataFrame:
    """Each KD method of ``runs`` against no KD, Holm over the plan's five, and the verdict."""
    if runs.empty:
        return pd.DataFrame()
    table = paired_comparison(runs[runs["run"].isin(METHODS)])
    if table.empty:
        return table
    table["p_holm"] = holm_over_the_plan(table["p"].tolist())
    return table.assign(verdict=[verdict(r) for _, r in table.iterrows()])


def this_machine_replaces(mine: pd.DataFrame, theirs: pd.DataFrame) -> bool:
    """Whether this machine's finished runs of one condition (``mine``) take the place of the
    committed ones (``theirs``): all together or not at all, when every method of
    :data:`METHODS` has at least as many seeds here. A part cut off half way, or no KD retrained
    alone, replaces nothing, so that every pairing within a condition stays between runs of one
    machine (CPU kernels move a run: docs/reliability.md)."""
    if mine.empty:
        return False
    return all((mine["run"] == n).sum() >= (theirs["run"] == n).sum() for n in METHODS)


def condition_runs(folder, committed) -> pd.DataFrame:
    """The finished runs of :data:`METHODS` of one condition: this machine's under ``folder`` or
    the committed ones under ``committed`` (the same layout; only those trained in the same
    regime as this machine's, :func:`kdlib.results.same_regime`), all from one source as
    :func:`this_machine_replaces` decides. ``source`` says which. The report reads a condition
    and commits it (``report._trace_conditions``) by this one decision."""
    from .results import regime, same_regime

    here = collect_runs(folder, METHODS).assign(source="this machine")
    there = (collect_runs(committed, METHODS) if committed is not None else here.iloc[0:0]).assign(source="committed")
    if not here.empty and not there.empty:
        ours = regime(here["folder"].iloc[0])
        there = there[[same_regime(regime(f), ours) for f in there["folder"]]]
    return (here if this_machine_replaces(here, there) or there.empty else there).reset_index(drop=True)


def _demo_runs(runs_dir, committed_dir) -> pd.DataFrame:
    """The demo's own runs (draw 0 at 1x) as the results table reads them."""
    from .results import collect_with_committed

    if committed_dir is None:
        return collect_runs(runs_dir, METHODS).assign(source="this machine")
    return collect_with_committed(runs_dir, committed_dir, METHODS)


def draw_runs(runs_dir, committed_dir=None) -> dict[int, pd.DataFrame]:
    """Draw -> its finished runs: draw 0 is the demo's own (``runs_dir``), each other draw its
    ``draws/draw<d>`` folder (or the committed one under ``committed_dir``)."""
    out = {0: _demo_runs(runs_dir, committed_dir)}
    for draw in DRAWS:
        committed = None if committed_dir is None else draw_runs_dir(committed_dir, draw)
        out[draw] = condition_runs(draw_runs_dir(runs_dir, draw), committed)
    return out


def budget_runs(runs_dir, committed_dir=None) -> dict[int, pd.DataFrame]:
    """Budget factor -> its finished runs (1: the demo's own)."""
    out = {1: _demo_runs(runs_dir, committed_dir)}
    for factor in BUDGETS:
        committed = None if committed_dir is None else budget_runs_dir(committed_dir, factor)
        out[factor] = condition_runs(budget_runs_dir(runs_dir, factor), committed)
    return out


def per_condition(tables: dict[int, pd.DataFrame], label: str) -> pd.DataFrame:
    """One row per (condition, KD method): its mean mIoU, no KD's on the same seeds, the paired
    difference with its interval and detectable difference, Holm's p and the verdict."""
    rows = []
    for key, runs in tables.items():
        paired = _paired(runs)
        for _, r in paired.iterrows():
            rows.append(
                {
                    label: key,
                    "run": r["run"],
                    "seeds": int(r["seeds"]),
                    "mean_diff": r["mean_diff"],
                    "ci95_low": r["ci95_low"],
                    "ci95_high": r["ci95_high"],
                    "detectable": r["detectable"],
                    "p_holm": r["p_holm"],
                    "verdict": r["verdict"],
                    "same_kernels": bool(r.get("same_kernels", True)),
                }
            )
    return pd.DataFrame(rows)


def across_draws(table: pd.DataFrame) -> pd.DataFrame:
    """Per KD method, its verdict on every draw and whether it is the same on all of them
    (only when every draw has the method)."""
    if table.empty:
        return pd.DataFrame(columns=[*(f"draw {d}" for d in (0, *DRAWS)), "holds on every draw"])
    table = table[~table["verdict"].isin([NO_BASELINE, ONE_SEED])]  # no verdict on that draw yet
    wide = table.pivot(index="run", columns="draw", values="verdict")
    draws = [0, *DRAWS]
    wide = wide.reindex(columns=draws)
    complete = wide.notna().all(axis=1)
    holds = complete & wide.nunique(axis=1).eq(1)
    out = wide.rename(columns=lambda d: f"draw {d}")
    out["holds on every draw"] = [
        "yes" if h else ("no" if c else "not every draw trained") for h, c in zip(holds, complete)
    ]
    return out.reindex([m for m in METHODS if m in out.index])


def draw_heterogeneity(tables: dict[int, pd.DataFrame]) -> pd.DataFrame:
    """Per KD method, whether the size of its paired difference to no KD changes from draw to
    draw, which a verdict per draw cannot tell (the same "beats" can hide a gain three times
    another). The draws share their seeds (a seed fixes the student's initialisation and the
    order of its batches on every draw), so the test is an analysis of variance of the per-seed
    differences with the draws as treatments and the seeds as blocks, on the seeds every draw
    has: ``F`` = the draws' mean square over the residual one, with (draws - 1) and
    (draws - 1)(seeds - 1) degrees of freedom, its ``p`` and ``p_holm`` over the plan's five
    methods; the draws with the ``highest`` and ``lowest`` mean difference (signed: for a method
    worse than no KD, the highest is the least harm). Needs two draws and two seeds.
    ``same_kernels``: whether all those runs computed with one class of CPU kernels; across
    classes a difference between draws also holds the kernels' drift. A reading added after the
    draws' runs were seen, not one of docs/regime.md's rules (it says so)."""
    from scipy import stats as st

    from .stats import _kernel_classes

    rows = []
    for name in METHODS[1:]:
        have = {draw: set(_paired_seeds(runs, name)) for draw, runs in tables.items()}
        seeds = sorted(set.intersection(*have.values())) if have else []
        if len(have) < 2 or len(seeds) < 2:
            continue
        # draws x seeds: each cell the seed's paired difference on that draw
        d = np.array([_differences(runs, name, seeds) for runs in tables.values()])
        k, n = d.shape
        grand = d.mean()
        between = n * ((d.mean(axis=1) - grand) ** 2).sum() / (k - 1)
        residual = d - d.mean(axis=1, keepdims=True) - d.mean(axis=0, keepdims=True) + grand
        within = (residual**2).sum() / ((k - 1) * (n - 1))
        f = between / within if within > 0 else math.nan
        means = dict(zip(tables, d.mean(axis=1)))
        classes = set().union(*(_kernel_classes(runs, ["none", name], seeds) for runs in tables.values()))
        rows.append(
            {
                "run": name,
                "draws": k,
                "seeds": n,
                "F": float(f),
                "p": float(st.f.sf(f, k - 1, (k - 1) * (n - 1))) if not math.isnan(f) else math.nan,
                "highest": max(means, key=means.get),
                "lowest": min(means, key=means.get),
                "same_kernels": len(classes) <= 1,
            }
        )
    columns = ["run", "draws", "seeds", "F", "p", "highest", "lowest", "same_kernels"]
    table = pd.DataFrame(rows, columns=columns)
    table["p_holm"] = holm_over_the_plan(table["p"].tolist()) if len(table) else []
    return table


def _differences(runs: pd.DataFrame, name: str, seeds) -> np.ndarray:
    """``name``'s mIoU minus no KD's on each of ``seeds`` (both finished on every one)."""
    return np.array([_miou(runs, name, s) - _miou(runs, "none", s) for s in seeds], dtype=float)


def _paired_seeds(runs: pd.DataFrame, name: str) -> list[int]:
    """The seeds on which both ``name`` and no KD finished: those a paired difference has."""
    have = [set(runs.loc[runs["run"] == n, "seed"]) for n in (name, "none")]
    return sorted(have[0] & have[1])


def verdicts_everywhere(
    draws: pd.DataFrame, budgets: pd.DataFrame, trend: pd.DataFrame, compute: pd.DataFrame
) -> pd.DataFrame:
    """Every KD method's paired comparison with no KD under every condition docs/regime.md
    planned, one row per (method, condition): the demo's (draw 0 at 1x: the budget table's, else
    the draws table's), each other draw, each longer budget (with its gain's ``trend`` from 1x,
    :func:`budget_trend`), and no KD given the same compute (:func:`matched_compute`). Columns:
    ``run``, ``condition``, ``seeds``, ``mean_diff``, ``detectable``, ``verdict`` (a verdict, or
    why there is none), ``same_kernels``, ``trend``, ``trend_same_kernels`` (whether the trend's runs
    at both budgets computed with one class of kernels). ``draws`` and ``budgets`` are
    :func:`per_condition` tables; :func:`holds` reads the result."""

    def hit(table: pd.DataFrame, **where) -> dict:
        if table.empty or any(k not in table for k in where):
            return {}
        rows = table[np.logical_and.reduce([table[k] == v for k, v in where.items()])]
        return rows.iloc[0].to_dict() if len(rows) else {}

    rows = []
    for name in METHODS[1:]:
        cells = [(DEMO, hit(budgets, budget=1, run=name) or hit(draws, draw=0, run=name), None)]
        cells += [(f"draw {d}", hit(draws, draw=d, run=name), None) for d in DRAWS]
        for f in BUDGETS:
            of_trend = hit(trend, budget=f"x{f}", run=name)
            moved = of_trend.get("trend")
            trended = moved if moved in ("grows", "holds", "shrinks") else None
            # the change from 1x pairs runs of two budgets: it may cross kernels where the verdict does not
            r = hit(budgets, budget=f, run=name) | {"trend_same_kernels": of_trend.get("same_kernels", True)}
            cells.append((f"{f}× steps", r, trended))
        cells.append((SAME_COMPUTE, hit(compute, run=name), None))
        for condition, r, moved in cells:
            rows.append(
                {
                    "run": name,
                    "condition": condition,
                    "seeds": r.get("seeds", 0),
                    "mean_diff": r.get("mean_diff", math.nan),
                    "detectable": r.get("detectable", math.nan),
                    "verdict": r.get("verdict", NOT_MEASURED),
                    "same_kernels": bool(r.get("same_kernels", True)),
                    "trend": moved,
                    "trend_same_kernels": bool(r.get("trend_same_kernels", True)),
                }
            )
    return pd.DataFrame(rows)


NOT_MEASURED = "not measured"
VERDICTS = (BEATS, WORSE, UNRESOLVED)
DEMO, SAME_COMPUTE = "the demo", "the same compute"  # the conditions' names beside "draw <d>", "<f>× steps"


def holds(everywhere: pd.DataFrame) -> pd.DataFrame:
    """Per KD method of :func:`verdicts_everywhere`'s table, whether its demo verdict holds on
    the other draws and at the longer budgets, read two ways. ``strict``: the same verdict in
    every measured draw and budget. ``by_rules``: by the rules docs/regime.md fixed before the
    runs for each condition, read together afterwards (its section says so): a departure is
    another verdict on another draw; at a longer budget a gain that grows or shrinks (the
    budget-trend rule) or a verdict on the other side of no KD, or a resolved one where the demo's
    was not (one that only loses its resolution there, with fewer seeds, is no departure by
    itself). Each is "yes", "yes so far" (a condition not measured yet) or "no: " and the
    departures; "the demo's verdict not measured" without one. The same compute is not one of
    these conditions: it asks another question (does distillation beat training no KD longer?),
    which its own verdict answers; a method that does not beat no KD at equal steps and loses to
    it given more compute has not changed its verdict."""
    out = []
    for name, of in everywhere.groupby("run", sort=False):
        by = of.set_index("condition")
        demo = by.loc[DEMO, "verdict"]
        if demo not in VERDICTS:
            missing = "the demo's verdict not measured"
            out.append({"run": name, "strict": missing, "by_rules": missing})
            continue
        others = by.drop(index=[DEMO, SAME_COMPUTE], errors="ignore")
        budget = others.index.str.endswith("steps")
        measured = others[others["verdict"].isin(VERDICTS)]
        unmeasured = (~others["verdict"].isin(VERDICTS)).sum() + (others["trend"].isna() & budget).sum()
        strict = [f"{c}: {v}" for c, v in measured["verdict"].items() if v != demo]
        rules = []
        for c, r in measured.iterrows():
            if c.endswith("steps") and r["trend"] in ("grows", "shrinks"):
                rules.append(f"{c}: gain {'grew' if r['trend'] == 'grows' else 'shrank'}")
            lost = c.endswith("steps") and demo in (BEATS, WORSE) and r["verdict"] == UNRESOLVED
            if r["verdict"] != demo and not lost:  # at a longer budget, a lost resolution alone is none
                rules.append(f"{c}: {r['verdict']}")
        out.append({"run": name, "strict": _departures(strict, unmeasured), "by_rules": _departures(rules, unmeasured)})
    return pd.DataFrame(out)


def _departures(departures: list[str], unmeasured: int) -> str:
    return "no: " + "; ".join(departures) if departures else ("yes so far" if unmeasured else "yes")


def budget_trend(tables: dict[int, pd.DataFrame]) -> pd.DataFrame:
    """Per KD method and longer budget: the change of its paired gain over no KD from 1x to that
    budget on the seeds both budgets have, its 95 % interval, and grows / holds / shrinks.
    ``same_kernels``: whether the four runs of every seed (no KD and the method, at both budgets)
    computed with one class of CPU kernels; a change across classes also holds the hosts' drift."""
    from .stats import _kernel_classes, _paired_tests

    rows = []
    base = tables[1]
    for factor in BUDGETS:
        longer = tables[factor]
        for name in METHODS[1:]:
            seeds = sorted(set(_paired_seeds(base, name)) & set(_paired_seeds(longer, name)))
            d = _differences(longer, name, seeds) - _differences(base, name, seeds)
            classes = set().union(*(_kernel_classes(t, ["none", name], seeds) for t in (base, longer)))
            kernels = {"same_kernels": len(classes) <= 1}
            if len(d) < 2:
                rows.append({"budget": f"x{factor}", "run": name, "seeds": len(d)} | _TREND_NONE | kernels)
                continue
            half, p, _ = _paired_tests(d)
            mean = float(d.mean())
            if d.std(ddof=1) < 1e-12:  # identical changes on every seed: no interval, only the sign
                half = 0.0
            tiny = abs(mean) < 1e-9  # floating-point noise is no trend
            trend = "holds" if tiny else "grows" if mean - half > 0 else "shrinks" if mean + half < 0 else "holds"
            rows.append(
                {
                    "budget": f"x{factor}",
                    "run": name,
                    "seeds": len(d),
                    "gain_change": mean,
                    "ci95_low": mean - half,
                    "ci95_high": mean + half,
                    "detectable": half,
                    "trend": trend,
                }
                | kernels
            )
    return pd.DataFrame(rows)


_TREND_NONE = {
    "gain_change": math.nan,
    "ci95_low": math.nan,
    "ci95_high": math.nan,
    "detectable": math.nan,
    "trend": "fewer than 2 seeds",
}


def best_over_last(runs: pd.DataFrame, name: str = "none") -> float:
    """The mean over ``name``'s runs of its best epoch's val mIoU minus its last epoch's
    (``history.csv``): what choosing the best of the epochs on the split it reports adds, which
    grows with the number of epochs it chooses from."""
    from .results import load_history

    gaps = []
    for _, r in runs[runs["run"] == name].iterrows():
        gaps.append(float(r["miou"]) - float(load_history(r["folder"])["val_miou"].iloc[-1]))
    return float(np.mean(gaps)) if gaps else math.nan


def _miou(runs: pd.DataFrame, name: str, seed: int) -> float:
    hit = runs[(runs["run"] == name) & (runs["seed"] == seed)]
    if hit.empty:
        raise KeyError((name, seed))
    return float(hit["miou"].iloc[0])


def with_compute(runs: pd.DataFrame) -> pd.DataFrame:
    """``runs`` with each run's training compute (CPU seconds), images/s over it, and the
    machine it was measured on (platform and torch). Compute counts only for a run trained on one
    thread (one process's CPU time is then its own work, whatever ran beside it); NaN otherwise,
    and for a run recorded before kdlib measured it."""
    compute, rates, machines = [], [], []
    for folder in runs["folder"]:
        history = pd.read_csv(Path(folder) / "history.csv")
        config = json.loads((Path(folder) / "config.json").read_text())
        env = config.get("environment", {})
        one_thread = env.get("cpu_threads") == 1
        seconds = (
            float(history["train_cpu_seconds"].sum()) if "train_cpu_seconds" in history and one_thread else math.nan
        )
        images = config.get("split_sizes", {}).get(config.get("train_split"), math.nan)
        images = images * config.get("train_repeats", 1) * len(history)
        compute.append(seconds)
        rates.append(images / seconds if seconds > 0 else math.nan)
        machines.append(f"{env.get('platform')} torch {env.get('torch')}")
    return runs.assign(compute_s=compute, images_per_cpu_s=rates, machine=machines)


def _reached(base_s: pd.Series, mine_s: pd.Series, seeds) -> dict:
    """On how many of the paired ``seeds`` no KD's own run had at least the KD run's compute
    (``seeds_reached``), of those whose two times were both recorded (``seeds_timed``): the rule
    matches medians, this says how far each seed's own pair meets it."""
    timed = [s for s in seeds if pd.notna(base_s[s]) and pd.notna(mine_s[s])]
    return {"seeds_reached": sum(base_s[s] >= mine_s[s] for s in timed), "seeds_timed": len(timed)}


def compute_spread(tables: dict[int, pd.DataFrame]) -> pd.DataFrame:
    """Per method, the median training CPU seconds of one epoch at each budget (runs of the 1x
    runs' machine only) and ``spread``, the largest over the smallest minus 1. An epoch is the
    same work at every budget, so the spread is the measurement's own noise across conditions:
    a compute match closer than it is no closer than the clock can tell."""
    timed = {f: with_compute(t) for f, t in tables.items() if not t.empty}
    if 1 not in timed or timed[1]["compute_s"].isna().all():
        return pd.DataFrame(columns=["run", "spread"])
    machine = timed[1].loc[timed[1]["compute_s"].notna(), "machine"].mode().iloc[0]  # of the timed runs
    rows = []
    for name in METHODS:
        per_epoch = {}
        for f, t in timed.items():
            mine = t[(t["run"] == name) & (t["machine"] == machine) & t["compute_s"].notna()]
            if len(mine):
                per_epoch[f] = float((mine["compute_s"] / mine["epochs"]).median())
        if len(per_epoch) >= 2:
            rows.append({"run": name, **{f"x{f}": v for f, v in per_epoch.items()}}
                        | {"spread": max(per_epoch.values()) / min(per_epoch.values()) - 1})  # fmt: skip
    return pd.DataFrame(rows)


def matched_compute(tables: dict[int, pd.DataFrame]) -> pd.DataFrame:
    """Each KD method at 1x beside no KD at the smallest budget whose median training compute is
    at least the method's median, paired by seed, Holm over the methods compared (the rule of
    docs/regime.md). Where no budget of no KD reaches a method's compute, its row says so."""
    from .stats import _paired_tests

    timed = {f: with_compute(t) for f, t in tables.items()}
    rows = []
    for name in METHODS[1:]:
        kd = timed[1][timed[1]["run"] == name]
        if kd.empty:
            continue
        machine = kd["machine"].mode().iloc[0]  # CPU seconds compare only on one machine
        none_at = {f: t[(t["run"] == "none") & (t["machine"] == machine)] for f, t in timed.items()}
        medians = {f: float(n["compute_s"].median()) for f, n in none_at.items() if n["compute_s"].notna().any()}
        need = float(kd["compute_s"].median())
        factor = next((f for f in sorted(medians) if medians[f] >= need), None)
        longer = [f for f in timed if f > 1 and (timed[f]["run"] == "none").any()]
        if math.isnan(need):
            unmatched = "its training compute was not recorded"
        elif not any(f > 1 for f in medians) and longer:  # CPU seconds of two hosts do not compare
            unmatched = "no KD's longer budgets ran on another host"
        else:
            unmatched = "no budget of no KD reaches it"
        row = {"run": name, "compute_s": need, "images_per_cpu_s": float(kd["images_per_cpu_s"].median())}
        if factor is None:
            nothing = dict.fromkeys(
                ("none_compute_s", "mean_diff", "ci95_low", "ci95_high", "detectable", "p", "compute_ratio"), math.nan
            )
            rows.append(
                row | nothing | {"none_budget": math.nan, "seeds": 0, "seeds_reached": 0, "seeds_timed": 0}
                | {"verdict": unmatched}
            )  # fmt: skip
            continue
        base, base_s = (none_at[factor].set_index("seed")[k] for k in ("miou", "compute_s"))
        mine, mine_s = (kd.set_index("seed")[k] for k in ("miou", "compute_s"))
        seeds = sorted(set(mine.index) & set(base.index))
        d = np.array([mine[s] - base[s] for s in seeds])
        half, p, _ = _paired_tests(d) if len(d) >= 2 else (math.nan, math.nan, math.nan)
        mean = float(d.mean()) if len(d) else math.nan
        rows.append(
            row
            | {"none_budget": factor, "none_compute_s": medians[factor], "seeds": len(d), "mean_diff": mean}
            | {"ci95_low": mean - half, "ci95_high": mean + half, "detectable": half, "p": p}
            # the rule matches medians; how far each seed's own pair meets it, for the reader
            | {"compute_ratio": medians[factor] / need}
            | _reached(base_s, mine_s, seeds)
        )
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    if "verdict" not in table:
        table["verdict"] = None
    tested = table["p"].notna()
    table["p_holm"] = math.nan
    table.loc[tested, "p_holm"] = holm_over_the_plan(table.loc[tested, "p"].tolist())
    for i, r in table.iterrows():
        if pd.isna(r["verdict"]):
            table.loc[i, "verdict"] = verdict(r) if tested[i] else ONE_SEED
    return table
