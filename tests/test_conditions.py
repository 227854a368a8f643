"""The verdicts under other conditions (kdlib.conditions, docs/regime.md): what `make draws` and
`make budget` train, and how their runs are read. Expected values come from scipy and numpy on
the fixture's numbers, never from kdlib's own statistics."""

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

from kdlib import conditions, profiles, shapes

METHODS = conditions.METHODS


def write_run(folder, name, seed, miou, cpu_per_epoch=1.0, epochs=4, threads=1):
    """A finished run as kdlib writes it: metrics.json, config.json and history.csv."""
    folder.mkdir(parents=True, exist_ok=True)
    metrics = {"method": name, "seed": seed, "best_miou": miou, "pixel_accuracy": 0.9, "best_epoch": epochs}
    metrics |= {"epochs_run": epochs, "total_seconds": 10.0, "per_class_iou": [miou] * 21}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    config = {"method": name, "seed": seed, "epochs": epochs, "train_split": "train", "val_split": "val"}
    config |= {"split_sizes": {"train": 32, "val": 300}, "train_repeats": 8, "batch_size": 16}
    config |= {"environment": {"cpu_threads": threads, "platform": "Linux-x86_64", "torch": "2.14.1"}}
    (folder / "config.json").write_text(json.dumps(config))
    history = pd.DataFrame({"epoch": range(1, epochs + 1), "val_miou": [miou] * epochs})
    history["train_cpu_seconds"] = cpu_per_epoch
    history.to_csv(folder / "history.csv", index=False)


def write_condition(root, mious: dict, cpu: dict | None = None, epochs=4):
    """``mious``: run name -> one best mIoU per seed; ``cpu``: run name -> CPU s per epoch."""
    for name, values in mious.items():
        for seed, miou in enumerate(values):
            write_run(root / name / f"seed{seed}", name, seed, miou, (cpu or {}).get(name, 1.0), epochs)


def holm(p):
    """Holm's step-down adjustment, written out: the k-th smallest p times (m - k + 1), running max."""
    order = np.argsort(p)
    out, running = np.empty(len(p)), 0.0
    for k, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - k) * p[i]))
        out[i] = running
    return out


BASE = [0.20, 0.18, 0.19, 0.21, 0.17, 0.22]
GAINS = {  # per seed, paired with no KD
    "response": [0.001, -0.002, 0.000, 0.002, -0.001, 0.0],
    "feature": [-0.010, -0.012, -0.009, -0.011, -0.013, -0.010],
    "both": [0.004, 0.001, 0.006, 0.0, 0.005, 0.002],  # raw p 0.03: resolved alone, not after Holm
    "cwd": [0.05, 0.06, 0.055, 0.048, 0.062, 0.051],
    "dist": [0.03, 0.02, 0.035, 0.025, 0.04, 0.03],
}


def draw_mious(scale=1.0, flip=()):
    out = {"none": BASE}
    for name, gains in GAINS.items():
        sign = -1 if name in flip else 1
        out[name] = [b + sign * scale * g for b, g in zip(BASE, gains)]
    return out


def test_a_verdict_per_draw_holm_over_the_five_methods_and_whether_it_holds(tmp_path):
    runs = tmp_path / "runs"
    write_condition(runs, draw_mious())
    write_condition(conditions.draw_runs_dir(runs, 1), draw_mious())
    write_condition(conditions.draw_runs_dir(runs, 2), draw_mious(flip=("dist",)))
    table = conditions.per_condition(conditions.draw_runs(runs), "draw")
    for draw, mious in ((0, draw_mious()), (2, draw_mious(flip=("dist",)))):
        names = list(GAINS)
        d = {n: np.array(mious[n]) - np.array(BASE) for n in names}
        p = np.array([st.ttest_1samp(d[n], 0).pvalue for n in names])
        for name, p_holm in zip(names, holm(p)):
            row = table[(table["draw"] == draw) & (table["run"] == name)].iloc[0]
            half = st.t.ppf(0.975, 5) * d[name].std(ddof=1) / math.sqrt(6)
            assert row["mean_diff"] == pytest.approx(d[name].mean())
            assert row["detectable"] == pytest.approx(half)
            assert row["p_holm"] == pytest.approx(p_holm)
            low, high = d[name].mean() - half, d[name].mean() + half
            expected = (
                "beats no KD"
                if low > 0 and p_holm < 0.05
                else "worse than no KD"
                if high < 0 and p_holm < 0.05
                else "no resolved difference"
            )
            assert row["verdict"] == expected, (draw, name)
    verdicts = table.set_index(["draw", "run"])["verdict"]
    assert verdicts[(0, "cwd")] == "beats no KD" and verdicts[(0, "feature")] == "worse than no KD"
    assert verdicts[(0, "response")] == "no resolved difference" and verdicts[(2, "dist")] == "worse than no KD"
    held = conditions.across_draws(table)["holds on every draw"].to_dict()
    assert held == {"response": "yes", "feature": "yes", "both": "yes", "cwd": "yes", "dist": "no"}


