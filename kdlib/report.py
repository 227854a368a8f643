"""``report/report.md`` and a self-contained ``report/report.html``, rebuilt from run
artifacts. Every number in the text is read from a JSON or CSV file written by a run; the
per-run ``metrics.json`` files are copied under ``report/runs/`` so each can be traced."""

from __future__ import annotations

import base64
import json
import math
import re
import shutil
from pathlib import Path

import pandas as pd

from . import methods
from .experiment import target_of
from .files import atomic_write_text
from .methods import display_name, run_names
from .results import collect_runs, collect_with_committed, for_reader, per_class_table, unfinished_runs
from .stats import CONVERGED_GAIN, LARGER, NOT_AFTER_HOLM, ONE_SEED, convergence_table, paired_comparison, summary_table
from .sweep import report_cell


def _source(runs: pd.DataFrame, method: str) -> str:
    """Which target trains a row, and whether its numbers are this machine's or committed."""
    target = target_of(method)  # plain text: it is a DataFrame cell in chapter 7 too
    committed = "source" in runs and (runs.loc[runs["run"] == method, "source"] == "committed").any()
    return f"{target}, committed" if committed else target


FIGURES = {  # file name in figures/ -> caption
    "architecture.png": "Student and teacher: every stage's output shape and parameters (Section 1).",
    "data_augmentation.png": "Samples, masks and Table 2's augmentation.",
    "loss_none.png": "No knowledge distillation (Figure 3).",
    "loss_feature.png": "Feature-based KD (Figure 4).",
    "loss_response.png": "Response-based KD (Figure 5).",
    "loss_both.png": "Feature and response KD (Figure 6).",
    "qualitative_none.png": "No KD: successes and failures (Figure 7).",
    "qualitative_response.png": "Response KD: successes and failures (Figure 8).",
    "qualitative_feature.png": "Feature KD: successes and failures (Figure 9).",
    "qualitative_both.png": "Feature & response KD: successes and failures (Figure 10).",
    "feature_position_maps.png": (
        "Each map's cosine between every position and the image's mean direction, first val image (chapter 3): "
        "a map of ones is collapsed."
    ),
    "failure_buckets.png": "Object IoU by size, illumination and occlusion.",
    "per_class_iou.png": "Per-class IoU of the teacher and each method.",
    "budget_curves.png": "Best val mIoU against training steps on the demo's draw: no KD (black) and each method (Section 6).",
    "sweep.png": "Hyper-parameter map (chapter 9, `make sweep`): mean val mIoU of each T × β cell run, against no KD.",
}


