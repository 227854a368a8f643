"""report.py and plots.py on synthetic runs whose right answers are known by construction."""

import json
import math
import statistics

import pandas as pd
import pytest

from kdlib import plots, report
from kdlib.methods import display_name
from kdlib.stats import paired_comparison

MIOU = {  # method -> per-seed best val mIoU
    "none": [0.20, 0.22, 0.18, 0.21],
    "response": [0.30, 0.33, 0.29, 0.31],  # about +0.10 on every seed: beyond noise
    "feature": [0.19, 0.23, 0.17, 0.22],  # -0.01 to +0.01: noise
    "both": [0.10, 0.12, 0.09, 0.11],  # about -0.10: worse
}


# Every column differs per method, so that a column read from the wrong field, or typed in,
# shows: each method's own loss weights and temperature (CWD's paper's for cwd), its own number
# of epochs run, one fewer on odd seeds (early stopping ends all but `feature`'s even seeds
# before the budget), its best epoch half way, and its own training time per seed.
WEIGHTS = {  # method -> (alpha, beta, temperature) recorded in config.json
    "none": (0.7, 0.3, 4.0),
    "response": (0.7, 0.3, 4.0),
    "feature": (0.5, 0.9, 2.0),
    "both": (0.6, 1.5, 8.0),
    "cwd": (1.0, 3.0, 4.0),
}
EPOCHS_RUN = {"none": 8, "response": 9, "feature": 10, "both": 7, "cwd": 6}
SECONDS = {"none": 50.0, "response": 70.0, "feature": 90.0, "both": 110.0, "cwd": 130.0}  # + 2 s per seed