def test_a_draw_not_trained_everywhere_is_said_so(tmp_path):
    runs = tmp_path / "runs"
    write_condition(runs, draw_mious())
    write_condition(conditions.draw_runs_dir(runs, 1), {k: v for k, v in draw_mious().items() if k != "dist"})
    write_condition(conditions.draw_runs_dir(runs, 2), draw_mious())
    held = conditions.across_draws(conditions.per_condition(conditions.draw_runs(runs), "draw"))
    assert held.loc["dist", "holds on every draw"] == "not every draw trained"
    assert set(held.drop(index="dist")["holds on every draw"]) == {"yes"}


def test_the_budget_trend_is_the_paired_change_of_each_gain(tmp_path):
    runs = tmp_path / "runs"
    write_condition(runs, draw_mious())
    longer = draw_mious(scale=2.0)  # every gain doubles at 2x
    write_condition(conditions.budget_runs_dir(runs, 2), longer)
    write_condition(conditions.budget_runs_dir(runs, 4), {k: v[:3] for k, v in draw_mious(scale=0.0).items()})
    trend = conditions.budget_trend(conditions.budget_runs(runs)).set_index(["budget", "run"])
    for name, gains in GAINS.items():
        change = np.array(gains)  # 2g - g per seed
        half = st.t.ppf(0.975, 5) * change.std(ddof=1) / math.sqrt(6)
        row = trend.loc[("x2", name)]
        assert row["seeds"] == 6 and row["gain_change"] == pytest.approx(change.mean())
        assert row["detectable"] == pytest.approx(half)
        at4 = trend.loc[("x4", name)]  # every gain gone at 4x, seeds 0-2 only
        assert at4["seeds"] == 3 and at4["gain_change"] == pytest.approx(-np.mean(gains[:3]))
    assert trend.loc[("x2", "cwd"), "trend"] == "grows" and trend.loc[("x4", "cwd"), "trend"] == "shrinks"
    assert trend.loc[("x2", "response"), "trend"] == "holds"
    # the findings give every longer budget its own line, not only the longest: CWD grows at 2x, shrinks at 4x
    from kdlib import report

    _, overview, said, _ = report.conditions_sections(runs, tmp_path / "figures", tmp_path / "report")
    assert any(line.startswith("**Does each verdict hold?**") for line in overview)
    at2 = next(x for x in said if x.startswith("- At 2× the demo's steps (Section 6, seeds 0, 1, 2, 3, 4, 5)"))
    at4 = next(x for x in said if x.startswith("- At 4× the demo's steps (Section 6, seeds 0, 1, 2)"))
    assert "grew" in at2.split("Channel-wise (CWD)")[1] and "shrank" in at4.split("Channel-wise (CWD)")[1]