def _fmt(x, digits=4):
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _md_table(df: pd.DataFrame, floatfmt: int = 4) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(str(c) for c in cols) + " |", "|" + "---|" * len(cols)]
    for _, row in df.iterrows():
        cells = [_fmt(v, floatfmt) if isinstance(v, float) else str(v) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def results_table(runs: pd.DataFrame, teacher: dict | None) -> pd.DataFrame:
    summary = summary_table(runs)
    rows = []
    for method, r in summary.iterrows():
        std = "" if math.isnan(r["miou_std"]) else f" ± {r['miou_std']:.4f}"
        rows.append(
            {
                "KD type": display_name(method),
                "from": _source(runs, method),
                "α / β / T": _weights(runs[runs["run"] == method]["folder"].iloc[0]),
                "mIoU (mean ± std)": f"{r['miou_mean']:.4f}{std}",
                "seeds": int(r["seeds"]),
                "# training epochs": f"{r['epochs_mean']:g}",
                "training time per run (mean)": f"{r['seconds_mean']:.0f}s",
            }
        )
    if teacher is not None:
        rows.append(
            {
                "KD type": f"Teacher ({teacher['model']}, upper bound)",
                "from": "make demo",
                "α / β / T": "—",
                "mIoU (mean ± std)": f"{teacher['miou']:.4f}",
                "seeds": "—",
                "# training epochs": "—",
                "training time per run (mean)": "—",
            }
        )
    return pd.DataFrame(rows)


def _weights(run) -> str:
    """A run's loss weights and temperature as its config.json records them."""
    path = Path(run) / "config.json"
    if not path.is_file():
        return "?"
    c = json.loads(path.read_text())
    if c["method"] == "none":
        return "—"
    return f"{c['alpha']:g} / {c['beta']:g} / {c['temperature']:g}"


def gap_closed(runs: pd.DataFrame, teacher: dict | None) -> pd.DataFrame:
    """Share of the no-KD student's gap to the teacher that each method closes, in percent
    (100: the teacher's score; 0: no KD's; below 0: worse than no KD): the paired difference to
    no KD (:func:`kdlib.stats.paired_comparison`, over the seeds both share) over the gap from no
    KD's mean to the teacher, with the paired difference's 95% interval over the same gap. The
    gap's own uncertainty (no KD's mean over its seeds; the teacher is one evaluation) is left
    out: it scales the share a little, it does not move its sign. A share whose interval covers
    0 is no evidence of closing or of widening the gap."""
    summary = summary_table(runs)
    paired = paired_comparison(runs)
    if teacher is None or "none" not in summary.index or paired.empty:
        return pd.DataFrame()
    gap = teacher["miou"] - summary.loc["none", "miou_mean"]
    if gap == 0:
        return pd.DataFrame()
    rows = []
    for _, r in paired.iterrows():
        low, high = sorted((100 * r["ci95_low"] / gap, 100 * r["ci95_high"] / gap))
        rows.append(
            {
                "method": display_name(r["run"]),
                "mIoU": summary.loc[r["run"], "miou_mean"],
                "share of the gap closed (%)": 100 * r["mean_diff"] / gap,
                "share, 95% CI from (%)": low,
                "share, 95% CI to (%)": high,
            }
        )
    return pd.DataFrame(rows)


def cached_vs_online(runs: pd.DataFrame) -> list[str]:
    """Markdown lines comparing response KD from the teacher-output cache with online
    response KD, paired by seed (empty when either is missing)."""
    pair = runs[runs["run"].isin(["response", "response_cached"])]
    if set(pair["run"]) != {"response", "response_cached"}:
        return []
    diff = paired_comparison(pair, baseline="response").drop(columns=["vs"])
    seconds = summary_table(pair)["seconds_mean"]
    return [
        "Offline response KD (teacher logits cached once per image, warped with each augmented "
        "image; colour jitter does not reach the cached target) against online response KD, "
        f"paired by seed; training time {seconds['response_cached']:.0f}s against "
        f"{seconds['response']:.0f}s per run:",
        "",
        _md_table(for_reader(diff)),
        "",
    ]


def unlabeled_md(runs: pd.DataFrame) -> list[str]:
    """What the unlabeled images add to a method: ``<m>_unlabeled`` against ``<m>``, paired by seed."""
    lines = []
    for name in sorted(m for m in runs["run"].unique() if m.endswith("_unlabeled")):
        base = name.removesuffix("_unlabeled")
        pair = runs[runs["run"].isin([base, name])]
        if base not in set(pair["run"]):
            continue
        diff = paired_comparison(pair, baseline=base).drop(columns=["vs", "p_holm"])
        lines += [
            f"**Unlabeled images.** {display_name(base)} with the unlabeled split added (distillation terms "
            "only, as many unlabeled images per step as labeled ones) against the same method without them, "
            "paired by seed (*same CPU kernels*: whether every run of the pairs computed with one class of CPU "
            "kernels, docs/reliability.md):",
            "",
            _md_table(for_reader(diff)),
            "",
        ]
    return lines


def sweep_md(path: Path) -> list[str]:
    """The hyper-parameter map's headline (chapter 9, ``make sweep``): each method's best (T, β)
    cell and the report's (Table 1's T and β), against the no-KD runs of the sweep's seeds (which
    the table holds too)."""
    if not path.is_file():
        return []
    table = pd.read_csv(path)
    none, table = table[table["method"] == "none"], table[table["method"] != "none"]
    seeds = sorted(table["seed"].unique())
    return [
        f"**Hyper-parameter map** (chapter 9, `make sweep`, committed `{path.name}`): mean val mIoU over seeds "
        f"{', '.join(map(str, seeds))} of every T ∈ "
        f"{{{', '.join(f'{t:g}' for t in sorted(table['temperature'].unique()))}}} × β ∈ "
        f"{{{', '.join(f'{b:g}' for b in sorted(table['beta'].unique()))}}} ({cells_trained(table)}); "
        "no KD over the same seeds: "
        f"{none['miou'].mean():.4f}. The best cell is chosen after seeing the results, so its margin is an "
        "optimistic estimate; `p` is corrected (Holm) over all the cells of the method.",
        "",
        _md_table(sweep_headline(table, none)),
        "",
    ]


def cells_trained(table: pd.DataFrame) -> str:
    """How many cells of the grid each method's map holds, e.g. "response: 16 of 16 cells"."""
    grid = table["temperature"].nunique() * table["beta"].nunique()
    cells = table.groupby("method", sort=False)[["temperature", "beta"]].apply(lambda g: len(g.drop_duplicates()))
    return ", ".join(f"{m}: {n} of {grid} cells" for m, n in cells.items())


def sweep_cells(table: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Every (method, T, β) cell of a sweep: mean and std of val mIoU over its seeds, and the
    paired difference to no KD (same seeds) with its detectable difference and Holm-corrected p
    over all the cells of the method."""
    none = runs[runs["method"] == "none"][["seed", "miou"]]
    rows = []
    for method, of_method in table.groupby("method", sort=False):
        label = [f"T{t:g}_b{b:g}" for t, b in zip(of_method["temperature"], of_method["beta"])]
        cells = of_method.assign(run=label)[["run", "seed", "miou"]]
        paired = paired_comparison(pd.concat([none.assign(run="none"), cells]))
        stats = cells.groupby("run")["miou"].agg(["mean", "std"])
        for _, r in paired.iterrows():
            t, b = (float(v[1:]) for v in r["run"].split("_"))
            rows.append(
                {
                    "method": method,
                    "T": t,
                    "beta": b,
                    "miou_mean": stats.loc[r["run"], "mean"],
                    "miou_std": stats.loc[r["run"], "std"],
                    "vs_none": r["mean_diff"],
                    "detectable": r["detectable"],
                    "p_holm": r["p_holm"],
                }
            )
    return pd.DataFrame(rows)


def sweep_headline(table: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Per method: its best cell and the report's cell (Table 1's T and β)."""
    t, b = report_cell()
    cells = sweep_cells(table, runs)
    rows = []
    for method, of_method in cells.groupby("method", sort=False):
        best = of_method.loc[of_method["miou_mean"].idxmax()]
        rows.append({"method": method, "cell": f"best: T={best['T']:g}, β={best['beta']:g}", **_cell(best)})
        mine = of_method[(of_method["T"] == t) & (of_method["beta"] == b)]
        if not mine.empty:
            rows.append({"method": method, "cell": f"the report's: T={t:g}, β={b:g}", **_cell(mine.iloc[0])})
    return pd.DataFrame(rows)


def _cell(r) -> dict:
    return {
        "mIoU (mean ± std)": f"{r['miou_mean']:.4f} ± {r['miou_std']:.4f}",
        "vs no KD": f"{r['vs_none']:+.4f}",
        "detectable": f"±{r['detectable']:.4f}",
        "p (Holm, all cells)": _p(r["p_holm"]).removeprefix("= "),
    }


def _p(p: float) -> str:
    """A p-value as a sentence reads it: "= 0.031", or "< 0.001" rather than "= 0.000"."""
    return "< 0.001" if p < 0.001 else f"= {p:.3f}"


def _images(config: dict, key: str) -> str:
    n = config.get("split_sizes", {}).get(config[key])
    return f" ({n} images)" if n is not None else ""


def unfinished_md(runs_dir) -> list[str]:
    """The runs this machine started and has not finished (the sweep's too): left out of every
    table, figure and verdict, and named here with the target that finishes them."""
    runs_dir = Path(runs_dir)
    found = [(f"`{target_of(r['run'])}`", "", r) for _, r in unfinished_runs(runs_dir).iterrows()]
    for cell in sorted(runs_dir.glob("sweep/*")):
        found += [("`make sweep`", f" {cell.name}", r) for _, r in unfinished_runs(cell).iterrows()]
    if not found:
        return []
    runs = [
        f"{display_name(r['run'])}{where} seed {r['seed']} (epoch {r['epochs_run']}"
        + (f" of {r['epochs']})" if pd.notna(r["epochs"]) else ")")
        for _, where, r in found
    ]
    targets = sorted({target for target, _, _ in found})
    return [
        f"**Unfinished runs**, left out of every table, figure and verdict of this report: {'; '.join(runs)}. "
        f"{' and '.join(targets)} finish{'es' if len(targets) == 1 else ''} them (resuming each where it "
        "stopped, unless its settings or data changed since).",
        "",
    ]


def verdicts(paired: pd.DataFrame) -> list[str]:
    """One plain sentence per method: does it beat no KD, by how much, what the seeds can
    resolve, and whether it holds once every comparison of the table is corrected for (Holm)."""
    lines, tests = [], len(paired)
    for _, r in paired.iterrows():
        name = display_name(r["run"])
        if r["verdict"] == ONE_SEED:
            lines.append(f"- **{name}**: one seed, no verdict.")
            continue
        if r["verdict"] == "within seed noise":
            said = "does not differ from no KD by more than seed noise"
        else:
            said = "beats no KD" if r["mean_diff"] > 0 else "is worse than no KD"
            if r["verdict"] == NOT_AFTER_HOLM:
                said += f", but not once the {tests} comparisons are corrected for together (Holm)"
        lines.append(
            f"- **{name}** {said}: {r['mean_diff']:+.4f} mIoU over {int(r['seeds'])} paired seeds "
            f"(95% CI {r['ci95_low']:+.4f} to {r['ci95_high']:+.4f}; a difference these seeds resolve must "
            f"exceed ±{r['detectable']:.4f}; paired t-test p {_p(r['p'])}, Holm-corrected p "
            f"{_p(r['p_holm'])}; Wilcoxon signed-rank p {_p(r['p_wilcoxon'])})."
        )
    return lines


def convergence_md(runs: pd.DataFrame) -> list[str]:
    """Whether every run trained to convergence, and the no-KD student's train/val mIoU."""
    table = convergence_table(runs)
    done = int(table["converged"].sum())
    lines = [
        f"**Convergence.** A run has converged when early stopping ended it or the best val mIoU of "
        f"its last quarter of epochs is less than {CONVERGED_GAIN} above the best before it: "
        f"{done} of {len(table)} runs have. Under a cosine schedule the learning rate falls to 0 by the last "
        "epoch, so a run that stopped gaining has settled, not reached what a longer schedule would give (Section "
        "6's longer budgets measure that). Train mIoU is the whole training split, unaugmented, at the best epoch.",
        "",
    ]
    summary = table.groupby("run").agg(
        runs=("seed", "size"),
        converged=("converged", "sum"),
        best_epoch=("best_epoch", "mean"),
        epochs=("epochs", "mean"),
        last_quarter_gain_max=("last_quarter_gain", "max"),
        train_miou=("train_miou", "mean"),
        val_miou=("val_miou", "mean"),
    )
    order = [m for m in run_names() if m in summary.index] + [m for m in summary.index if m not in run_names()]
    summary = summary.loc[order].reset_index()
    summary = summary.assign(run=[display_name(m) for m in summary["run"]]).rename(columns={"run": "method"})
    summary["converged"] = summary["converged"].astype(int).astype(str) + " of " + summary["runs"].astype(str)
    for column in ("best_epoch", "epochs"):
        summary[column] = [f"{v:.1f}" for v in summary[column]]
    summary = summary.drop(columns=["runs"]).rename(
        columns={
            "converged": "runs converged",
            "best_epoch": "best epoch (mean)",
            "epochs": "epochs (mean)",
            "last_quarter_gain_max": "largest last-quarter gain",
            "train_miou": "train mIoU (mean)",
            "val_miou": "val mIoU (mean)",
        }
    )
    return lines + [_md_table(summary), ""]


def per_class_md(runs_dir, dataset: str, k: int = 3, committed_dir=None) -> list[str]:
    """Where each method gains or loses against no KD: the classes with the largest and the
    smallest change in IoU (means over seeds)."""
    from .data import class_names

    table = per_class_table(runs_dir, class_names(dataset), committed_dir=committed_dir)
    if "none" not in table.columns or len(table.columns) < 2:
        return []
    lines = [
        f"**Where each method differs from no KD** (per-class IoU, mean over seeds; the {k} classes "
        "with the largest gain and the largest loss):",
        "",
    ]
    for method in [m for m in table.columns if m != "none"]:
        change = (table[method] - table["none"]).dropna().sort_values()
        # a class that did not move is neither: only changes of 0.001 or more are listed
        gains = ", ".join(f"{c} {v:+.3f}" for c, v in change[::-1][:k].items() if v >= 0.0005) or "none"
        losses = ", ".join(f"{c} {v:+.3f}" for c, v in change[:k].items() if v <= -0.0005) or "none"
        lines.append(f"- {display_name(method)}: gains {gains}; losses {losses}.")
    return lines + [""]


def build_all(dataset: str, root, runs_dir, figures_dir, report_dir, device: str = "cpu", image_size=None) -> Path:
    """``make report``: every figure and table of the report from the finished runs, the data
    and the models (:mod:`kdlib.figures`, the functions the chapters call), then the report
    itself. No notebook runs and nothing trains."""
    from . import figures
    from .teacher import evaluate_teacher

    runs_dir, figures_dir, report_dir = Path(runs_dir), Path(figures_dir), Path(report_dir)
    tables, committed = report_dir / "tables", report_dir / "runs"
    teacher = evaluate_teacher(dataset, root, image_size, device, report_dir)
    figures.augmentation(dataset, root, figures_dir, image_size)
    figures.architecture(dataset, figures_dir)
    here = collect_runs(runs_dir)
    for name in (n for n in methods.names("report") if n in set(here["run"])):
        figures.loss_curves(here, name, figures_dir)
    if "feature" in set(here["run"]):
        figures.feature_similarity(dataset, root, runs_dir, tables, image_size, figures_dir)
    figures.failure_analysis(dataset, root, runs_dir, figures_dir, tables, image_size, device)
    figures.per_class(runs_dir, committed, dataset, teacher, figures_dir)
    if (tables / "sweep.csv").is_file():
        figures.sweep_map(pd.read_csv(tables / "sweep.csv"), figures_dir)
    figures.budget_curves(runs_dir, committed, figures_dir)
    return build_report(runs_dir, figures_dir, report_dir, dataset)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}{'es' if word.endswith('s') else 's'}"


def _ci(r) -> str:
    return f"{r['mean_diff']:+.4f} mIoU (95% CI {r['ci95_low']:+.4f} to {r['ci95_high']:+.4f})"


def _crossed_kernels(paired: pd.DataFrame) -> list[str]:
    """The sentence naming the rows paired with no-KD runs of another class of CPU kernels
    (``same_kernels``: :func:`kdlib.stats.paired_comparison`), or none."""
    if "same_kernels" not in paired or paired["same_kernels"].all():
        return []
    crossed = paired[~paired["same_kernels"].astype(bool)]["run"]
    return [
        f"Paired with no KD runs of another machine, whose CPU kernels add in another order (docs/"
        f"reliability.md): {_names(crossed)}. Their differences hold that drift too; retraining them "
        "here pairs them cleanly."
    ]


def headline_md(
    runs: pd.DataFrame, paired: pd.DataFrame, teacher: dict | None, tables: Path, conditions, overview=()
) -> list[str]:
    """The findings in a few sentences, each computed from the tables below it: after the
    teacher and no KD, ``overview`` (whether each verdict holds under other draws, budgets and
    the same compute: :func:`overview_md`), then which rows beat no KD at the demo's budget and
    by how much, what unlabeled images add, the sweep's best cell, and ``conditions``' sentences."""
    summary = summary_table(runs)
    lines = ["## Findings", ""]
    if teacher is not None and "none" in summary.index:
        lines.append(
            f"- The teacher scores {teacher['miou']:.4f} val mIoU, the student without KD "
            f"{summary.loc['none', 'miou_mean']:.4f} (mean of {int(summary.loc['none', 'seeds'])} seeds)."
        )
    if overview:
        lines += ["", *overview]
    rows = paired  # the unlabeled rows too: a reader looks here for everything that beats no KD
    if not rows.empty:
        better = rows[(rows["verdict"] == LARGER) & (rows["mean_diff"] > 0)]
        worse = rows[(rows["verdict"] == LARGER) & (rows["mean_diff"] < 0)]
        lost = rows[rows["verdict"] == NOT_AFTER_HOLM]
        unresolved = rows[rows["verdict"] == "within seed noise"]
        tests = len(paired)
        if not better.empty:
            unlabeled = better[better["run"].str.endswith("_unlabeled")]
            lines.append(
                f"- Beat no KD at the demo's budget (its fixed number of steps), paired by seed and corrected by Holm "
                f"for all {tests} rows: "
                + "; ".join(f"{display_name(r['run'])} {_ci(r)}" for _, r in better.iterrows())
                + "."
                + (
                    f" {_names(unlabeled['run'])} also train on the unlabeled images, many more distinct images than "
                    "the labelled ones, with twice the images per step: not the same budget as no KD's."
                    if len(unlabeled)
                    else ""
                )
            )
        if not worse.empty:
            lines.append(
                "- Worse than no KD: "
                + "; ".join(f"{display_name(r['run'])} {_ci(r)}" for _, r in worse.iterrows())
                + "."
            )
        if not lost.empty:
            lines.append(
                f"- A difference larger than seed noise alone, but not once all {tests} rows are corrected for (Holm): "
                + "; ".join(f"{display_name(r['run'])} {_ci(r)}" for _, r in lost.iterrows())
                + "."
            )
        if not unresolved.empty:
            lines.append(
                "- No difference from no KD that these seeds resolve: "
                + "; ".join(
                    f"{display_name(r['run'])} {r['mean_diff']:+.4f} (detectable ±{r['detectable']:.4f})"
                    for _, r in unresolved.iterrows()
                )
                + "."
            )
    lines += [f"- {c}" for c in _crossed_kernels(paired)]
    for name in sorted(n for n in runs["run"].unique() if n.endswith("_unlabeled")):
        base = name.removesuffix("_unlabeled")
        pair = runs[runs["run"].isin([base, name])]
        if base in set(pair["run"]):
            r = paired_comparison(pair, baseline=base).iloc[0]
            lines.append(
                f"- Unlabeled images add {_ci(r)} to {display_name(base)} ({r['verdict']}, "
                f"{int(r['seeds'])} paired seeds)."
            )
    if (tables / "sweep.csv").is_file():
        table = pd.read_csv(tables / "sweep.csv")
        none = table[table["method"] == "none"]
        cells = sweep_cells(table[table["method"] != "none"], none)
        for method, of_method in cells.groupby("method", sort=False):
            best = of_method.loc[of_method["miou_mean"].idxmax()]
            lines.append(
                f"- The sweep's best cell for {display_name(method)} (T = {best['T']:g}, β = {best['beta']:g}): "
                f"{best['vs_none']:+.4f} against no KD (detectable ±{best['detectable']:.4f}, Holm-corrected p "
                f"{_p(best['p_holm'])} over its cells; picked after seeing the map, so optimistic)"
                + _shipped_outside_grid(method, of_method, paired)
                + "."
            )
    lines += conditions
    return lines + [""]


def _shipped_outside_grid(method: str, cells: pd.DataFrame, paired: pd.DataFrame) -> str:
    """A clause for a swept method whose results-table row (its declaration's T and β) lies
    outside the sweep's grid, with that row's own difference to no KD: a best cell below the
    shipped row then says the grid missed the better region, not that the sweep beat it."""
    defaults = methods.method_of(method).defaults
    t, b = defaults["temperature"], defaults["beta"]
    in_grid = ((cells["T"] == t) & (cells["beta"] == b)).any()
    row = paired[paired["run"] == method] if "run" in paired else paired.iloc[0:0]
    if in_grid or row.empty:
        return ""
    r = row.iloc[0]
    return (
        f"; the results table's row (T = {t:g}, β = {b:g}, outside the grid's T {_values(cells['T'])} × β "
        f"{_values(cells['beta'])}) differs from no KD by {_ci(r)} on its {int(r['seeds'])} seeds ({r['verdict']})"
    )


def _values(column: pd.Series) -> str:
    return "{" + ", ".join(f"{v:g}" for v in sorted(column.unique())) + "}"


def open_questions_md(
    runs: pd.DataFrame, paired: pd.DataFrame, config: dict, conditions_missing: list[str]
) -> list[str]:
    """What this report cannot answer yet, each item read from the runs."""
    items = []
    if config.get("dataset") == "shapes":
        items.append(
            "Whether these verdicts hold on PASCAL VOC 2012 with the FCN-ResNet50 teacher: every run here is on "
            "the embedded benchmark (`make demo DATASET=voc ... PROFILE=full` runs the report's own experiment)."
        )
    if not paired.empty:
        open_rows = paired[paired["verdict"] == "within seed noise"]
        if not open_rows.empty:
            items.append(
                "Whether these rows differ from no KD by less than their seeds can detect (each with the "
                "smallest difference it could detect): "
                + "; ".join(f"{display_name(n)} ±{d:.4f}" for n, d in zip(open_rows["run"], open_rows["detectable"]))
                + ". More seeds would tell."
            )
        lost = paired[paired["verdict"] == NOT_AFTER_HOLM]
        if not lost.empty:
            items.append(
                f"Whether {_names(lost['run'])} really differ from no KD: their interval excludes 0, but not once "
                f"the {len(paired)} rows are corrected for together; more seeds would tell."
            )
    table = convergence_table(runs)
    missed = int((~table["converged"]).sum())
    if missed:
        items.append(
            f"Whether the ranking holds at the students' asymptote: {missed} of {len(table)} runs still gained "
            f"{CONVERGED_GAIN} or more in their last quarter of epochs (Section 6's longer budgets measure it)."
        )
    items += conditions_missing
    return ["## Open questions", ""] + [f"- {item}" for item in items] + [""] if items else []


def build_report(runs_dir, figures_dir, report_dir, dataset: str = "shapes") -> Path:
    runs_dir, figures_dir, report_dir = Path(runs_dir), Path(figures_dir), Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    runs = collect_with_committed(runs_dir, report_dir / "runs")
    if not (runs["source"] == "this machine").any():
        raise FileNotFoundError(f"no finished runs under {runs_dir}: run the training notebooks (make demo) first")
    teacher_path = report_dir / "teacher_eval.json"
    teacher = json.loads(teacher_path.read_text()) if teacher_path.is_file() else None
    config = json.loads((Path(runs["folder"].iloc[0]) / "config.json").read_text())
    tables = report_dir / "tables"

    # trace: every run's metrics.json, history.csv and config.json under report/runs/<name>/seed<k>/
    # (and nothing else); the names this machine did not train keep their committed files
    here = runs[runs["source"] == "this machine"]
    for method in here["run"].unique():
        shutil.rmtree(report_dir / "runs" / method, ignore_errors=True)
    for run in here["folder"]:
        _trace(Path(run), report_dir / "runs" / Path(run).relative_to(runs_dir))
    _trace_conditions(runs_dir, report_dir / "runs")
    seeds = sorted(runs["seed"].unique().tolist())
    paired = paired_comparison(runs)
    section6, overview, said, missing = conditions_sections(runs_dir, figures_dir, report_dir)
    threads = config["environment"]["cpu_threads"]
    md = [
        "# Comparison of Knowledge Distillation Methods for Semantic Segmentation — reproduction",
        "",
        "*Generated by `kdlib.report` from the run artifacts under "
        f"`{runs_dir.name}/`; every number below is read from a `metrics.json`, `config.json`, "
        "`history.csv` or a table written from them.*",
        "",
        *headline_md(runs, paired, teacher, tables, said, overview),
        "## Section 1. Model",
        "",
        f"The student has {config['student_parameters']:,} parameters (the report: 3.7M).",
        "",
    ]
    md += _figure_md(figures_dir, report_dir, ["architecture.png"])
    md += ["## Section 2. Knowledge distillation", "", _md_table(methods_table(runs)), ""]
    md += term_formulas(runs)
    md += [
        "## Section 3. Training and evaluation",
        "",
        f"- Data set: `{dataset}`, trained on split `{config['train_split']}`{_images(config, 'train_split')}, "
        f"evaluated on the whole `{config['val_split']}` split{_images(config, 'val_split')} at "
        f"{config['image_size']}×{config['image_size']} px.",
        "- Metric: mIoU from one confusion matrix accumulated over every pixel of the split "
        "(torchmetrics `MulticlassJaccardIndex`, 21 classes, void 255 ignored; classes absent from "
        "both prediction and ground truth left out of the mean).",
        "- Checkpoint: the epoch with the best validation mIoU (the stopping metric of Table 1).",
        f"- Seeds: {', '.join(map(str, seeds))} — every method once per seed; tables show mean ± std.",
        f"- Settings: {config['epochs']} epochs at most ({_plural(config.get('train_repeats', 1), 'pass')} over "
        f"the training split each), {config['lr_schedule']} learning-rate schedule, batch {config['batch_size']}, "
        f"Adam lr {config['lr']}, weight decay {config['weight_decay']}, the loss weights and temperature of "
        "each method in Section 2, "
        f"augmentation `{config['augment']}`, device `{config['device_name']}` "
        f"({_plural(threads, 'CPU thread')} per run, torch {config['environment']['torch']}).",
        "- Arithmetic: "
        + "; ".join(
            f"{_names(sorted(set(g['run']), key=list(run_names()).index))}: {k}"
            for k, g in runs.groupby("kernels", sort=True)
        )
        + " (`kdlib/cpu_kernels.py`: runs of one class compute the same floats).",
        "",
    ]
    md += _figure_md(
        figures_dir,
        report_dir,
        ["data_augmentation.png", "loss_none.png", "loss_feature.png", "loss_response.png", "loss_both.png"],
    )
    md += ["## Section 4. Results", "", _md_table(results_table(runs, teacher)), ""]
    if not paired.empty:
        md += [
            "Paired by seed, each method against no KD (95% confidence interval of the mean "
            "difference, Student's t; `detectable` is its half-width, the smallest observed difference "
            "these seeds can tell from zero, which a true difference of that size reaches only about half "
            "the time; `p` the paired t-test, `p (Holm)` the same corrected "
            "for all the rows tested together, `p (Wilcoxon)` the signed-rank test):",
            "",
            _md_table(for_reader(paired.drop(columns=["vs"]))),
            "",
        ]
        md += verdicts(paired) + [""]
    md += unfinished_md(runs_dir)
    md += cached_vs_online(runs)
    md += unlabeled_md(runs)
    sweep = sweep_md(tables / "sweep.csv")
    md += sweep + (_figure_md(figures_dir, report_dir, ["sweep.png"]) if sweep else [])
    gap = gap_closed(runs, teacher)
    if not gap.empty:
        md += [
            "Share of the no-KD student's gap to the teacher that each method closes (in percent: 100 is the "
            "teacher's score, 0 no KD's, below 0 worse than no KD), with its 95% interval from the paired "
            "differences: an interval that covers 0 says neither closing nor widening:",
            "",
            _md_table(gap.assign(**{c: gap[c].map("{:.1f}".format) for c in gap.columns if "(%)" in c})),
            "",
        ]
    md += convergence_md(runs)
    md += per_class_md(runs_dir, dataset, committed_dir=report_dir / "runs")
    md += _figure_md(figures_dir, report_dir, ["per_class_iou.png"])
    md += ["## Section 5. Failure analysis", ""]
    similarity = tables / "feature_position_similarity.csv"
    if similarity.is_file():
        md += [
            "**What feature KD aligned** (chapter 3, first seed, 8 validation images): the mean cosine between "
            "two positions of the same image, per level. Near 1, every position points the same way and the map "
            "says nothing about where anything is; a projected teacher near 1 where the raw teacher is well below "
            "has collapsed, and a student aligned to it loses its own spatial structure.",
            "",
            _md_table(pd.read_csv(similarity), floatfmt=3),
            "",
            *[f"- {line}" for line in collapse_findings(pd.read_csv(similarity).set_index("level"), runs)],
            "",
        ]
        md += _figure_md(figures_dir, report_dir, ["feature_position_maps.png"])
    student = display_name([m for m in methods.names("report") if m in set(runs["run"])][-1])
    for name, caption in (
        ("iou_by_size.csv", "Mean object IoU by object size (share of the image)"),
        (
            "iou_by_light.csv",
            "Mean object IoU by illumination (the lighting gain on the object's pixels, averaged: 1 leaves its "
            "colours as drawn, 0.5 halves them)",
        ),
        ("iou_by_occlusion.csv", "Mean object IoU by occluded fraction"),
        ("confused_pairs.csv", f"Most confused class pairs ({student}, the first seed's run)"),
        ("teacher_dependency.csv", "Teacher dependency: P(student fails) where the teacher fails vs succeeds"),
    ):
        path = tables / name
        if path.is_file():
            md += [f"**{caption}.**", "", _md_table(for_reader(pd.read_csv(path))), ""]
    md += _figure_md(
        figures_dir,
        report_dir,
        ["failure_buckets.png", *(f"qualitative_{m}.png" for m in methods.names("report"))],
    )
    md += section6
    md += open_questions_md(runs, paired, config, missing)
    text = "\n".join(md) + "\n"
    atomic_write_text(text, report_dir / "report.md")
    atomic_write_text(to_html(text, report_dir), report_dir / "report.html")
    return report_dir / "report.md"


def methods_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Section 2: each method of the results table, what its student matches (its loss terms),
    its α / β / T as its runs recorded them, and where those come from (its declaration)."""
    rows = []
    for name in [n for n in run_names() if n in set(runs["run"])]:
        method = methods.method_of(name)
        folder = runs[runs["run"] == name]["folder"].iloc[0]
        terms = ", ".join(method.terms) or "cross entropy only"
        rows.append(
            {"method": display_name(name), "loss terms": terms, "α / β / T": _weights(folder), "source": method.source}
        )
    return pd.DataFrame(rows)


def term_formulas(runs: pd.DataFrame) -> list[str]:
    """Section 2's formulas: every loss term of the table's methods once, as the docstring of the
    function in kdlib/losses.py that computes it states it. Each objective is
    α·L_ce + β·(the sum of its terms)."""
    from . import losses

    terms = {}
    for name in [n for n in run_names() if n in set(runs["run"])]:
        terms |= methods.method_of(name).terms
    if not terms:
        return []
    lines = [
        "Every objective is α·L_ce + β·(the sum of its terms); each term, as its function in `kdlib/losses.py` states it:",
        "",
    ]
    for term, fn in terms.items():
        # a term declared outside kdlib may name no loss of kdlib.losses: its own docstring then
        loss = getattr(fn, "loss", None)
        where, text = (
            (f"losses.{loss}", losses.formula(getattr(losses, loss))) if loss else (fn.__qualname__, losses.formula(fn))
        )
        if text:
            lines += [f"`{term}` (`{where}`):", "", "```", text, "```", ""]
        else:
            lines += [
                f"`{term}` (`{where}`): no formula in its docstring (`kdlib.methods.computes` names a loss's).",
                "",
            ]
    return lines


def _trace(run: Path, dst: Path) -> None:
    """A run's record under ``report/runs/``: its metrics.json, history.csv and config.json."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("metrics.json", "history.csv", "config.json"):
        shutil.copyfile(run / name, dst / name)


def _trace_conditions(runs_dir: Path, committed: Path) -> None:
    """The runs of `make draws` and `make budget` under ``report/runs/draws/``, ``budget/``: each
    condition takes this machine's finished runs as a whole when
    :func:`kdlib.conditions.condition_runs` reads them rather than the committed ones (a part cut
    off half way replaces nothing), and each draw its teacher's score."""
    from . import conditions as c

    folders = [c.draw_runs_dir(runs_dir, d) for d in c.DRAWS] + [c.budget_runs_dir(runs_dir, f) for f in c.BUDGETS]
    for here in folders:
        there = committed / here.relative_to(runs_dir)
        chosen = c.condition_runs(here, there)  # the decision the report reads the condition by
        if not chosen.empty and (chosen["source"] == "this machine").all():
            for name in set(chosen["run"]) | set(collect_runs(there, c.METHODS)["run"]):
                shutil.rmtree(there / name, ignore_errors=True)
            for _, run in chosen.iterrows():
                _trace(Path(run["folder"]), there / run["run"] / Path(run["folder"]).name)
        if (here / "teacher_eval.json").is_file():
            there.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(here / "teacher_eval.json", there / "teacher_eval.json")


def _figure_md(figures_dir: Path, report_dir: Path, names) -> list[str]:
    out = []
    for name in names:
        path = figures_dir / name
        if path.is_file():
            rel = Path("..") / figures_dir.name / name if figures_dir.parent == report_dir.parent else path
            out += [f"![{FIGURES[name]}]({rel.as_posix()})", "", f"*{FIGURES[name]}*", ""]
    return out


def to_html(markdown_text: str, base: Path) -> str:
    """Self-contained HTML: the markdown rendered by mistune, images inlined as data URIs."""
    import mistune

    body = mistune.html(markdown_text)

    def inline(match):
        src = match.group(1)
        path = (base / src).resolve()
        if not path.is_file():  # an HTML report with a broken image is not a report
            raise FileNotFoundError(f"report image {src} not found (from {base}); run `make demo` or `make report`")
        data = base64.b64encode(path.read_bytes()).decode()
        return f'src="data:image/png;base64,{data}"'

    body = re.sub(r'src="([^"]+\.png)"', inline, body)
    style = (
        "body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;"
        "line-height:1.45}table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
        "padding:3px 8px;font-size:90%}img{max-width:100%}"
    )
    return f"<!doctype html><html><head><meta charset='utf-8'><title>KD segmentation report</title><style>{style}</style></head><body>{body}</body></html>\n"


def _diff_text(mean: float, detectable: float) -> str:
    """A paired difference and its detectable one, "+0.0701 ± 0.0213" (a mean that rounds to 0
    shown as +0.0000 whatever its sign; no ± without an interval)."""
    shown = f"{mean:+.4f}".replace("-0.0000", "+0.0000")
    return shown if pd.isna(detectable) else f"{shown} ± {detectable:.4f}"


def _diff_cell(r) -> str:
    """A paired difference as a table cell: mean ± detectable, seeds, verdict."""
    if pd.isna(r.get("mean_diff")):
        return str(r.get("verdict", "—"))
    if pd.isna(r.get("detectable")):  # one paired seed: a difference, no interval
        return f"{_diff_text(r['mean_diff'], math.nan)} ({_plural(int(r['seeds']), 'seed')}): {r['verdict']}"
    crossed = "; paired across CPU kernels" if not r.get("same_kernels", True) else ""
    return f"{_diff_text(r['mean_diff'], r['detectable'])} ({int(r['seeds'])} seeds{crossed}): {r['verdict']}"


def _names(runs) -> str:
    names = [display_name(n) for n in runs]
    return ", ".join(names[:-1]) + f" and {names[-1]}" if len(names) > 1 else (names[0] if names else "no method")


def conditions_sections(runs_dir, figures_dir, report_dir) -> tuple[list[str], list[str], list[str], list[str]]:
    """Section 6: the verdicts of :mod:`kdlib.conditions` per draw, per budget and at matched
    compute, each with its detectable difference, and which hold; a sentence says why a part is
    absent. Writes the tables under ``report/tables/``. Returns the section's lines, the
    headline's table of every verdict under every condition (:func:`overview_md`), the
    headline's sentences and the open questions of the parts not trained yet."""
    from . import conditions as c

    runs_dir, report_dir = Path(runs_dir), Path(report_dir)
    committed, tables = report_dir / "runs", report_dir / "tables"
    tables.mkdir(parents=True, exist_ok=True)
    lines = [
        "## Section 6. Do the verdicts hold? Other draws, longer budgets, the same compute",
        "",
        "Each KD method against no KD on the same seeds, by the rules docs/regime.md fixed before these "
        "runs: a verdict is *beats* or *worse than no KD* when the 95% interval of the paired difference "
        "is on one side of 0 and its Holm-corrected p (over the five KD methods of that condition) is below "
        "0.05. Each cell: mean difference ± the half-width of its 95% interval, the smallest difference the "
        "seeds can detect (a true difference of that size is resolved about half the time before Holm's "
        "correction, less often after it).",
        "",
    ]
    said, missing, found = [], [], {}
    lines += _draws_md(c, runs_dir, committed, tables, said, missing, found)
    budgets = c.budget_runs(runs_dir, committed)
    lines += _budgets_md(c, budgets, figures_dir, report_dir, tables, said, missing, found)
    if not all(budgets[f].empty for f in c.BUDGETS):
        lines += _compute_md(c, budgets, tables, said, found)
    return lines, overview_md(c, found, tables), said, missing


def overview_md(c, found: dict, tables: Path) -> list[str]:
    """The headline's table: every KD method's verdict under every condition
    (:func:`kdlib.conditions.verdicts_everywhere`), each column with its seeds; whether each
    verdict holds on the other draws and at the longer budgets, read strictly and by
    docs/regime.md's rules (:func:`kdlib.conditions.holds`); then, as its own question, no KD
    given the same compute; and, computed from them, which hold, which beat training longer and
    which conditions no method has been measured in."""
    if not found:
        return []
    empty = pd.DataFrame()
    long = c.verdicts_everywhere(*(found.get(k, empty) for k in ("draws", "budgets", "trend", "compute")))
    held = c.holds(long).set_index("run")
    long.to_csv(tables / "verdicts_everywhere.csv", index=False)
    conditions = list(dict.fromkeys(long["condition"]))

    def header(condition: str) -> str:
        n = sorted({int(k) for k in long[long["condition"] == condition]["seeds"] if k})
        label = {c.DEMO: "the demo (draw 0, 1×)", c.SAME_COMPUTE: "against no KD given the same compute"}.get(
            condition, condition
        )
        return label + (f" ({n[0]} seeds)" if len(n) == 1 else f" ({n[0]}-{n[-1]} seeds)" if n else "")

    short = {c.BEATS: "beats", c.WORSE: "worse", c.UNRESOLVED: "not resolved"}

    def cell(r) -> str:
        if r["verdict"] not in c.VERDICTS:
            return r["verdict"]
        text = f"{_diff_text(r['mean_diff'], r['detectable'])} {short[r['verdict']]}"
        text += "" if r["same_kernels"] else " (paired across CPU kernels)"
        if not isinstance(r["trend"], str):
            return text
        crossed = "" if r.get("trend_same_kernels", True) else " (its 1× and longer runs on different CPU kernels)"
        return text + f"; {TREND_SAID[r['trend']]}{crossed}"

    wide = long.assign(cell=[cell(r) for _, r in long.iterrows()]).pivot(
        index="run", columns="condition", values="cell"
    )
    held_over = [k for k in conditions if k != c.SAME_COMPUTE]
    wide = wide.reindex(index=list(held.index), columns=conditions)
    wide["same verdict on every draw and budget?"] = held["strict"]
    wide["holds by the rules?"] = held["by_rules"]
    order = [*held_over, "same verdict on every draw and budget?", "holds by the rules?"]
    wide = wide[order + [k for k in conditions if k == c.SAME_COMPUTE]]
    shown = wide.rename(columns={k: header(k) for k in conditions}).reset_index()
    shown = shown.assign(run=[display_name(n) for n in shown["run"]]).rename(columns={"run": "method"})

    said = []
    for column, reading in (
        ("by_rules", "by the rules"),
        ("strict", "read strictly (the same verdict on every draw and budget)"),
    ):
        yes, so_far = held.index[held[column] == "yes"], held.index[held[column] == "yes so far"]
        no = held.loc[held[column].str.startswith("no"), column]
        said.append(
            f"On every draw and budget, hold {reading}: {_names(yes)}"
            + (f"; so far, with a condition still to measure: {_names(so_far)}" if len(so_far) else "")
            + (
                "; not: " + "; ".join(f"{display_name(n)} ({v.removeprefix('no: ')})" for n, v in no.items())
                if len(no)
                else ""
            )
            + "."
        )
    compute = long[(long["condition"] == c.SAME_COMPUTE) & long["verdict"].isin(c.VERDICTS)]
    if len(compute):
        by = {v: list(compute.loc[compute["verdict"] == v, "run"]) for v in c.VERDICTS}
        said.append(
            f"Given the same compute, distillation beats training no KD longer for {_names(by[c.BEATS])}"
            + (f"; no resolved difference for {_names(by[c.UNRESOLVED])}" if by[c.UNRESOLVED] else "")
            + (f"; no KD trained longer does better than {_names(by[c.WORSE])}" if by[c.WORSE] else "")
            + "."
        )
        unmatched = long[(long["condition"] == c.SAME_COMPUTE) & ~long["verdict"].isin([*c.VERDICTS, c.NOT_MEASURED])]
        if len(unmatched):
            said[-1] += (
                " Not compared: "
                + "; ".join(f"{display_name(r['run'])} ({r['verdict']})" for _, r in unmatched.iterrows())
                + "."
            )
    for condition in conditions:
        of = long[long["condition"] == condition]
        if not of["verdict"].isin(c.VERDICTS).any():
            why = sorted(set(of["verdict"]) - {c.NOT_MEASURED})
            said.append(f"No method measured yet: {header(condition)}" + (f" ({'; '.join(why)})." if why else "."))
    return [
        "**Does each verdict hold?** Each KD method against no KD, paired by seed, in the demo's setting "
        "(draw 0 of the benchmark, 1× budget) and under Section 6's conditions: two other draws (other "
        "training and validation images) and 2× and 4× the training steps; and, as a question of its own, "
        "against no KD trained at least as long in CPU time. Each cell: the mean difference in mIoU, ± the "
        "half-width of its 95% interval (a true difference of that size is resolved about half the time "
        "before the Holm correction, less often after it), and the verdict by docs/regime.md's rule: the "
        "interval on one side of 0 and Holm's p below 0.05 over the five methods of a condition (so the demo's "
        "column can differ from the results table's, corrected over all its rows).",
        "",
        "Two readings of whether a verdict holds on the other draws and budgets. Strictly: the same verdict in "
        "every one of those columns. By the rules docs/regime.md fixed for each condition (read together after "
        "the runs, as it says): another verdict on another draw departs; at a longer budget a gain over no KD "
        "that grows or shrinks departs, as does a verdict on the other side of no KD or one resolved where the "
        'demo\'s was not, while one that only loses its resolution, with fewer seeds, does not. "so far" while a '
        "condition is not measured. The last column asks whether distillation beats training no KD longer: a "
        "method that does not beat no KD at equal steps and loses to it given more compute has not changed "
        "its verdict, so that column is read on its own.",
        "",
        _md_table(shown),
        "",
        " ".join(said),
        "",
    ]


def _draws_md(c, runs_dir, committed, tables, said, missing, found) -> list[str]:
    """Section 6's draws: the verdict of each method on each draw, and whether it holds."""
    lines = []
    draws = c.draw_runs(runs_dir, committed)
    if all(draws[d].empty for d in c.DRAWS):
        lines += ["*Other draws of the benchmark*: not trained on this machine or committed yet (`make draws`).", ""]
        missing.append("Whether the verdicts hold on other draws of the training images (`make draws`).")
    else:
        table = found["draws"] = c.per_condition(draws, "draw")
        table.round(6).to_csv(tables / "conditions_draws.csv", index=False)
        scores = []  # the shipped teacher on each draw's val split: draw 0's is the report's own
        for d in (0, *c.DRAWS):
            where = [committed.parent] if d == 0 else [c.draw_runs_dir(runs_dir, d), c.draw_runs_dir(committed, d)]
            path = next((w / "teacher_eval.json" for w in where if (w / "teacher_eval.json").is_file()), None)
            if path is not None:
                scores.append(f"draw {d} {json.loads(path.read_text())['miou']:.4f}")
        wide = c.across_draws(table)
        rows = []
        for name, r in wide.iterrows():
            row = {"method": display_name(name)}
            for d in [0, *c.DRAWS]:
                hit = table[(table["draw"] == d) & (table["run"] == name)]
                row[f"draw {d}"] = _diff_cell(hit.iloc[0]) if not hit.empty else "not trained"
            rows.append(row | {"same verdict on every draw": r["holds on every draw"]})
        holds = [n for n, r in wide.iterrows() if r["holds on every draw"] == "yes"]
        differ = [n for n, r in wide.iterrows() if r["holds on every draw"] == "no"]
        incomplete = [n for n, r in wide.iterrows() if r["holds on every draw"] == "not every draw trained"]
        trained = sorted(set(table.loc[~table["verdict"].isin([c.NO_BASELINE, c.ONE_SEED]), "draw"]))
        teacher = f"whose val mIoU is {'; '.join(scores)}" if scores else "not scored on any draw yet"
        same = "; ".join(f"{display_name(n)} ({wide.loc[n, 'draw 0']})" for n in holds) or "no method"
        lines += [
            "**Other draws of the benchmark** (generator seeds "
            + ", ".join(str(d) for d in c.DRAWS)
            + f"; the demo's is 0): other training and validation images, the same shipped teacher, {teacher}.",
            "",
            _md_table(pd.DataFrame(rows)),
            "",
            f"The same verdict on every draw: {same}. A verdict that changes from draw to draw: {_names(differ)}.",
            "",
        ]
        sizes = c.draw_heterogeneity({d: t for d, t in draws.items() if not t.empty})
        sizes.round(6).to_csv(tables / "draw_heterogeneity.csv", index=False)
        moved = sizes[sizes["p_holm"] < 0.05]

        def where(r) -> str:
            return (
                f"{display_name(r['run'])} (p_holm {r['p_holm']:.3f}: highest on draw {r['highest']}, "
                f"lowest on draw {r['lowest']})"
            )

        if len(sizes):
            still = sizes[sizes["p_holm"] >= 0.05]
            lines += [
                "A verdict per draw does not say whether the *size* of a difference changes from draw to draw. "
                "Analysis of variance of the per-seed differences, the draws as treatments and the seeds as "
                f"blocks (a seed starts the student the same way on every draw; the {_seed_count(sizes)} seeds every "
                "draw has), Holm "
                "over the five methods, a reading added after these runs were seen, not one of docs/regime.md's "
                "rules: "
                f"the size changes for {'; '.join(where(r) for _, r in moved.iterrows()) or 'no method'}"
                + (
                    "; no change these seeds resolve for "
                    + "; ".join(f"{display_name(r['run'])} (p_holm {r['p_holm']:.3f})" for _, r in still.iterrows())
                    if len(still)
                    else ""
                )
                + "."
                + (
                    " The draws' runs computed with more than one class of CPU kernels (their `config.json`), so a "
                    "difference between draws also holds the kernels' drift: read it as that until they share one."
                    if not sizes["same_kernels"].all()
                    else ""
                ),
                "",
            ]
        said.append(
            f"- On {len(trained)} draws of the training and validation images (Section 6) the verdict is the same "
            f"on every draw for {_names(holds)}, and changes for {_names(differ)}"
            + (f"; {_names(incomplete)} not yet trained on every draw" if incomplete else "")
            + (
                f"; the size of the difference changes from draw to draw for {_names(moved['run'])} "
                + (
                    "(Section 6, read after the runs)."
                    if sizes["same_kernels"].all()
                    else "(Section 6, read after the runs; the draws ran on different CPU kernels, whose drift "
                    "this also holds)."
                )
                if len(moved)
                else "."
            )
        )
    return lines


def _budgets_md(c, budgets, figures_dir, report_dir, tables, said, missing, found) -> list[str]:
    """Section 6's budgets: each method's paired difference at each budget and its trend."""
    lines = []
    if all(budgets[f].empty for f in c.BUDGETS):
        lines += ["*Longer budgets*: not trained on this machine or committed yet (`make budget`).", ""]
        missing.append(
            "Whether each method's gain grows, holds or shrinks when no KD trains longer, and whether distillation "
            "beats training no KD for the same compute (`make budget`)."
        )
    else:
        table = found["budgets"] = c.per_condition(budgets, "budget")
        table.round(6).to_csv(tables / "conditions_budgets.csv", index=False)
        trend = found["trend"] = c.budget_trend(budgets)
        trend.round(6).to_csv(tables / "budget_trend.csv", index=False)
        none = {f: t[t["run"] == "none"] for f, t in budgets.items()}
        rows = []
        for name in c.METHODS[1:]:
            row = {"method": display_name(name)}
            for f in budgets:
                hit = _at_budget(table, f, name)
                row[f"{f}×"] = _diff_cell(hit) if hit is not None else "not trained"
            for _, t in trend[trend["run"] == name].iterrows():
                crossed = "" if t.get("same_kernels", True) else " (1× and longer runs on different CPU kernels)"
                row[f"gain {t['budget']} vs 1×"] = (
                    f"{_diff_text(t['gain_change'], t['detectable'])}: {TREND_SAID.get(t['trend'], t['trend'])}"
                    if pd.notna(t["gain_change"])
                    else t["trend"]
                ) + crossed
            rows.append(row)
        lines += [
            "**Longer budgets** (the demo's draw; the cosine schedule stretched, everything else equal). No KD "
            "reaches "
            + "; ".join(
                f"{none[f]['miou'].mean():.4f} at {f}× (seeds {', '.join(map(str, sorted(none[f]['seed'])))})"
                for f in budgets
                if len(none[f])
            )
            + ". Each method's paired difference to no KD at each budget, and how its gain changes from 1× "
            "(per seed, on the seeds both budgets have):",
            "",
            _md_table(pd.DataFrame(rows)),
            "",
        ]
        gaps = {f: c.best_over_last(t) for f, t in budgets.items() if len(none[f])}
        lines += (
            [
                "Each mIoU here is a run's best epoch on the validation split, chosen on that split, and a longer "
                "budget chooses from more epochs: no KD's best epoch lies above its last by "
                + "; ".join(f"{g:+.4f} at {f}× ({_plural(len(none[f]), 'seed')})" for f, g in gaps.items())
                + " (mean over its seeds). The curves' heights carry that choice. Both runs of a paired difference "
                "are chosen the same way, though the choice need not lift them by the same amount.",
                "",
            ]
            if gaps
            else []
        )
        lines += _figure_md(Path(figures_dir), report_dir, ["budget_curves.png"])
        computed = trend[trend["gain_change"].notna()] if not trend.empty else trend
        # every longer budget in the findings: a verdict that holds at one may not at the other
        for factor in sorted({int(b.removeprefix("x")) for b in computed["budget"]}):
            at = computed[computed["budget"] == f"x{factor}"]
            seeds = ", ".join(map(str, sorted(budgets[factor]["seed"].unique())))
            said.append(
                f"- At {factor}× the demo's steps (Section 6, seeds {seeds}): "
                + "; ".join(_budget_phrase(table, t, factor) for _, t in at.iterrows())
                + "."
            )
    return lines


# docs/regime.md's trend words as a reader takes them: "holds" is an interval that covers 0, not a
# gain shown to stay put
TREND_SAID = {"grows": "gain grows", "shrinks": "gain shrinks", "holds": "no resolved change in gain"}


def _at_budget(table: pd.DataFrame, factor: int, name: str):
    """The row of :func:`kdlib.conditions.per_condition`'s budget table for one method at one
    budget factor, or None where it was not trained."""
    hit = table[(table["budget"] == factor) & (table["run"] == name)]
    return hit.iloc[0] if not hit.empty else None


def _budget_phrase(table: pd.DataFrame, trend, factor: int) -> str:
    """One method's verdict at 1x and at ``factor``x, and how its difference to no KD moved:
    grew, shrank, or a change the seeds do not resolve (with its detectable change), which is
    no evidence that the difference stayed where it was."""

    def verdict_at(f):
        hit = _at_budget(table, f, trend["run"])
        return hit["verdict"] if hit is not None else "not trained"

    at1, atf = verdict_at(1), verdict_at(factor)
    if trend["trend"] == "holds":  # an interval that holds 0: no change these seeds can tell, not "unchanged"
        moved = f"its change in difference to no KD not resolved, detectable ±{trend['detectable']:.4f}"
    else:
        moved = f"its difference to no KD {'grew' if trend['trend'] == 'grows' else 'shrank'}"
    where = f"{at1} at 1× and at {factor}×" if at1 == atf else f"{at1} at 1×, {atf} at {factor}×"
    crossed = "" if trend.get("same_kernels", True) else "; its 1× and longer runs on different CPU kernels"
    return f"{display_name(trend['run'])} {where} ({moved}{crossed})"


def _compute_md(c, budgets, tables, said, found) -> list[str]:
    """Section 6's matched compute: each KD method beside no KD trained at least as long."""
    lines = []
    compute = found["compute"] = c.matched_compute(budgets)
    if not compute.empty:
        compute.round(6).to_csv(tables / "matched_compute.csv", index=False)
        shown = pd.DataFrame(
            {
                "method (1×)": [display_name(n) for n in compute["run"]],
                "training CPU s": [f"{v:.0f}" if pd.notna(v) else "not recorded" for v in compute["compute_s"]],
                "images / CPU s": [f"{v:.0f}" if pd.notna(v) else "—" for v in compute["images_per_cpu_s"]],
                "no KD given": [f"{int(f)}× ({s:.0f} CPU s)" if pd.notna(f) else "—"
                                for f, s in zip(compute["none_budget"], compute["none_compute_s"])],
                "no KD's CPU ÷ the method's": [f"{v:.2f}" if pd.notna(v) else "—" for v in compute["compute_ratio"]],
                "seeds where no KD's run had at least as much": [
                    f"{int(k)} of {int(n)}" if n else "—" for k, n in zip(compute["seeds_reached"], compute["seeds_timed"])],
                "difference": [_diff_cell(r) for _, r in compute.iterrows()],
            }
        )  # fmt: skip
        spread = c.compute_spread(budgets)
        spread.round(6).to_csv(tables / "compute_spread.csv", index=False)
        wins = [r["run"] for _, r in compute.iterrows() if r.get("verdict") == "beats no KD"]
        compared = compute[compute["p"].notna()]
        uncompared = compute[compute["p"].isna()]
        lines += [
            "**The same compute.** Each KD method at the demo's budget beside no KD trained at least as "
            "long (the CPU time of the training steps, one thread per run, summed over epochs; the smallest "
            "budget of no KD whose median reaches the method's median). *Images / CPU s* is the method's "
            "training images per CPU second of its steps (higher is cheaper).",
            "",
            _md_table(shown),
            "",
            *_spread_md(spread, compute),
            (
                f"Of the {len(compared)} methods compared, distillation beats training no KD for the same compute "
                f"for {_names(wins)}"
                + (f"; not compared: {_names(uncompared['run'])} (see the table)." if len(uncompared) else ".")
                if len(compared)
                else "No method could be compared here: the table says why for each."
            ),
            "",
        ]
        if len(compared):
            said.append(
                f"- With no KD given at least the same training compute, distillation beats it for {_names(wins)} "
                f"(of the {len(compared)} methods compared: {_names(compared['run'])})."
            )
    return lines


def _seed_count(sizes: pd.DataFrame) -> str:
    """How many seeds :func:`kdlib.conditions.draw_heterogeneity` blocked on ("6", or "3-6" when the
    methods differ)."""
    counts = sorted(set(int(n) for n in sizes["seeds"]))
    return str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"


def _spread_md(spread: pd.DataFrame, compute: pd.DataFrame) -> list[str]:
    """How far the CPU clock itself moves between conditions (:func:`kdlib.conditions.compute_spread`),
    and which compute matches are closer than that."""
    if spread.empty:
        return []
    widest = spread.loc[spread["spread"].idxmax()]
    if not widest["spread"] > 0:
        return ["One epoch is the same work at every budget, and its median CPU time is the same at each.", ""]
    close = compute[(compute["compute_ratio"] - 1 < widest["spread"]) & compute["compute_ratio"].notna()]
    return [
        "One epoch is the same work at every budget, yet the median CPU time of one method's epoch differs "
        f"between its budgets by up to {widest['spread']:.0%} on the 1× runs' host ({display_name(widest['run'])}): "
        "CPU time, too, moves between conditions. "
        + (
            f"A match closer than that is within the clock's spread: {_names(close['run'])}."
            if len(close)
            else "Every match here is wider than that."
        ),
        "",
    ]


def failure_findings(tables: dict, students, classes: pd.DataFrame | None = None) -> list[str]:
    """What the failure analysis shows, in sentences computed from its tables
    (:func:`kdlib.figures.failure_analysis`): per bucket table, the students' (mean over
    ``students``) hardest and easiest bucket against the teacher's; the most confused classes
    and, given the class table, how many of the confused pairs share a colour or a shape; the
    no-KD student's teacher-dependency ratio, its bootstrap interval over objects
    (:func:`kdlib.failures.dependency_ratio_interval`) and, for each KD student, whether its
    ratio lies inside, above or below that interval."""
    lines, who = [], None
    for by, label in (("size", "size"), ("light", "illumination"), ("occlusion", "occlusion")):
        table = tables.get(by)
        if table is None or table.empty:
            continue
        shown = [m for m in students if m in table.columns]
        mean = table[shown].mean(axis=1)
        hard, easy = mean.idxmin(), mean.idxmax()
        who = "the students" if who else f"the students ({_first_seed_students(len(shown))})"  # said once
        line = (
            f"By {label}, {who} score lowest on {hard} objects "
            f"({mean[hard]:.2f} object IoU) and highest on {easy} ({mean[easy]:.2f}); the teacher scores "
            f"{table.loc[hard, 'teacher']:.2f} and {table.loc[easy, 'teacher']:.2f} there."
        )
        if by != "size" and "median_area" in table:
            area_hard, area_easy = table.loc[hard, "median_area"], table.loc[easy, "median_area"]
            line += (
                f" The {easy} objects cover a median {area_easy:.1%} of the image, the {hard} ones {area_hard:.1%}"
                + (
                    f": the {hard} objects are also the smaller ones, so this table does not tell {label} apart "
                    "from size."
                    if area_hard < area_easy
                    else f": their median size does not explain the {hard} objects' lower score."
                )
            )
        lines.append(line)
    pairs = tables.get("confused_pairs")
    if pairs is not None and len(pairs):
        top = "; ".join(
            f"{r['true class']} as {r['predicted as']} ({r['rate']:.0%} of its pixels)"
            for _, r in pairs.head(3).iterrows()
        )
        lines.append(f"The most confused classes of {display_name(students[-1])}'s first-seed student: {top}.")
        if classes is not None and {"colour", "shape"} <= set(classes.columns):
            attrs = classes.set_index("class")
            same = {
                a: sum(attrs.loc[t, a] == attrs.loc[p, a] for t, p in zip(pairs["true class"], pairs["predicted as"]))
                for a in ("colour", "shape")
            }
            line = (
                f"Of the {len(pairs)} most confused pairs, {same['colour']} share a colour and {same['shape']} a shape"
            )
            if same["colour"] == len(pairs) > same["shape"]:
                line += ": the confusions stay within a colour, so the student tells colours apart better than shapes"
            elif same["colour"] > same["shape"]:
                line += ": more of them share a colour than a shape"
            lines.append(line + ".")
    dependency = tables.get("teacher_dependency")
    if dependency is not None and len(dependency):
        lines += _dependency_findings(dependency.set_index("method"))
    return lines


def collapse_findings(similarity: pd.DataFrame, runs: pd.DataFrame | None = None) -> list[str]:
    """What chapter 3's position-similarity table (:func:`kdlib.figures.feature_similarity`,
    indexed by level) shows: what the trained projections do to the teacher's position cosine
    at each level, the levels where each map is collapsed (mean position cosine above
    :data:`kdlib.failures.COLLAPSED_SIMILARITY`), what moving the adapters to the student's side
    (``feature_student``) does to the report form's collapsed levels (docs/regime.md's rule)
    and, given ``runs``, both forms' paired differences to no KD and to each other."""
    from .failures import COLLAPSED_SIMILARITY

    def levels_of(column: str) -> list[str]:
        return [str(level) for level, v in similarity[column].items() if v > COLLAPSED_SIMILARITY]

    def collapsed(column: str) -> str:
        return _names(levels_of(column)) if levels_of(column) else "no level"

    change = similarity["teacher, projected"] - similarity["teacher (raw)"]
    lines = [
        "The trained projections change the teacher's mean position cosine by "
        + ", ".join(f"{d:+.3f} at {level}" for level, d in change.items())
        + f" (the projected teacher's: {similarity['teacher, projected'].min():.3f} to "
        f"{similarity['teacher, projected'].max():.3f}).",
        f"Collapsed (mean position cosine above {COLLAPSED_SIMILARITY:g}): the raw teacher at "
        f"{collapsed('teacher (raw)')}; the projected teacher at {collapsed('teacher, projected')}; the "
        f"feature-KD student at {collapsed('feature-KD student')}"
        + (f"; the no-KD student at {collapsed('no-KD student')}" if "no-KD student" in similarity else "")
        + ". This is one measurement (the first seed's checkpoints, a few validation images), without an interval.",
    ]
    if "no-KD student" in similarity:
        lines.append(
            f"The feature-KD student's positions average {similarity['feature-KD student'].mean():.3f}, the no-KD "
            f"student's {similarity['no-KD student'].mean():.3f}."
        )
    own, adapted = "student-side adapters: student", "student-side adapters: student, adapted"
    if own in similarity:
        lines.append(
            "With the 1×1 adapters on the student's side the loss's target is the raw teacher; that student's own "
            f"maps are collapsed at {collapsed(own)} (positions average {similarity[own].mean():.3f}), its maps "
            f"through the adapters at {collapsed(adapted)}: "
            + _placement_outcome(levels_of("feature-KD student"), levels_of(own))
            + "."
        )
    else:
        lines.append(
            "The student-side form (Feature, adapters on the student) has no checkpoint here to measure: "
            f"{target_of('feature_student')} trains it, then this chapter measures it."
        )
    if runs is not None and "feature_student" in set(runs["run"]):
        lines.append(_placement_verdicts(runs))
    return lines


def _placement_outcome(report_form: list[str], moved: list[str]) -> str:
    """What moving the adapters did to the report form's collapsed levels, compared as sets."""
    added = [level for level in moved if level not in report_form]
    kept = [level for level in report_form if level in moved]
    if added:
        return f"moving the adapters adds collapse at {_names(added)}"
    if not report_form:
        return "the report form's student was collapsed at no level, so there was no collapse to remove"
    if not kept:
        return "moving the adapters removes the collapse"
    if len(kept) == len(report_form):
        return "moving the adapters leaves the collapse as it was"
    return f"moving the adapters removes the collapse at {len(report_form) - len(kept)} of {len(report_form)} levels"


def _placement_verdicts(runs: pd.DataFrame) -> str:
    """Both feature-KD forms against no KD (Holm over the whole table, as chapter 7's), the
    student-side form against the report's, and what that says about the moved adapters."""
    paired = paired_comparison(runs).set_index("run")  # Holm over every row, as chapter 7's table

    def said(m: str) -> str:
        r = paired.loc[m]
        crossed = "; paired across CPU kernels" if "same_kernels" in r and not r["same_kernels"] else ""
        return f"{display_name(m)} {_ci(r)} ({r['verdict']}{crossed})"

    shown = [m for m in ("feature", "feature_student") if m in paired.index]
    sentence = "Against no KD, paired by seed (Holm over the results table): " + "; ".join(map(said, shown)) + "."
    against_report = ""  # what the move did against the report's own form, when these seeds resolve it
    if "feature" in set(runs["run"]):
        r = paired_comparison(runs[runs["run"].isin(["feature", "feature_student"])], baseline="feature").iloc[0]
        sentence += f" The student-side form against the report's (one comparison): {_ci(r)} ({r['verdict']})."
        if r["verdict"] == LARGER:
            better = "better" if r["mean_diff"] > 0 else "worse"
            against_report = f"; against the report's own form it does {better} (the one comparison above)"
    if "feature_student" not in paired.index:
        return sentence
    moved = paired.loc["feature_student"]
    report_form_beats = "feature" in paired.index and (
        paired.loc["feature", "verdict"] == LARGER and paired.loc["feature", "mean_diff"] > 0
    )
    if moved["verdict"] == LARGER:
        result = "beats no KD" if moved["mean_diff"] > 0 else "does worse than no KD"
    elif moved["verdict"] == NOT_AFTER_HOLM:
        result = "differs from no KD by more than seed noise alone, but not once the table's rows are corrected for"
    elif math.isnan(moved["detectable"]):
        result = "has too few paired seeds for a verdict against no KD"
    else:
        still = "" if report_form_beats else "still "
        result = (
            f"{still}does not differ from no KD by a difference these seeds resolve "
            f"(detectable ±{moved['detectable']:.4f}: the half-width of the difference's 95% interval)"
        )
    return sentence + f" So with the adapters moved, feature KD {result}{against_report}."


def placement_md(tables: Path, runs: pd.DataFrame) -> str:
    """Chapter 7's closing item on feature KD's adapters, from chapter 3's table
    (``feature_position_similarity.csv`` under ``tables``) and the runs: the collapse and the
    placement's verdicts (:func:`collapse_findings`), or why they are absent."""
    path = Path(tables) / "feature_position_similarity.csv"
    if not path.is_file():
        return "- Feature KD's collapse: chapter 3 has not measured it here yet (`make demo` runs chapter 3)."
    said = collapse_findings(pd.read_csv(path).set_index("level"), runs)
    return "- Does feature KD help once its target cannot collapse? Chapter 3's measurement: " + " ".join(said[1:])


def _first_seed_students(n: int) -> str:
    return "each method's first-seed student" if n == 1 else f"mean of {n} students, each method's first seed"


def _dependency_findings(rows: pd.DataFrame) -> list[str]:
    """The teacher-dependency sentences: the no-KD ratio, then each KD student's verdict from
    the paired interval of its ratio minus the no-KD one (``ratio_minus_none``, at the
    Bonferroni level of :func:`kdlib.failures.failure_tables`). The students are each method's
    first seed, so a verdict is about that run, not the method over seeds."""
    ratio = rows["ratio"]
    kd = ratio.drop(index="none", errors="ignore")
    if "none" not in ratio.index or not len(kd):
        return []
    lines = [
        f"Where the teacher fails on an object, the no-KD student, which never saw the teacher, fails "
        f"{ratio['none']:.2f} times as often as where it succeeds: objects hard for the teacher are harder for a "
        f"student that learnt from the labels alone too."
    ]
    columns = ["ratio_minus_none", "ratio_minus_none_low", "ratio_minus_none_high"]
    if not set(columns) <= set(rows.columns):
        return lines + [f"The KD students' ratios are {kd.min():.2f} to {kd.max():.2f}."]
    diff = rows.loc[kd.index, columns].set_axis(["d", "low", "high"], axis=1)
    undefined = [m for m in diff.index if diff.loc[m].isna().any()]
    diff = diff.drop(index=undefined)
    level = rows.loc[kd.index, "ratio_minus_none_level"].iloc[0] if "ratio_minus_none_level" in rows else math.nan
    objects, images = (rows.loc["none"].get(k, math.nan) for k in ("objects", "images"))
    drawn = "objects" if math.isnan(objects) else f"{int(objects)} objects"
    if not math.isnan(images):
        drawn += f" (resampling their {int(images)} images, each with all its objects)"
    said = {
        "inside": "no sign, at this number of objects, that {its} failures follow the teacher's more than a "
        "student's that never saw it",
        "above": "{its} failures follow the teacher's more than the no-KD run's do, a pattern consistent with taking "
        "on some of the teacher's mistakes",
        "below": "{its} failures follow the teacher's less than those of a student that never saw it",
    }
    where = {
        "inside": [m for m in diff.index if diff.loc[m, "low"] <= 0 <= diff.loc[m, "high"]],
        "above": [m for m in diff.index if diff.loc[m, "low"] > 0],
        "below": [m for m in diff.index if diff.loc[m, "high"] < 0],
    }
    named = {"inside": "covers 0", "above": "lies above 0", "below": "lies below 0"}
    each = "; ".join(
        f"{display_name(m)} {diff.loc[m, 'd']:+.2f} [{diff.loc[m, 'low']:+.2f}, {diff.loc[m, 'high']:+.2f}]"
        for m in diff.index
    )
    parts = [
        f"For {_names(ms)} the interval {named[k]}: " + said[k].format(its="its" if len(ms) == 1 else "their") + "."
        for k, ms in where.items()
        if ms
    ]
    at = "" if math.isnan(level) else f" at {level:.1%} each (Bonferroni over {len(kd)} students: 95% together)"
    if len(diff):
        lines.append(
            f"Each KD student's ratio minus the no-KD student's (each method's first-seed run), with a paired bootstrap "
            f"interval over the same {drawn}{at}: {each}. Both ratios are taken on each resample, so the luck of the "
            "objects drawn moves them alike."
        )
        lines += parts
    if undefined:
        lines.append(
            f"No interval for {_names(undefined)}: too many resamples leave its ratio undefined (it never, or always, "
            "fails where the teacher succeeds)."
        )
    return lines


def findings_md(runs: pd.DataFrame, teacher: dict | None, runs_dir, figures_dir, report_dir) -> str:
    """The report's findings (:func:`headline_md`) as one Markdown text, for chapter 7 to open on."""
    paired = paired_comparison(runs)
    _, overview, said, _ = conditions_sections(runs_dir, figures_dir, report_dir)
    return "\n".join(headline_md(runs, paired, teacher, Path(report_dir) / "tables", said, overview))


def sweep_findings(table: pd.DataFrame) -> list[str]:
    """What the map shows, per swept method, computed from ``sweep.csv``: how many cells lie above
    no KD's mean, the best cell, every cell whose paired difference survives Holm over the
    method's cells (and which way), and the mean over temperatures at each β."""
    cells_table, none = table[table["method"] != "none"], table[table["method"] == "none"]
    cells = sweep_cells(cells_table, none)
    level = none["miou"].mean()
    seeds = ("seed " if none["seed"].nunique() == 1 else "seeds ") + ", ".join(
        str(x) for x in sorted(none["seed"].unique())
    )
    lines = []
    for method, of in cells.groupby("method", sort=False):
        best = of.loc[of["miou_mean"].idxmax()]
        above = int((of["miou_mean"] > level).sum())
        held = of[of["p_holm"] < 0.05]
        survive = (
            ", ".join(f"T = {r['T']:g}, β = {r['beta']:g} ({r['vs_none']:+.4f})" for _, r in held.iterrows()) or "none"
        )
        by_beta = of.groupby("beta")["miou_mean"].mean()
        trend = ", ".join(f"β = {b:g}: {v:.4f}" for b, v in by_beta.items())
        lines.append(
            f"- {display_name(method)}: {above} of {len(of)} cells lie above no KD's mean on the same seeds "
            f"({seeds}: {level:.4f}); its best cell "
            f"is T = {best['T']:g}, β = {best['beta']:g} ({best['vs_none']:+.4f}, detectable ±{best['detectable']:.4f}). "
            f"Cells whose difference survives Holm over its {len(of)} cells: {survive}. Mean over the temperatures "
            f"at each β: {trend}."
        )
    return lines


# The rows that change one thing of another row, each read against that row (paired by seed) as
# well as against no KD: what the change itself did.
CHANGE_OF = {
    "response_t2": ("response", "the response term × T²"),
    "feature_student": ("feature", "the 1×1 adapters moved to the student's side, chapter 3's collapse test"),
    "response_ls_ce1": ("response_ls", "the cross entropy at 1 instead of 0.1"),
    "at_beta1000": ("at", "β 1000 instead of 500"),
}


def rows_findings(runs: pd.DataFrame) -> list[str]:
    """Chapter 8's ending: each row's verdict against no KD (Holm over every row), then each row
    that changes one thing of another (:data:`CHANGE_OF`, and unlabeled images added) against
    that row, one uncorrected comparison each, in sentences computed from the paired tests."""
    paired = paired_comparison(runs)
    if paired.empty:
        return ["No row to compare with no KD yet: `make methods` trains them."]
    groups = {
        "Beat no KD by more than seed noise, after Holm over all the rows": (paired["verdict"] == LARGER)
        & (paired["mean_diff"] > 0),
        "Worse than no KD, after Holm over all the rows": (paired["verdict"] == LARGER) & (paired["mean_diff"] < 0),
        "Differ from no KD by more than seed noise alone, but not once all the rows are corrected for (Holm)": (
            paired["verdict"] == NOT_AFTER_HOLM
        ),
        "No difference to no KD these seeds resolve": ~paired["verdict"].isin([LARGER, NOT_AFTER_HOLM, ONE_SEED]),
        "One seed, no verdict yet": paired["verdict"] == ONE_SEED,
    }
    lines = []
    for said, mask in groups.items():
        rows = paired[mask & ~paired["run"].str.endswith("_unlabeled")]
        if not rows.empty:
            lines.append(
                f"{said}: "
                + "; ".join(
                    display_name(r["run"])
                    + (
                        ""
                        if r["verdict"] == ONE_SEED
                        else f" {r['mean_diff']:+.4f} (detectable ±{r['detectable']:.4f})"
                    )
                    for _, r in rows.iterrows()
                )
                + "."
            )
    lines += _crossed_kernels(paired)
    present = set(runs["run"])
    tests = dict(CHANGE_OF)
    tests |= {
        n: (n.removesuffix("_unlabeled"), "unlabeled images added") for n in sorted(present) if n.endswith("_unlabeled")
    }
    for name, (base, change) in tests.items():
        if name in present and base in present:
            r = paired_comparison(runs[runs["run"].isin([base, name])], baseline=base).iloc[0]
            lines.append(
                f"{display_name(name)} against {display_name(base)} ({change}), paired by seed (one comparison, "
                f"not corrected with the others): {_ci(r)}, detectable ±{r['detectable']:.4f}: {r['verdict']}."
            )
    return lines


def open_questions(runs: pd.DataFrame, runs_dir, figures_dir, report_dir) -> str:
    """The report's open questions (:func:`open_questions_md`) as one Markdown text, for chapter 7."""
    config = json.loads((Path(runs["folder"].iloc[0]) / "config.json").read_text())
    _, _, _, missing = conditions_sections(runs_dir, figures_dir, report_dir)
    return "\n".join(open_questions_md(runs, paired_comparison(runs), config, missing))