def write_runs(root, epochs=10, miou=MIOU, **settings):
    for method, values in miou.items():
        alpha, beta, temperature = WEIGHTS[method]
        for seed, miou in enumerate(values):
            run_epochs = min(EPOCHS_RUN[method] - seed % 2, epochs)
            run = root / method / f"seed{seed}"
            run.mkdir(parents=True)
            history = pd.DataFrame(
                {
                    "epoch": range(1, run_epochs + 1),
                    "val_miou": [miou * min(1.0, e / (run_epochs // 2)) for e in range(1, run_epochs + 1)],
                    "train_miou": [2 * miou] * run_epochs,
                    "train_total": [1.0] * run_epochs,
                    "val_total": [1.0] * run_epochs,
                    "train_ce": [1.0] * run_epochs,
                    "val_ce": [1.0] * run_epochs,
                }
            )
            history.to_csv(run / "history.csv", index=False)
            metrics = {
                "method": method,
                "seed": seed,
                "best_miou": miou,
                "pixel_accuracy": 0.9,
                "best_epoch": run_epochs // 2,
            }
            metrics |= {"epochs_run": run_epochs, "early_stopped": run_epochs < epochs}
            metrics |= {"total_seconds": SECONDS[method] + 2 * seed, "per_class_iou": [miou] * 21}
            (run / "metrics.json").write_text(json.dumps(metrics))
            config = {"method": method, "train_split": "train", "val_split": "val", "image_size": 64, "epochs": epochs}
            config |= {"train_repeats": 8, "lr_schedule": "cosine", "batch_size": 16, "lr": 0.01}
            config |= {"weight_decay": 1e-4, "temperature": temperature, "alpha": alpha, "beta": beta}
            config |= {"augment": "table2", "device_name": "cpu", "environment": {"cpu_threads": 1, "torch": "x"}}
            config |= {"student_parameters": 3689061, "split_sizes": {"train": 32, "val": 300}, "dataset": "shapes"}
            config |= settings
            (run / "config.json").write_text(json.dumps(config))


def test_the_report_states_each_verdict_from_the_runs(tmp_path):
    write_runs(tmp_path / "runs")
    pinned = {"aten": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2,STRICT"}
    for path in (tmp_path / "runs" / "response").glob("seed*/config.json"):  # response alone pinned
        config = json.loads(path.read_text())
        config["environment"]["cpu_kernels"] = pinned
        path.write_text(json.dumps(config))
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "teacher_eval.json").write_text(
        json.dumps({"model": "t", "miou": 0.8, "per_class_iou": [0.8] * 21})
    )
    (tmp_path / "report" / "tables").mkdir()
    (tmp_path / "report" / "tables" / "feature_position_similarity.csv").write_text(
        'level,teacher (raw),"teacher, projected",feature-KD student\nlayer4,0.901,0.9996,0.999\n'
    )
    text = report.build_report(tmp_path / "runs", tmp_path / "figures", tmp_path / "report", "shapes").read_text()
    assert "**What feature KD aligned**" in text and "| layer4 | 0.901 | 1.000 | 0.999 |" in text
    # the table's reading (report.collapse_findings) follows it
    assert "the projected teacher at layer4; the feature-KD student at layer4." in text
    for method, values in MIOU.items():
        alpha, beta, temperature = WEIGHTS[method]
        weights = "—" if method == "none" else f"{alpha:g} / {beta:g} / {temperature:g}"
        seconds = statistics.mean(SECONDS[method] + 2 * s for s in range(len(values)))
        epochs = statistics.mean(EPOCHS_RUN[method] - s % 2 for s in range(len(values)))
        row = (
            f"| {display_name(method)} | make demo | {weights} | {statistics.mean(values):.4f} ± "
            f"{statistics.stdev(values):.4f} | {len(values)} | {epochs:g} | {seconds:.0f}s |"
        )
        assert row in text, row
    assert "- **Response** beats no KD: +0.1050 mIoU over 4 paired seeds" in text
    # which arithmetic each row ran, and the one row paired across it
    assert "- Arithmetic: Response: pinned AVX2, torch x; No KD, Feature and Feature & Response: unpinned, " in text
    assert "CPU kernels add in another order (docs/reliability.md): Response. Their differences" in text
    assert "- **Feature & Response** is worse than no KD: -0.0975" in text
    assert "- **Feature** does not differ from no KD by more than seed noise: +0.0000" in text
    # the gap closed: (0.3075 - 0.2025) / (0.8 - 0.2025)
    gap = report.gap_closed(pd.DataFrame(_runs_rows()), {"miou": 0.8})
    response = gap.set_index("method").loc["Response"]
    assert response["share of the gap closed (%)"] == pytest.approx(100 * 0.105 / 0.5975)
    # its interval: the paired differences 0.10, 0.11, 0.11, 0.10 (sd 0.005774, 3 degrees of freedom,
    # t 3.182446) give 0.105 ± 0.009187, over the same gap
    low, high = (100 * (0.105 + k * 3.182446 * 0.0057735 / 2) / 0.5975 for k in (-1, 1))
    assert (response["share, 95% CI from (%)"], response["share, 95% CI to (%)"]) == pytest.approx(
        (low, high), abs=1e-3
    )
    # the share is the paired difference over the seeds both share: a method with seeds 0-1 only
    part = pd.DataFrame([r for r in _runs_rows() if r["run"] == "none" or (r["run"] == "response" and r["seed"] < 2)])
    share = report.gap_closed(part, {"miou": 0.8}).set_index("method").loc["Response", "share of the gap closed (%)"]
    assert share == pytest.approx(100 * 0.105 / 0.5975)  # (0.10 + 0.11) / 2 on seeds 0-1, not 0.315 - 0.2025
    assert report.gap_closed(part[part["run"] == "none"], {"miou": 0.8}).empty  # no method: no table, no error
    assert "16 of 16 runs have" in text  # every synthetic curve levels off half way
    assert (tmp_path / "report" / "runs" / "both" / "seed3" / "history.csv").is_file()


def test_the_results_table_reads_every_column_from_each_methods_runs(tmp_path):
    """Column by column, against the fixture's values computed here: a column read from another
    field (best epoch for epochs, the first run's weights for every row) or typed in fails."""
    from kdlib.results import collect_runs

    runs = MIOU | {"cwd": [0.25, 0.27, 0.23]}  # three seeds where the others have four
    write_runs(tmp_path / "runs", miou=runs)
    table = report.results_table(collect_runs(tmp_path / "runs"), {"model": "t", "miou": 0.8}).set_index("KD type")
    for method, values in runs.items():
        row = table.loc[display_name(method)]
        alpha, beta, temperature = WEIGHTS[method]
        assert row["α / β / T"] == ("—" if method == "none" else f"{alpha:g} / {beta:g} / {temperature:g}")
        assert row["mIoU (mean ± std)"] == f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"
        seeds = range(len(values))
        assert row["seeds"] == len(values)
        assert row["# training epochs"] == f"{statistics.mean(EPOCHS_RUN[method] - s % 2 for s in seeds):g}"
        assert row["training time per run (mean)"] == f"{statistics.mean(SECONDS[method] + 2 * s for s in seeds):.0f}s"
    assert table.loc["Channel-wise (CWD)", "from"] == "make methods"
    assert table.loc["Teacher (t, upper bound)", "mIoU (mean ± std)"] == "0.8000"


def _runs_rows():
    return [
        {"run": m, "seed": s, "miou": v, "epochs": 8, "seconds": 60.0}
        for m, vs in MIOU.items()
        for s, v in enumerate(vs)
    ]


def test_verdicts_follow_the_sign_and_the_interval():
    paired = paired_comparison(pd.DataFrame(_runs_rows()))
    lines = {r.split("**")[1]: r for r in report.verdicts(paired)}
    assert "beats no KD" in lines["Response"] and "is worse than no KD" in lines["Feature & Response"]
    assert "does not differ" in lines["Feature"]
    one = paired_comparison(pd.DataFrame([r for r in _runs_rows() if r["seed"] == 0]))
    assert all("one seed, no verdict" in line for line in report.verdicts(one))


def test_figures_have_their_panels_and_save_to_the_same_bytes(tmp_path):
    import numpy as np
    import torch

    history = pd.DataFrame(
        {"epoch": [1, 2], "train_total": [2.0, 1.0], "val_total": [2.1, 1.2], "train_ce": [1.5, 0.8]}
    )
    history = history.assign(val_ce=[1.6, 0.9], train_feature=[0.5, 0.2], val_feature=[0.6, 0.3], val_miou=[0.1, 0.2])
    figures = {
        "loss": (plots.loss_curves(history, "t"), 4),  # total, ce, feature, val mIoU
        "soft": (
            plots.soft_targets(
                {"T = 1": np.eye(21)[3], "T = 4": np.full(21, 1 / 21)}, [str(i) for i in range(21)], (3,)
            ),
            1,
        ),
        "cosine": (plots.cosine_maps([torch.zeros(4, 4), torch.ones(2, 2)], ["a", "b"], image=torch.zeros(3, 8, 8)), 3),
        "cosine rows": (  # two rows of (image, two levels)
            plots.cosine_maps(
                [[torch.zeros(4, 4), torch.ones(2, 2)], [torch.ones(4, 4), torch.zeros(2, 2)]],
                ["a", "b"],
                image=torch.zeros(3, 8, 8),
                rows=["x", "y"],
            ),
            6,
        ),
        "sweep": (
            plots.sweep_heatmap(
                {"a": np.array([[0.2, 0.3], [0.1, 0.25]]), "b": np.array([[0.2, np.nan], [0.3, 0.1]])},
                [1.0, 4.0],
                [0.3, 0.7],
                0.2,
                marked=(4.0, 0.3),
            ),
            2,
        ),
    }
    for name, (fig, panels) in figures.items():
        assert len([ax for ax in fig.axes if ax.get_label() != "<colorbar>"]) == panels, name
        first, second = tmp_path / f"{name}1.png", tmp_path / f"{name}2.png"
        plots.save_figure(fig, first)
        plots.save_figure(fig, second)
        assert first.read_bytes() == second.read_bytes()
    sweep = figures["sweep"][0].axes
    assert [t.get_text() for t in sweep[1].texts][1] == "not run" and "+0.100" in sweep[0].texts[1].get_text()
    assert len(sweep[0].patches) == 1  # the report's cell, outlined
    assert [sweep[0].texts[k].get_color() for k in (0, 1)] == ["black", "white"]  # white on the darkest cells
    bars = figures["soft"][0].axes[0].patches
    assert len(bars) == 42 and max(b.get_height() for b in bars) == pytest.approx(1.0)


def test_rows_of_make_methods_come_from_the_committed_runs_when_not_trained_here(tmp_path):
    """The report of a fresh `make demo` still shows the committed `make methods` rows, marked
    as such and paired with this machine's no-KD runs; committed rows of another regime are
    left out rather than compared."""
    write_runs(tmp_path / "runs")
    write_runs(tmp_path / "report" / "runs", miou={"cwd": [0.25, 0.27, 0.23, 0.26]})
    text = report.build_report(tmp_path / "runs", tmp_path / "figures", tmp_path / "report", "shapes").read_text()
    assert "| Channel-wise (CWD) | make methods, committed | 1 / 3 / 4 | 0.2525 ± " in text
    assert "- **Channel-wise (CWD)** beats no KD: +0.0500 mIoU over 4 paired seeds" in text
    assert "5 comparisons are corrected for" not in text  # +0.05 on every seed survives Holm over 4 rows
    assert (tmp_path / "report" / "runs" / "cwd" / "seed0" / "metrics.json").is_file()  # kept, not wiped

    other = tmp_path / "other"
    write_runs(other / "runs")
    write_runs(other / "report" / "runs", miou={"cwd": [0.25, 0.27, 0.23, 0.26]}, epochs=9)
    text = report.build_report(other / "runs", other / "figures", other / "report", "shapes").read_text()
    assert "Channel-wise" not in text


def test_the_sweep_headline_pairs_each_cell_with_no_kd(tmp_path):
    rows = [
        {"method": "none", "temperature": None, "beta": None, "seed": s, "miou": m} for s, m in enumerate([0.2, 0.3])
    ]
    for t in (1.0, 4.0):
        for b in (0.3, 0.7):
            lift = 0.05 if (t, b) == (1.0, 0.7) else 0.0
            rows += [
                {"method": "response", "temperature": t, "beta": b, "seed": s, "miou": m + lift + 0.001 * s}
                for s, m in enumerate([0.2, 0.3])
            ]
    table = pd.DataFrame(rows)
    cells = report.sweep_cells(table[table["method"] != "none"], table[table["method"] == "none"])
    assert len(cells) == 4 and set(cells["T"]) == {1.0, 4.0}
    best = cells.loc[cells["miou_mean"].idxmax()]
    assert (best["T"], best["beta"]) == (1.0, 0.7) and best["vs_none"] == pytest.approx(0.0505)
    head = report.sweep_headline(table[table["method"] != "none"], table[table["method"] == "none"])
    assert list(head["cell"]) == ["best: T=1, β=0.7", "the report's: T=4, β=0.3"]
    assert head["vs no KD"].tolist() == ["+0.0505", "+0.0005"]
    path = tmp_path / "sweep.csv"
    table.to_csv(path, index=False)
    lines = report.sweep_md(path)
    assert "(response: 4 of 4 cells); no KD over the same seeds: 0.2500" in lines[0]
    assert "| response | best: T=1, β=0.7 |" in "\n".join(lines)
    # response's own row (Table 1: T 4, β 0.3) lies inside this grid: the findings add nothing
    runs = pd.DataFrame(
        [
            {"run": r, "seed": s, "miou": m + (0.08 if r == "response" else 0)}
            for r in ("none", "response")
            for s, m in enumerate([0.2, 0.3, 0.25])
        ]
    ).assign(epochs=20, seconds=1.0)
    paired = report.paired_comparison(runs)
    said = next(x for x in report.headline_md(runs, paired, None, tmp_path, []) if "sweep's best" in x)
    assert said.endswith("so optimistic).")
    # a grid without β 0.3: the findings give the shipped row's own gain (+0.08 on 3 seeds) beside the best cell
    table = table[table["beta"] != 0.3]
    table.to_csv(path, index=False)
    said = next(x for x in report.headline_md(runs, paired, None, tmp_path, []) if "sweep's best" in x)
    assert said.endswith(
        "so optimistic); the results table's row (T = 4, β = 0.3, outside the grid's T {1, 4} × β {0.7}) "
        "differs from no KD by +0.0800 mIoU (95% CI +0.0800 to +0.0800) on its 3 seeds (larger than seed noise)."
    )


def test_an_unfinished_run_enters_no_table_and_the_report_says_how_to_finish_it(tmp_path):
    """A run writes metrics.json after each improved epoch: one stopped half way (here cwd seed 1
    at epoch 3 of 10, as a `make methods` cut off would leave it) is not a result. Its one
    finished seed does not replace the four committed ones either."""
    from kdlib.results import collect_runs, collect_with_committed, unfinished_runs

    write_runs(tmp_path / "runs", miou=MIOU | {"cwd": [0.4, 0.1]})
    stopped = tmp_path / "runs" / "cwd" / "seed1" / "metrics.json"
    stopped.write_text(json.dumps(json.loads(stopped.read_text()) | {"epochs_run": 3, "early_stopped": False}))
    write_runs(tmp_path / "report" / "runs", miou={"cwd": [0.25, 0.27, 0.23, 0.26]})

    here = collect_runs(tmp_path / "runs")
    assert len(here) == 17 and not ((here["run"] == "cwd") & (here["seed"] == 1)).any()
    assert unfinished_runs(tmp_path / "runs")[["run", "seed", "epochs_run", "epochs"]].values.tolist() == [
        ["cwd", 1, 3, 10]
    ]
    merged = collect_with_committed(tmp_path / "runs", tmp_path / "report" / "runs")
    cwd = merged[merged["run"] == "cwd"]
    assert sorted(cwd["seed"]) == [0, 1, 2, 3] and set(cwd["source"]) == {"committed"}

    text = report.build_report(tmp_path / "runs", tmp_path / "figures", tmp_path / "report", "shapes").read_text()
    assert "| Channel-wise (CWD) | make methods, committed | 1 / 3 / 4 | 0.2525 ± " in text
    assert (
        "**Unfinished runs**, left out of every table, figure and verdict of this report: "
        "Channel-wise (CWD) seed 1 (epoch 3 of 10). `make methods` finishes them (resuming each where it "
        "stopped, unless its settings or data changed since)."
    ) in text
    assert "0.4000" not in text  # the finished local seed of a row taken from the committed runs

    # an unfinished run of the sweep is named too, with its cell and the target that finishes it
    write_runs(tmp_path / "runs" / "sweep" / "T4_b0.7", miou={"cwd": [0.3]})
    cell = tmp_path / "runs" / "sweep" / "T4_b0.7" / "cwd" / "seed0" / "metrics.json"
    cell.write_text(json.dumps(json.loads(cell.read_text()) | {"epochs_run": 2, "early_stopped": False}))
    lines = "\n".join(report.unfinished_md(tmp_path / "runs"))
    assert "Channel-wise (CWD) T4_b0.7 seed 0 (epoch 2 of 10)" in lines and "`make methods` and `make sweep`" in lines

    # a row of make demo is this machine's whenever it has one, even with fewer seeds than committed
    write_runs(tmp_path / "few", miou={"none": [0.2, 0.22]})
    write_runs(tmp_path / "committed", miou={"none": [0.3, 0.3, 0.3, 0.3]})
    merged = collect_with_committed(tmp_path / "few", tmp_path / "committed")
    assert set(merged["source"]) == {"this machine"} and len(merged) == 2

    # once this machine has as many finished seeds as the committed row, its own runs are the row
    write_runs(tmp_path / "more", miou=MIOU | {"cwd": [0.3, 0.31, 0.29, 0.3]})
    merged = collect_with_committed(tmp_path / "more", tmp_path / "report" / "runs")
    assert set(merged.loc[merged["run"] == "cwd", "source"]) == {"this machine"}


def test_the_sweep_findings_count_what_the_map_shows():
    rows = [
        {"method": "none", "temperature": None, "beta": None, "seed": s, "miou": m} for s, m in enumerate([0.2, 0.3])
    ]
    lifts = {(1.0, 0.3): -0.01, (1.0, 0.7): 0.02, (4.0, 0.3): 0.0, (4.0, 0.7): 0.03}
    for (t, b), lift in lifts.items():
        rows += [
            {"method": "cwd", "temperature": t, "beta": b, "seed": s, "miou": m + lift + 0.001 * s}
            for s, m in enumerate([0.2, 0.3])
        ]
    (line,) = report.sweep_findings(pd.DataFrame(rows))
    # above no KD's mean 0.25: every cell whose lift + 0.0005 (the mean seed offset) is positive
    above = sum(lift + 0.0005 > 0 for lift in lifts.values())
    assert line.startswith(
        f"- Channel-wise (CWD): {above} of 4 cells lie above no KD's mean on the same seeds (seeds 0, 1: 0.2500)"
    )
    assert "its best cell is T = 4, β = 0.7 (+0.0305" in line
    # mean over T at each beta: (0.25 + 0.0005 - 0.01 + 0.25 + 0.0005 + 0) / 2 for beta 0.3
    assert f"β = 0.3: {0.25 + 0.0005 - 0.005:.4f}, β = 0.7: {0.25 + 0.0005 + 0.025:.4f}" in line


def test_the_failure_findings_read_their_tables():
    from kdlib import data

    size = pd.DataFrame(
        {"objects": [10, 20, 30], "teacher": [0.3, 0.8, 0.9], "none": [0.1, 0.2, 0.4], "both": [0.05, 0.3, 0.5]},
        index=["small", "medium", "large"],
    )
    pairs = pd.DataFrame(
        {
            "true class": ["cyan square", "red disk", "lime disk"],
            "predicted as": ["cyan checked disk", "red striped disk", "red disk"],
            "rate": [0.95, 0.5, 0.25],
            "pixels": [10, 5, 2],
        }
    )
    dependency = pd.DataFrame(
        {
            "method": ["none", "feature", "response", "both", "cwd"],
            "objects": [50] * 5,
            "ratio": [1.3, 1.2, 1.5, 1.0, 1.4],
            "ratio_ci95_low": [1.1, 0.9, 1.2, 0.8, 1.0],
            "ratio_ci95_high": [1.4, 1.5, 1.8, 1.3, 1.9],
        }
    )
    occlusion = pd.DataFrame(
        {
            "objects": [5, 5],
            "median_area": [0.012, 0.034],
            "teacher": [0.8, 0.7],
            "none": [0.2, 0.3],
            "both": [0.2, 0.4],
        },
        index=["none (<5%)", "partial (5-30%)"],
    )
    tables = {"size": size, "confused_pairs": pairs, "teacher_dependency": dependency, "occlusion": occlusion}
    lines = report.failure_findings(tables, ["none", "both"], data.class_table("shapes"))
    # students' means: small 0.075, medium 0.25, large 0.45
    small, large = (0.1 + 0.05) / 2, (0.4 + 0.5) / 2
    assert lines[0] == (
        f"By size, the students (mean of 2 students, each method's first seed) score lowest on small objects "
        f"({small:.2f} object IoU) and highest "
        f"on large ({large:.2f}); the teacher scores 0.30 and 0.90 there."
    )
    # a bucket table beyond size names its buckets' median object area: here the partly occluded
    # objects (students 0.35) are the larger ones (3.4 % of the image against 1.2 %), so size may be the reason
    assert lines[1] == (
        "By occlusion, the students score lowest on none (<5%) "
        "objects (0.20 object IoU) and highest on partial (5-30%) (0.35); the teacher scores 0.80 and 0.70 there. "
        "The partial (5-30%) objects cover a median 3.4% of the image, the none (<5%) ones 1.2%: the none (<5%) "
        "objects are also the smaller ones, so this table does not tell occlusion apart from size."
    )
    larger = {**tables, "occlusion": occlusion.assign(median_area=[0.05, 0.034])}
    assert report.failure_findings(larger, ["none", "both"])[1].endswith(
        "the none (<5%) ones 5.0%: their median size does not explain the none (<5%) objects' lower score."
    )
    lines = lines[:1] + lines[2:]
    assert "cyan square as cyan checked disk (95% of its pixels)" in lines[1]
    # cyan/cyan and red/red share a colour, lime/red does not; disk/disk twice shares a shape
    assert lines[2] == "Of the 3 most confused pairs, 2 share a colour and 2 a shape."
    # one more same-colour pair of other shapes (red disk as red halved cross): colour 3 of 4, shape 2
    more = pd.concat([pairs, pd.DataFrame({"true class": ["red disk"], "predicted as": ["red halved cross"]})])
    said = report.failure_findings({"confused_pairs": more}, ["none", "both"], data.class_table("shapes"))[-1]
    assert (
        said
        == "Of the 4 most confused pairs, 3 share a colour and 2 a shape: more of them share a colour than a shape."
    )
    # every pair within a colour (lime disk as red disk dropped): colour 3 of 3, shape 2
    within = pd.concat([pairs.iloc[:2], more.iloc[3:]])
    said = report.failure_findings({"confused_pairs": within}, ["none", "both"], data.class_table("shapes"))[-1]
    assert said == (
        "Of the 3 most confused pairs, 3 share a colour and 1 a shape: the confusions stay within a colour, so the "
        "student tells colours apart better than shapes."
    )
    assert "the no-KD student, which never saw the teacher, fails 1.30 times" in lines[3]
    assert lines[3].endswith("harder for a student that learnt from the labels alone too.")
    # without the paired difference (a table written before it existed) no rule is applied: only the range
    assert lines[4] == "The KD students' ratios are 1.00 to 1.50."
    # the verdict follows the paired interval of each difference: Feature's ratio 1.2 lies inside the no-KD
    # ratio's own interval [1.1, 1.4], but the interval of its difference lies below 0
    level = 1 - 0.05 / 4
    paired = dependency.assign(
        ratio_minus_none=[math.nan, -0.1, 0.2, -0.3, 0.1],
        ratio_minus_none_low=[math.nan, -0.15, -0.05, -0.5, 0.02],
        ratio_minus_none_high=[math.nan, -0.02, 0.4, 0.1, 0.2],
        ratio_minus_none_level=[math.nan] + [level] * 4,
    )
    lines = report.failure_findings({"teacher_dependency": paired}, ["none", "both"])
    assert lines[-4:] == [
        "Each KD student's ratio minus the no-KD student's (each method's first-seed run), with a paired bootstrap "
        "interval over the same 50 objects at 98.8% each (Bonferroni over 4 students: 95% together): Feature -0.10 "
        "[-0.15, -0.02]; Response +0.20 [-0.05, +0.40]; Feature & Response -0.30 [-0.50, +0.10]; Channel-wise (CWD) "
        "+0.10 [+0.02, +0.20]. Both ratios are taken on each resample, so the luck of the objects drawn moves them "
        "alike.",
        "For Response and Feature & Response the interval covers 0: no sign, at this number of objects, that their "
        "failures follow the teacher's more than a student's that never saw it.",
        "For Channel-wise (CWD) the interval lies above 0: its failures follow the teacher's more than the no-KD "
        "run's do, a pattern consistent with taking on some of the teacher's mistakes.",
        "For Feature the interval lies below 0: its failures follow the teacher's less than those of a student that "
        "never saw it.",
    ]
    # a student whose interval is undefined is named, not silently dropped
    paired.loc[1, ["ratio_minus_none_low", "ratio_minus_none_high"]] = math.nan
    lines = report.failure_findings({"teacher_dependency": paired}, ["none", "both"])
    assert not any("Feature -0.10" in line for line in lines)
    assert lines[-1].startswith("No interval for Feature: too many resamples")


def test_the_findings_put_each_row_in_the_group_its_tests_give(tmp_path):
    """The headline's groups follow the paired tests: beats (after Holm), larger than seed noise
    but not after Holm, within seed noise; and an empty list reads 'no method', never 'None'."""
    base = [0.20, 0.18, 0.19, 0.21, 0.17, 0.22]
    gains = {
        "cwd": [0.05, 0.06, 0.055, 0.048, 0.062, 0.051],  # beats no KD after Holm
        "response": [0.004, 0.001, 0.006, 0.0, 0.005, 0.002],  # p 0.027 alone, x2 under Holm over 2 rows
        "feature": [0.01, -0.01, 0.0, 0.02, -0.02, 0.0],  # within seed noise
    }
    rows = [{"run": "none", "seed": s, "miou": b} for s, b in enumerate(base)]
    rows += [{"run": n, "seed": s, "miou": b + g} for n, gs in gains.items() for s, (b, g) in enumerate(zip(base, gs))]
    runs = pd.DataFrame(rows).assign(epochs=20, seconds=1.0)
    paired = report.paired_comparison(runs)
    lines = report.headline_md(runs, paired, None, tmp_path, [])
    text = "\n".join(lines)
    beat = next(line for line in lines if line.startswith("- Beat no KD"))
    lost = next(line for line in lines if line.startswith("- A difference larger than seed noise alone"))
    noise = next(line for line in lines if line.startswith("- No difference from no KD"))
    assert "Channel-wise (CWD)" in beat and "Response" in lost and "Feature" in noise
    assert "Response" not in noise and "Feature" not in lost
    assert report._names([]) == "no method" and "None" not in text


def test_a_table_for_readers_names_methods_and_columns_in_words_and_rounds():
    from kdlib import results

    table = pd.DataFrame(
        {
            "run": ["cwd", "response_t2"],
            "vs": ["none", "none"],
            "mean_diff": [0.070094, -0.017847],
            "p_holm": [0.0027, 0.13],
            "p": [0.00004, math.nan],
        }
    )
    shown = results.for_reader(table, 3)
    assert list(shown.columns) == ["method", "against", "mean difference", "p (Holm)", "p"]
    # p-values as text: 0.00004 at 3 decimals is "< 0.001", not 0.0; a missing one a dash
    assert list(shown["p (Holm)"]) == ["0.003", "0.130"] and list(shown["p"]) == ["< 0.001", "—"]
    assert list(shown["method"]) == ["Channel-wise (CWD)", "Response ×T² (Hinton's form)"]
    assert list(shown["against"]) == ["No KD", "No KD"] and list(shown["mean difference"]) == [0.07, -0.018]
    assert list(table.columns) == ["run", "vs", "mean_diff", "p_holm", "p"]  # the table itself is untouched
    kernels = results.for_reader(pd.DataFrame({"run": ["cwd", "at"], "same_kernels": [True, False]}))
    assert list(kernels["same CPU kernels"]) == ["yes", "no"]  # an answer, not a Python literal
    buckets = pd.DataFrame({"objects": [3], "none": [0.12345], "both": [0.5]}, index=["small"])
    assert list(results.for_reader(buckets).columns) == ["objects", "No KD", "Feature & Response"]
    runs = pd.DataFrame(
        [
            {"run": "none", "seed": 0, "miou": 0.1981667, "pixel_accuracy": 0.9108213, "best_epoch": 17, "epochs": 20}
            | {"seconds": 144.382, "folder": "runs/none/seed0"}
        ]
    )
    row = results.reader_table(runs).iloc[0].to_dict()
    assert row == {
        "Method": "No KD",
        "Seed": 0,
        "Best val mIoU": 0.1982,
        "Pixel accuracy": 0.9108,
        "Best epoch": 17,
        "Epochs": 20,
        "Training time (s)": 144,
    }


def test_the_collapse_findings_read_each_column_against_the_threshold():
    from kdlib.failures import COLLAPSED_SIMILARITY

    assert COLLAPSED_SIMILARITY == 0.99  # the rule docs/regime.md fixed before feature_student's runs
    similarity = pd.DataFrame(
        {
            "teacher (raw)": [0.6, 0.5, 0.7, 0.9],
            "teacher, projected": [0.9, 0.995, 1.0, 1.0],
            "feature-KD student": [0.88, 0.992, 0.999, 0.999],
            "no-KD student": [0.7, 0.6, 0.85, 0.4],
            "student-side adapters: student": [0.7, 0.65, 0.995, 0.5],
            "student-side adapters: student, adapted": [0.6, 0.5, 0.8, 0.9],
        },
        index=pd.Index(["layer1", "layer2", "layer3", "layer4"], name="level"),
    )
    lines = report.collapse_findings(similarity)
    # projected minus raw: +0.3, +0.495, +0.3, +0.1
    assert lines[0] == (
        "The trained projections change the teacher's mean position cosine by +0.300 at layer1, +0.495 at layer2, "
        "+0.300 at layer3, +0.100 at layer4 (the projected teacher's: 0.900 to 1.000)."
    )
    assert lines[1] == (
        "Collapsed (mean position cosine above 0.99): the raw teacher at no level; the projected teacher at layer2, "
        "layer3 and layer4; the feature-KD student at layer2, layer3 and layer4; the no-KD student at no level. This is "
        "one measurement (the first seed's checkpoints, a few validation images), without an interval."
    )
    # (0.88 + 0.992 + 0.999 + 0.999) / 4 = 0.9675; (0.7 + 0.6 + 0.85 + 0.4) / 4 = 0.6375
    assert lines[2] == "The feature-KD student's positions average 0.968, the no-KD student's 0.637."
    # the student-side form keeps one collapsed level (layer3) of the report form's three
    assert lines[3].endswith(
        "own maps are collapsed at layer3 (positions average 0.711), its maps through the adapters at no level: "
        "moving the adapters removes the collapse at 2 of 3 levels."
    )
    no_collapse = similarity.assign(**{"student-side adapters: student": [0.7, 0.65, 0.9, 0.5]})
    assert report.collapse_findings(no_collapse)[3].endswith("moving the adapters removes the collapse.")
    # levels compared as sets: a collapse the report form did not have is added, not "as it was"
    elsewhere = similarity.assign(**{"student-side adapters: student": [0.995, 0.995, 0.999, 0.999]})
    assert report.collapse_findings(elsewhere)[3].endswith("moving the adapters adds collapse at layer1.")
    same = similarity.assign(**{"student-side adapters: student": [0.7, 0.995, 0.999, 0.999]})
    assert report.collapse_findings(same)[3].endswith("moving the adapters leaves the collapse as it was.")
    neither = no_collapse.assign(**{"feature-KD student": [0.8, 0.9, 0.9, 0.9]})
    assert report.collapse_findings(neither)[3].endswith("so there was no collapse to remove.")
    without = similarity.drop(columns=["student-side adapters: student", "student-side adapters: student, adapted"])
    assert "make methods trains it" in report.collapse_findings(without)[-1]
    # with runs: both forms against no KD, and the student-side form against the report's
    base = [0.20, 0.22, 0.18, 0.21]
    runs = pd.DataFrame(
        [{"run": "none", "seed": s, "miou": b} for s, b in enumerate(base)]
        + [{"run": "feature", "seed": s, "miou": b - 0.001 * (s % 2)} for s, b in enumerate(base)]
        + [{"run": "feature_student", "seed": s, "miou": b + 0.05 + 0.001 * s} for s, b in enumerate(base)]
    ).assign(epochs=20, seconds=1.0)
    last = report.collapse_findings(similarity, runs)[-1]
    # feature_student - none: 0.050, 0.051, 0.052, 0.053 (mean 0.0515); against feature: 0.050, 0.052, 0.052, 0.054
    assert "Feature, adapters on the student +0.0515 mIoU" in last
    assert "The student-side form against the report's (one comparison): +0.0520 mIoU" in last
    assert last.endswith(
        "So with the adapters moved, feature KD beats no KD; against the report's own form it does better (the one "
        "comparison above)."
    )
    flat = runs.assign(
        miou=[
            m - 0.05 - 0.001 * s if r == "feature_student" else m
            for r, s, m in zip(runs["run"], runs["seed"], runs["miou"])
        ]
    )
    flat.loc[flat["run"] == "feature_student", "miou"] += [0.01, -0.01, 0.0, 0.002]
    last = report.collapse_findings(similarity, flat)[-1]
    assert "So with the adapters moved, feature KD still does not differ from no KD by a difference these seeds" in last
    # against feature, by hand: 0.01, -0.009, 0.0, 0.003 (mean +0.001): not resolved, so no clause
    assert "against the report's own form" not in last
    worse = runs.assign(miou=[m - 0.1 if r == "feature_student" else m for r, m in zip(runs["run"], runs["miou"])])
    assert report.collapse_findings(similarity, worse)[-1].endswith(
        "feature KD does worse than no KD; against the report's own form it does worse (the one comparison above)."
    )


def test_chapter_7_closes_on_the_placement_measured_in_chapter_3_or_says_it_is_missing(tmp_path):
    assert "chapter 3 has not measured it here yet" in report.placement_md(tmp_path, pd.DataFrame())
    table = pd.DataFrame(
        {
            "level": ["layer1", "layer2"],
            "teacher (raw)": [0.6, 0.5],
            "teacher, projected": [0.9, 0.995],
            "feature-KD student": [0.88, 0.992],
        }
    )
    table.to_csv(tmp_path / "feature_position_similarity.csv", index=False)
    said = report.placement_md(tmp_path, pd.DataFrame({"run": ["none"], "seed": [0], "miou": [0.2]}))
    assert said.startswith(
        "- Does feature KD help once its target cannot collapse? Chapter 3's measurement: Collapsed (mean position"
    )
    assert "the projected teacher at layer2; the feature-KD student at layer2." in said


def test_the_settings_table_gives_table_1_and_the_demo_as_a_run_gets_them(tmp_path):
    from kdlib import profiles

    table = profiles.settings_table("shapes", tmp_path / "nothing-here", "demo")
    full, demo = table["full (Table 1)"], table["demo"]
    # the report's Table 1: Adam 1e-3, weight decay 1e-4, batch 16, plateau x0.2 after 10, early stop 30, 300 epochs
    rows = ["learning rate (Adam)", "weight decay", "batch size", "learning-rate schedule", "plateau: factor"]
    assert full[rows].tolist() == ["0.001", "0.0001", "16", "plateau", "0.2"]
    assert full["plateau: patience (epochs)"] == "10" and full["epochs"] == "300"
    assert full["early stopping: patience (epochs)"] == "30"
    # the demo: 20 epochs of lr 1e-2 on a cosine schedule, each image 8 times an epoch, six seeds two at a time;
    # neither the plateau nor early stopping after 30 epochs can act in 20
    assert (demo["epochs"], demo["learning rate (Adam)"], demo["passes over the training images per epoch"]) == (
        "20",
        "0.01",
        "8",
    )
    assert demo["plateau: factor"] == demo["early stopping: patience (epochs)"] == "—"
    assert (demo["seeds"], demo["runs side by side"]) == ("6", "2")
    assert "training images (this data root)" not in table.index  # no data there: nothing claimed
    # a chapter's epochs override reaches its column, and the full profile alone is one column
    longer = profiles.settings_table("shapes", tmp_path, "demo", epochs=40)["demo"]
    assert longer["early stopping: patience (epochs)"] == "30"
    assert list(profiles.settings_table("shapes", tmp_path, "full").columns) == ["full (Table 1)"]


def test_chapter_8s_ending_puts_each_row_in_its_verdicts_group():
    base = [0.20, 0.18, 0.19, 0.21, 0.17, 0.22]
    gains = {
        "cwd": [0.05, 0.06, 0.055, 0.048, 0.062, 0.051],  # beats no KD after Holm
        "response_t2": [-0.004, -0.001, -0.006, 0.0, -0.005, -0.002],  # p 0.027 alone, not after Holm
        "feature": [0.01, -0.01, 0.0, 0.02, -0.02, 0.0],  # not resolved
        "response": [0.002, 0.003, -0.001, 0.001, 0.0, 0.002],  # not resolved
    }
    rows = [{"run": "none", "seed": s, "miou": b} for s, b in enumerate(base)]
    rows += [{"run": n, "seed": s, "miou": b + g} for n, gs in gains.items() for s, (b, g) in enumerate(zip(base, gs))]
    rows += [{"run": "at", "seed": 0, "miou": 0.25}]  # one seed: its own group, no interval to print
    lines = report.rows_findings(pd.DataFrame(rows).assign(epochs=20, seconds=1.0))
    assert "One seed, no verdict yet: Attention transfer (AT)." in lines
    assert not any("AT" in line and "nan" in line for line in lines)
    assert lines[0].startswith(
        "Beat no KD by more than seed noise, after Holm over all the rows: Channel-wise (CWD) +0."
    )
    assert lines[1].startswith(
        "Differ from no KD by more than seed noise alone, but not once all the rows are corrected for (Holm): "
        "Response ×T² (Hinton's form) -0."
    )
    assert lines[2].startswith("No difference to no KD these seeds resolve: Feature +0.0000")
    # T² against the response row it changes, paired by seed: by hand, the mean of
    # (-0.004-0.002, -0.001-0.003, -0.006+0.001, 0-0.001, -0.005-0, -0.002-0.002) = -0.025 / 6
    assert lines[-1].startswith(
        "Response ×T² (Hinton's form) against Response (the response term × T²), paired by seed (one comparison, not "
        "corrected with the others): -0.0042 mIoU"
    )