def test_one_table_says_whether_each_verdict_holds_under_every_condition():
    B, W, U = conditions.BEATS, conditions.WORSE, conditions.UNRESOLVED

    def rows(column, cells):  # (key, run, mean, detectable, verdict)
        return pd.DataFrame(
            [
                {column: k, "run": n, "mean_diff": m, "detectable": d, "verdict": v, "seeds": 6}
                for k, n, m, d, v in cells
            ]
        )

    budgets = rows("budget", [
        (1, "cwd", 0.05, 0.01, B), (1, "dist", 0.04, 0.02, B), (1, "response", -0.001, 0.01, U),
        (1, "both", 0.0, 0.01, U), (1, "feature", 0.03, 0.01, B),
        (2, "cwd", 0.04, 0.01, B), (2, "dist", 0.03, 0.02, B), (2, "response", 0.0, 0.01, U),
        (2, "feature", -0.02, 0.01, W),
        (4, "cwd", 0.03, 0.02, U), (4, "dist", 0.01, 0.02, U), (4, "response", 0.0, 0.02, U),
        (4, "feature", 0.03, 0.02, B),
    ])  # fmt: skip
    draws = rows("draw", [
        (1, "cwd", 0.03, 0.01, B), (2, "cwd", 0.02, 0.01, B), (1, "dist", 0.02, 0.01, B),
        (2, "dist", -0.02, 0.01, W), (1, "response", 0.0, 0.01, U), (2, "response", 0.0, 0.01, U),
        (1, "feature", 0.03, 0.01, B), (2, "feature", 0.03, 0.01, B),
    ])  # fmt: skip
    trend = pd.DataFrame(
        [
            {"budget": f"x{f}", "run": n, "trend": "holds"}
            for f in (2, 4)
            for n in ("cwd", "dist", "response", "feature")
        ]
    )
    trend.loc[(trend["budget"] == "x2") & (trend["run"] == "dist"), "trend"] = "shrinks"
    trend.loc[(trend["budget"] == "x4") & (trend["run"] == "response"), "trend"] = "grows"
    compute = pd.DataFrame(
        [
            {"run": "cwd", "mean_diff": 0.01, "detectable": 0.005, "verdict": B, "seeds": 6},
            {"run": "dist", "mean_diff": 0.0, "detectable": 0.01, "verdict": U, "seeds": 6},
            {"run": "feature", "mean_diff": 0.02, "detectable": 0.01, "verdict": B, "seeds": 6},
            {
                "run": "response",
                "mean_diff": math.nan,
                "detectable": math.nan,
                "verdict": "no budget of no KD reaches it",
            },
        ]
    )
    long = conditions.verdicts_everywhere(draws, budgets, trend, compute)
    assert len(long) == 5 * 6  # five methods, six conditions
    cell = long.set_index(["run", "condition"])
    assert cell.loc[("dist", "draw 2"), "verdict"] == W and cell.loc[("dist", "2× steps"), "trend"] == "shrinks"
    assert cell.loc[("response", "the same compute"), "verdict"] == "no budget of no KD reaches it"
    held = conditions.holds(long).set_index("run")
    # cwd: beats everywhere but at 4x, where it only loses its resolution (three seeds): by the
    # rules it holds, read strictly it does not
    assert held.loc["cwd", "by_rules"] == "yes"
    assert held.loc["cwd", "strict"] == f"no: 4× steps: {U}"
    # the same compute is a question of its own: dist's "not resolved" there is no departure
    assert held.loc["dist", "by_rules"] == f"no: draw 2: {W}; 2× steps: gain shrank"
    # feature: worse than no KD at 2x with the gain's change not resolved: a flip to the other side departs
    assert held.loc["feature", "by_rules"] == f"no: 2× steps: {W}"
    assert held.loc["response", "by_rules"] == "no: 4× steps: gain grew"
    assert held.loc["both", "by_rules"] == "yes so far" == held.loc["both", "strict"]  # only the demo measured
    # losing to no KD given more compute changes no verdict read over draws and budgets
    worse = compute.assign(verdict=[W, W, W, "no budget of no KD reaches it"])
    held_worse = conditions.holds(conditions.verdicts_everywhere(draws, budgets, trend, worse)).set_index("run")
    assert held_worse.loc["cwd", "by_rules"] == "yes" and held_worse.loc["cwd", "strict"] == f"no: 4× steps: {U}"

    # the demo's verdict from the draws table when no budget was trained
    only_draws = pd.concat([draws, rows("draw", [(0, "cwd", 0.05, 0.01, B)])])
    long = conditions.verdicts_everywhere(only_draws, pd.DataFrame(), pd.DataFrame(), pd.DataFrame())
    held = conditions.holds(long).set_index("run")
    assert held.loc["cwd", "by_rules"] == "yes so far" and held.loc["dist", "by_rules"].startswith("the demo's")


def test_a_difference_is_shown_one_way_everywhere():
    from kdlib.report import _diff_cell, _diff_text

    assert _diff_text(-1e-5, 0.0185) == "+0.0000 ± 0.0185"  # no negative zero
    assert _diff_text(-0.0123, 0.0185) == "-0.0123 ± 0.0185" and _diff_text(0.01, math.nan) == "+0.0100"
    row = {"mean_diff": -1e-5, "detectable": 0.0185, "seeds": 6, "verdict": "no resolved difference"}
    assert _diff_cell(row) == "+0.0000 ± 0.0185 (6 seeds): no resolved difference"


def test_each_kd_method_meets_no_kd_trained_at_least_as_long(tmp_path):
    runs = tmp_path / "runs"
    cost = {"none": 1.0, "response": 1.5, "feature": 1.6, "both": 1.7, "cwd": 2.5, "dist": 9.0}
    write_condition(runs, draw_mious(), cost)  # CPU s per epoch, 4 epochs
    at2 = {k: [v + 0.04 for v in vs] for k, vs in draw_mious().items()}  # no KD at 2x: 0.04 higher
    write_condition(conditions.budget_runs_dir(runs, 2), at2, cost, epochs=8)
    write_condition(conditions.budget_runs_dir(runs, 4), {k: v[:3] for k, v in at2.items()}, cost, epochs=16)
    table = conditions.matched_compute(conditions.budget_runs(runs)).set_index("run")
    # no KD costs 4 CPU s at 1x, 8 at 2x, 16 at 4x: response (6 s) and cwd (10 s) meet 2x and 4x
    assert table.loc["response", "none_budget"] == 2 and table.loc["cwd", "none_budget"] == 4
    assert table.loc["response", "compute_s"] == pytest.approx(6.0) and table.loc["cwd", "none_compute_s"] == 16
    assert table.loc["response", "images_per_cpu_s"] == pytest.approx(32 * 8 * 4 / 6.0)
    assert table.loc["dist", "verdict"] == "no budget of no KD reaches it"  # 36 s > 16 s
    d = np.array(draw_mious()["cwd"][:3]) - np.array(at2["none"][:3])
    assert table.loc["cwd", "seeds"] == 3 and table.loc["cwd", "mean_diff"] == pytest.approx(d.mean())
    tested = table["p"].notna()  # Holm over the plan's five methods: an untested one counts as p = 1
    padded = np.concatenate([table.loc[tested, "p"].to_numpy(), np.ones(5 - tested.sum())])
    assert table.loc[tested, "p_holm"].tolist() == pytest.approx(holm(padded)[: tested.sum()].tolist())
    p_holm = dict(zip(table.index[tested], holm(padded)))
    for name, p in p_holm.items():
        budget = int(table.loc[name, "none_budget"])
        seeds = 6 if budget == 2 else 3
        d = np.array(draw_mious()[name][:seeds]) - np.array(at2["none"][:seeds])
        half = st.t.ppf(0.975, seeds - 1) * d.std(ddof=1) / math.sqrt(seeds)
        assert table.loc[name, "p"] == pytest.approx(st.ttest_1samp(d, 0).pvalue)
        low, high = d.mean() - half, d.mean() + half
        rule = "beats no KD" if low > 0 and p < 0.05 else "worse than no KD" if high < 0 and p < 0.05 else None
        assert table.loc[name, "verdict"] == (rule or "no resolved difference"), name
    assert table.loc["feature", "verdict"] == "worse than no KD"  # -0.01 - 0.04 on every seed
    # the longer budgets trained on another host: their CPU seconds do not compare, and it says so
    for path in (runs / "budget").glob("*/*/seed*/config.json"):
        config = json.loads(path.read_text())
        config["environment"]["platform"] = "another-host"
        path.write_text(json.dumps(config))
    elsewhere = conditions.matched_compute(conditions.budget_runs(runs))
    assert set(elsewhere["verdict"]) == {"no KD's longer budgets ran on another host"}


def test_make_draws_and_make_budget_train_what_docs_regime_decided(tmp_path, monkeypatch):
    planned = []
    monkeypatch.setattr(conditions, "train_runs", lambda todo, jobs, name: planned.extend(todo))
    monkeypatch.setattr(conditions, "evaluate_teacher", lambda *a, **k: {"miou": 0.5})
    data, runs = tmp_path / "data" / "shapes", tmp_path / "runs"
    conditions.train_draws(data_root=data, runs_dir=runs, profile="smoke")
    assert {(c.method, c.seed) for c in planned} == {(m, 0) for m in METHODS} and len(planned) == 12
    for draw in conditions.DRAWS:
        card = json.loads((tmp_path / "data" / f"shapes-draw{draw}" / "benchmark.json").read_text())
        assert card["seed"] == draw
        mine = [c for c in planned if c.data_root.endswith(f"shapes-draw{draw}")]
        assert len(mine) == 6 and all(c.out.startswith(str(runs / "draws" / f"draw{draw}")) for c in mine)
    planned.clear()
    conditions.train_budgets(data_root=data, runs_dir=runs, profile="smoke")
    by = {}
    for cfg in planned:
        by.setdefault(cfg.epochs, set()).add((cfg.method, cfg.seed, cfg.early_stop, cfg.lr_schedule))
    smoke = profiles.profile_settings("smoke")
    assert by[1] == {(m, 0, 30, "plateau") for m in METHODS}  # 1x: the profile's own runs
    assert by[2] == {(m, 0, 60, "plateau") for m in METHODS}  # 2x: the profile's seeds
    assert by[4] == {(m, s, 120, "plateau") for m in METHODS for s in (0, 1, 2)}  # 4x: seeds 0-2
    assert smoke["epochs"] == 1
    demo = conditions.budget_settings("demo", 4)
    assert demo == {"epochs": 80, "early_stop": 120}
    with pytest.raises(ValueError, match="x3 was not planned"):
        conditions.train_budgets(data_root=data, runs_dir=runs, profile="smoke", budgets=[3])
    for part, epochs in (([4], {4}), ([1], {1}), ([2, 4], {2, 4})):  # one part each, the 1x runs only when asked
        planned.clear()
        conditions.train_budgets(data_root=data, runs_dir=runs, profile="smoke", budgets=part)
        assert {cfg.epochs for cfg in planned} == epochs, part
    assert len(planned) == 6 + 18


def test_the_report_commits_the_conditions_runs_without_losing_more_seeds(tmp_path):
    from kdlib.report import _trace_conditions

    runs, committed = tmp_path / "runs", tmp_path / "report" / "runs"
    write_condition(conditions.draw_runs_dir(committed, 1), draw_mious())  # six seeds committed
    write_condition(conditions.draw_runs_dir(runs, 1), {k: v[:2] for k, v in draw_mious(scale=2).items()})
    write_condition(conditions.budget_runs_dir(runs, 2), draw_mious())
    (conditions.draw_runs_dir(runs, 1) / "teacher_eval.json").write_text('{"miou": 0.9}')
    _trace_conditions(runs, committed)
    kept = sorted(p.parent.name for p in (conditions.draw_runs_dir(committed, 1) / "cwd").glob("seed*/metrics.json"))
    assert kept == [f"seed{k}" for k in range(6)]  # two local seeds do not replace six committed ones
    copied = sorted((conditions.budget_runs_dir(committed, 2) / "none").glob("seed*/*"))
    assert {p.name for p in copied} == {"metrics.json", "config.json", "history.csv"} and len(copied) == 18
    assert json.loads((conditions.draw_runs_dir(committed, 1) / "teacher_eval.json").read_text()) == {"miou": 0.9}


def test_a_condition_is_read_and_committed_from_one_machine_as_a_whole(tmp_path):
    """No KD retrained alone on this machine neither enters the condition's verdicts nor replaces
    the committed no-KD runs: its pairings would cross machines. Once every method is here, this
    machine's runs replace all the committed ones."""
    from kdlib.report import _trace_conditions

    runs, committed = tmp_path / "runs", tmp_path / "report" / "runs"
    x2 = conditions.budget_runs_dir
    write_condition(x2(committed, 2), draw_mious())  # every method, six seeds
    here_none = [b + 0.05 for b in BASE]
    write_condition(x2(runs, 2), {"none": here_none})
    read = conditions.budget_runs(runs, committed)[2]
    assert set(read["source"]) == {"committed"} and len(read) == 6 * len(METHODS)
    assert read[read["run"] == "none"].sort_values("seed")["miou"].tolist() == pytest.approx(BASE)
    _trace_conditions(runs, committed)
    seed0 = x2(committed, 2) / "none" / "seed0" / "metrics.json"
    assert json.loads(seed0.read_text())["best_miou"] == pytest.approx(BASE[0])

    short = draw_mious(scale=2) | {"none": here_none}
    write_condition(x2(runs, 2), {k: v[:5] if k == "dist" else v for k, v in short.items()})  # dist one seed short
    assert set(conditions.budget_runs(runs, committed)[2]["source"]) == {"committed"}
    write_condition(x2(runs, 2), short)  # now every method, every seed
    read = conditions.budget_runs(runs, committed)[2]
    assert set(read["source"]) == {"this machine"} and len(read) == 6 * len(METHODS)
    _trace_conditions(runs, committed)
    assert json.loads(seed0.read_text())["best_miou"] == pytest.approx(here_none[0])
    cwd0 = json.loads((x2(committed, 2) / "cwd" / "seed0" / "metrics.json").read_text())["best_miou"]
    assert cwd0 == pytest.approx(BASE[0] + 2 * GAINS["cwd"][0])


def test_a_pairing_across_cpu_kernels_is_said_in_its_cell(tmp_path):
    from kdlib.report import _diff_cell

    runs = tmp_path / "runs"
    write_condition(runs, draw_mious())
    for seed in range(6):  # cwd from another host: its runs' arithmetic differs from no KD's
        folder = runs / "cwd" / f"seed{seed}"
        config = json.loads((folder / "config.json").read_text())
        config["environment"]["platform"] = "Linux-other-host"
        (folder / "config.json").write_text(json.dumps(config))
    table = conditions.per_condition({1: conditions.budget_runs(runs)[1]}, "budget").set_index("run")
    assert not table.loc["cwd", "same_kernels"] and table.loc["dist", "same_kernels"]
    assert "paired across CPU kernels" in _diff_cell(table.loc["cwd"])
    assert "across" not in _diff_cell(table.loc["dist"])


def test_another_draw_is_another_benchmark(tmp_path):
    a = shapes.generate(tmp_path / "a", teacher_train=2, train=4, val=2, size=64, seed=1, progress=False)
    b = shapes.generate(tmp_path / "b", teacher_train=2, train=4, val=2, size=64, seed=0, progress=False)
    first = sorted((a / "JPEGImages").glob("*.jpg"))[0].name
    assert (a / "JPEGImages" / first).read_bytes() != (b / "JPEGImages" / first).read_bytes()


def test_compute_counts_only_one_thread_runs_and_one_machine(tmp_path):
    runs = tmp_path / "runs"
    write_condition(runs, draw_mious())
    for seed in range(6):  # cwd trained on two threads: its CPU time is not its own work alone
        write_run(runs / "cwd" / f"seed{seed}", "cwd", seed, draw_mious()["cwd"][seed], 2.5, threads=2)
    write_condition(conditions.budget_runs_dir(runs, 2), draw_mious(), epochs=8)
    table = conditions.matched_compute(conditions.budget_runs(runs)).set_index("run")
    assert math.isnan(table.loc["cwd", "compute_s"])
    assert table.loc["cwd", "verdict"] == "its training compute was not recorded"
    assert table.loc["response", "none_budget"] == 1  # 4 CPU s each: no KD at 1x already matches


def test_a_condition_without_its_baseline_or_partly_trained_gives_no_false_verdict(tmp_path):
    runs = tmp_path / "runs"
    write_condition(runs, draw_mious())
    write_condition(conditions.draw_runs_dir(runs, 1), {k: v for k, v in draw_mious().items() if k != "none"})
    write_condition(conditions.draw_runs_dir(runs, 2), {k: draw_mious()[k] for k in ("none", "both")})
    table = conditions.per_condition(conditions.draw_runs(runs), "draw").set_index(["draw", "run"])
    assert set(table.loc[1, "verdict"]) == {conditions.NO_BASELINE}
    # draw 2 has only both: its p is corrected as one of five (p = 1 for the four untested), not alone
    d = np.array(draw_mious()["both"]) - np.array(BASE)
    p = st.ttest_1samp(d, 0).pvalue
    assert table.loc[(2, "both"), "p_holm"] == pytest.approx(min(1.0, 5 * p))
    held = conditions.across_draws(table.reset_index())["holds on every draw"].to_dict()
    assert held["response"] == "not every draw trained" and held["both"] == "not every draw trained"
    assert conditions.across_draws(conditions.per_condition({0: pd.DataFrame()}, "draw")).empty


def test_make_report_refuses_a_stale_run_of_a_condition(tmp_path, capsys):
    """A run under draws/ or budget/ trained with other settings than its condition's is named by
    `make report`, with the target that trains it again, like the demo's own runs."""
    from kdlib import experiment, notebooks

    data, runs = tmp_path / "data" / "shapes", tmp_path / "runs"
    root = profiles.prepare_data("shapes", str(data), "smoke")
    experiment.train_demo_rows(dataset="shapes", data_root=str(root), runs_dir=runs, profile="smoke")
    conditions.train_draws(data_root=data, runs_dir=runs, profile="smoke", draws=(1,), names=("none",))
    path = conditions.draw_runs_dir(runs, 1) / "none" / "seed0" / "config.json"
    config = json.loads(path.read_text())
    config["lr"] = 0.5  # as if trained with another setting than the condition's
    path.write_text(json.dumps(config))
    figs, report = tmp_path / "figures", tmp_path / "report"
    assert notebooks.run_report("shapes", str(data), "cpu", "smoke", runs, figs, report) == 1
    err = capsys.readouterr().err
    assert "draws/draw1/none/seed0: it was trained with other settings (lr 0.5 -> 0.001)" in err
    assert "Run `make draws`" in err


def test_the_budget_headline_says_holds_of_a_difference_not_of_a_gain_that_is_not_there(tmp_path):
    """Response has no resolved difference at either budget: the headline must say so, not that
    its "gain holds"; CWD beats no KD at both and its gain doubles."""
    from kdlib import report

    runs = tmp_path / "runs"
    write_condition(runs, draw_mious())
    write_condition(conditions.budget_runs_dir(runs, 2), draw_mious(scale=2.0))
    budgets = conditions.budget_runs(runs)
    table = conditions.per_condition(budgets, "budget")
    trend = conditions.budget_trend(budgets)
    trend = trend[trend["budget"] == "x2"].set_index("run", drop=False)
    said = report._budget_phrase(table, trend.loc["response"], 2)
    half = trend.loc["response", "detectable"]
    assert said == (
        "Response no resolved difference at 1× and at 2× "
        f"(its change in difference to no KD not resolved, detectable ±{half:.4f})"
    )
    said = report._budget_phrase(table, trend.loc["cwd"], 2)
    assert said == "Channel-wise (CWD) beats no KD at 1× and at 2× (its difference to no KD grew)"


def test_the_headline_reads_the_same_compute_as_a_question_of_its_own(tmp_path):
    from kdlib import report

    runs = tmp_path / "runs"
    cost = {"none": 1.0, "response": 1.5, "feature": 1.6, "both": 1.7, "cwd": 1.9, "dist": 1.95}
    write_condition(runs, draw_mious(), cost)
    at2 = {k: [v + 0.04 for v in vs] for k, vs in draw_mious().items()}  # no KD 0.04 higher at 2x
    write_condition(conditions.budget_runs_dir(runs, 2), at2, cost, epochs=8)
    _, overview, _, _ = report.conditions_sections(runs, tmp_path / "figures", tmp_path / "report")
    table = next(x for x in overview if x.startswith("| method"))
    header = [h.strip() for h in table.splitlines()[0].strip("|").split("|")]
    # the compute column comes after the two "holds" readings, which do not read it
    assert header[-1].startswith("against no KD given the same compute")
    assert header[-3:-1] == ["same verdict on every draw and budget?", "holds by the rules?"]
    sentence = next(x for x in overview if "Given the same compute" in x)
    # at 2x (8 CPU s) no KD is 0.04 higher: cwd (+0.054 at 1x) beats it on every seed, feature loses
    assert "distillation beats training no KD longer for Channel-wise (CWD)" in sentence
    assert "no KD trained longer does better than " in sentence and "Feature" in sentence.split("does better")[1]


def test_a_budget_trend_across_cpu_kernels_is_said(tmp_path):
    from kdlib import report

    runs = tmp_path / "runs"
    write_condition(runs, draw_mious())
    write_condition(conditions.budget_runs_dir(runs, 2), draw_mious(scale=2.0))
    write_condition(conditions.budget_runs_dir(runs, 4), {k: v[:3] for k, v in draw_mious().items()})
    for path in conditions.budget_runs_dir(runs, 4).glob("*/seed*/config.json"):
        config = json.loads(path.read_text())  # the 4x runs from another host: one class within, another than 1x's
        config["environment"]["platform"] = "Linux-other-host"
        path.write_text(json.dumps(config))
    budgets = conditions.budget_runs(runs)
    trend = conditions.budget_trend(budgets).set_index(["budget", "run"])
    assert trend["same_kernels"].loc["x2"].all() and not trend["same_kernels"].loc["x4"].any()
    table = conditions.per_condition(budgets, "budget")
    assert table["same_kernels"].all()  # within each budget the pairs share a host
    long = conditions.verdicts_everywhere(pd.DataFrame(), table, trend.reset_index(), pd.DataFrame())
    cells = long.set_index(["run", "condition"])
    assert cells["same_kernels"].all()  # every verdict pairs runs of one host: none is marked
    assert not cells.loc[("cwd", "4× steps"), "trend_same_kernels"]
    assert cells.loc[("cwd", "2× steps"), "trend_same_kernels"]
    lines, overview, said, _ = report.conditions_sections(runs, tmp_path / "figures", tmp_path / "report")
    mark = "1× and longer runs on different CPU kernels"
    row = next(x for x in "\n".join(lines).splitlines() if x.startswith("| Channel-wise (CWD)"))
    assert row.count(mark) == 1 and row.rstrip(" |").endswith(f"({mark})")
    head = next(x for x in "\n".join(overview).splitlines() if x.startswith("| Channel-wise (CWD)"))
    assert head.count("different CPU kernels") == 1 and "paired across" not in head
    at4 = next(x for x in said if x.startswith("- At 4×"))
    at2 = next(x for x in said if x.startswith("- At 2×"))
    assert at4.count("different CPU kernels") == 5 and "kernels" not in at2


def test_whether_the_size_of_a_difference_changes_between_draws(tmp_path):
    from kdlib import report

    runs = tmp_path / "runs"
    scales = {0: 1.0, 1: 3.0, 2: 1.0}  # every gain three times larger on draw 1
    shifts = {0: 0.0, 1: 0.05, 2: -0.03}  # each draw its own level of mIoU, no KD's included

    def on(draw):
        return {k: [v + shifts[draw] for v in vs] for k, vs in draw_mious(scales[draw]).items()}

    write_condition(runs, on(0))
    for d in conditions.DRAWS:
        write_condition(conditions.draw_runs_dir(runs, d), on(d))
    table = conditions.draw_heterogeneity(conditions.draw_runs(runs)).set_index("run")
    p = {}
    for name, gains in GAINS.items():  # written out: draws as treatments, seeds as blocks
        d = np.array([scales[draw] * np.array(gains) for draw in (0, 1, 2)])  # 3 draws x 6 seeds
        treat = 6 * ((d.mean(axis=1) - d.mean()) ** 2).sum()
        block = 3 * ((d.mean(axis=0) - d.mean()) ** 2).sum()
        error = ((d - d.mean()) ** 2).sum() - treat - block
        f = (treat / 2) / (error / 10)
        assert table.loc[name, "F"] == pytest.approx(f, rel=1e-6), name
        p[name] = st.f.sf(f, 2, 10)
        assert table.loc[name, "p"] == pytest.approx(p[name], rel=1e-6) and table.loc[name, "seeds"] == 6
    assert table["p_holm"].tolist() == pytest.approx(holm(np.array([p[n] for n in table.index])).tolist())
    assert table.loc["cwd", "highest"] == 1 and table.loc["feature", "lowest"] == 1  # feature's gains are < 0
    assert table.loc["cwd", "p_holm"] < 0.05 and table.loc["response", "p_holm"] > 0.05
    lines, _, said, _ = report.conditions_sections(runs, tmp_path / "figures", tmp_path / "report")
    sentence = next(x for x in lines if "the size changes for" in x)
    assert "Channel-wise (CWD) (p_holm" in sentence.split("no change these seeds resolve")[0]
    assert "Response (p_holm" in sentence.split("no change these seeds resolve")[1]
    assert "the 6 seeds every draw has" in sentence
    bullet = next(x for x in said if "the size of the difference changes from draw to draw for" in x)
    assert table["same_kernels"].all() and "kernels" not in bullet and not any("kernels' drift" in x for x in lines)
    for path in conditions.draw_runs_dir(runs, 2).glob("*/seed*/config.json"):  # draw 2 from another host
        config = json.loads(path.read_text())
        config["environment"]["platform"] = "Linux-other-host"
        path.write_text(json.dumps(config))
    assert not conditions.draw_heterogeneity(conditions.draw_runs(runs))["same_kernels"].any()
    lines, _, said, _ = report.conditions_sections(runs, tmp_path / "figures", tmp_path / "report")
    assert any("also holds the kernels' drift" in x for x in lines)
    assert "different CPU kernels" in next(x for x in said if "changes from draw to draw for" in x)


def test_the_compute_match_shows_its_ratio_its_seeds_and_the_clocks_spread(tmp_path):
    from kdlib import report

    runs = tmp_path / "runs"
    cost = {"none": 1.0, "response": 1.5, "feature": 1.6, "both": 1.7, "cwd": 1.9, "dist": 1.95}
    write_condition(runs, draw_mious(), cost)  # 4 epochs
    write_condition(conditions.budget_runs_dir(runs, 2), draw_mious(), {**cost, "none": 1.2}, epochs=8)
    # one 2x no-KD run cheaper than response's 1x run (4.8 < 6 CPU s): the median still reaches it
    write_run(conditions.budget_runs_dir(runs, 2) / "none" / "seed0", "none", 0, BASE[0], 0.6, 8)
    # and one 1x response run dearer than every 2x no-KD run (10 > 9.6 CPU s): its own pair falls short
    write_run(runs / "response" / "seed3", "response", 3, draw_mious()["response"][3], 2.5, 4)
    # cwd's 2x runs from another host: their CPU seconds are no measure of this one's clock
    for path in conditions.budget_runs_dir(runs, 2).glob("cwd/seed*/config.json"):
        config = json.loads(path.read_text())
        config["environment"]["platform"] = "another-host"
        path.write_text(json.dumps(config))
    budgets = conditions.budget_runs(runs)
    table = conditions.matched_compute(budgets).set_index("run")
    assert table.loc["response", "none_budget"] == 2
    assert table.loc["response", "compute_ratio"] == pytest.approx(9.6 / 6)  # the medians'
    assert table.loc["response", "seeds_reached"] == 4 and table.loc["response", "seeds_timed"] == 6
    assert table.loc["cwd", "seeds_reached"] == 5
    spread = conditions.compute_spread(budgets).set_index("run")
    assert spread.loc["none", "spread"] == pytest.approx(1.2 / 1.0 - 1)  # median per epoch: 1.2 at 2x, 1.0 at 1x
    assert spread.loc["dist", "spread"] == pytest.approx(0.0) and "cwd" not in spread.index  # 2x on another host
    lines, _, _, _ = report.conditions_sections(runs, tmp_path / "figures", tmp_path / "report")
    said = next(x for x in lines if x.startswith("One epoch is the same work"))
    assert "by up to 20% on the 1× runs' host (No KD)" in said
    # cwd's 7.6 s against 9.6: 1.26, wider than 20 %; dist's 7.8 s: 1.23, wider; none closer
    assert "Every match here is wider than that." in said
    row = [x for x in "\n".join(lines).splitlines() if x.startswith("| Response |")][-1]  # the compute table's
    assert "| 1.60 |" in row and "| 4 of 6 |" in row


def test_best_over_last_is_what_choosing_the_best_epoch_adds(tmp_path):
    runs = tmp_path / "runs"
    write_condition(runs, {"none": [0.30, 0.20]})
    for seed, last in ((0, 0.26), (1, 0.20)):  # seed 0 ended 0.04 below its best, seed 1 at it
        path = runs / "none" / f"seed{seed}" / "history.csv"
        history = pd.read_csv(path)
        history.loc[history.index[-1], "val_miou"] = last
        history.to_csv(path, index=False)
    got = conditions.best_over_last(conditions.collect_runs(runs, ["none"]))
    assert got == pytest.approx((0.04 + 0.0) / 2)
