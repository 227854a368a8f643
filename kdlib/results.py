"""Results: where runs live and what is in them: the run folder layout, whether a run finished or is
stale, and the tables collected from finished runs (this machine's and the committed ones).

Runs live at ``<runs_dir>/<run>/seed<k>/`` (one ``fit`` each; ``<run>`` a method or a variant,
kdlib.methods). A run whose ``metrics.json`` says it finished is reused, so notebooks and
``make report`` can be re-run without training again, unless it is stale: trained with other
settings, on other data or from other teacher weights than it would be now (:func:`stale_reason`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pandas as pd

from . import methods
from .config import Config
from .cpu_kernels import kernel_class
from .train import data_fingerprints, teacher_weights_sha256


def run_dir(runs_dir, method: str, seed: int) -> Path:
    return Path(runs_dir) / method / f"seed{seed}"


def _finished(metrics: dict, config: dict) -> bool:
    """Whether a run ended: it trained its budget (config.json's ``epochs``) or early stopping
    ended it. A run writes metrics.json from its first epoch on, so that the file exists says
    nothing about whether it is done."""
    return metrics.get("early_stopped", False) or metrics.get("epochs_run", 0) >= config.get("epochs", math.inf)


def is_finished(out: Path, epochs: int) -> bool:
    """Whether the run in ``out`` ended, for a budget of ``epochs`` (see :func:`_finished`)."""
    path = Path(out) / "metrics.json"
    return path.is_file() and _finished(json.loads(path.read_text()), {"epochs": epochs})


# The settings that make a run what it is: a finished or interrupted run recorded with other
# values answers another question, and is trained again rather than reused or resumed.
# What must agree for two runs of different methods to be compared: the data, the student and
# the training budget.
REGIME = (
    "dataset",
    "model",
    "train_split",
    "val_split",
    "image_size",
    "augment",
    "epochs",
    "train_repeats",
    "batch_size",
    "lr",
    "weight_decay",
    "lr_schedule",
)


RUN_DEFINING = (
    "method",
    *REGIME,
    "lr_factor",
    "lr_patience",
    "min_lr",
    "early_stop",
    "temperature",
    "alpha",
    "beta",
    "scale_by_t2",
    "pairwise_grid",
    "unlabeled_split",
    "teacher",
    "seed",
)


def stale_reason(out: Path, cfg: Config) -> str | None:
    """Why a run in ``out`` no longer answers ``cfg`` (None when it still does): it was
    trained with other settings (:data:`RUN_DEFINING`), on other data (a split of another
    size, or whose fingerprint differs: :func:`kdlib.train.data_fingerprints`), or distilled
    from another teacher than the one ``cfg`` would use now (the shipped teacher retrained, or
    other ``--teacher-weights``). A run recorded before fingerprints were has its data
    compared by split size alone (said once per process)."""
    resolved = cfg.resolved()
    path = Path(out) / "config.json"
    recorded = json.loads(path.read_text()) if path.is_file() else {}
    wanted = dataclasses.asdict(resolved)
    changed = [
        f"{k} {recorded.get(k)!r} -> {wanted[k]!r}" for k in RUN_DEFINING if recorded.get(k, wanted[k]) != wanted[k]
    ]
    if "split_sizes" in recorded:
        sizes = _split_sizes(resolved)
        changed += [
            f"{split} split of {recorded['split_sizes'].get(split)} -> {n} images"
            for split, n in sizes.items()
            if recorded["split_sizes"].get(split) != n
        ]
    if changed:
        return "it was trained with other settings (" + ", ".join(changed) + ")"
    if "data_fingerprints" in recorded:
        now = data_fingerprints(resolved, missing_ok=True)  # what is missing, training reports
        other = [
            f"{split} split ({was} -> {now[split]})"
            for split, was in recorded["data_fingerprints"].items()
            if split in now and now[split] != was
        ]
        if other:
            return "it was trained on other data: the " + ", the ".join(other)
    elif path.is_file():
        _say_once(
            "unfingerprinted",
            "note: runs recorded before kdlib fingerprinted their data (no data_fingerprints in config.json, "
            f"e.g. {path}) are checked against the data by split size only",
        )
    current = teacher_weights_sha256(resolved)
    if current is None or recorded.get("teacher_sha256") == current:
        return None
    now = f"{Path(resolved.teacher_weights).name} (sha256 {current[:12]})"
    unrecorded = recorded.get("teacher_sha256") is None
    return f"it was trained with {'unrecorded' if unrecorded else 'other'} teacher weights, not {now}"


_said: set[str] = set()


def _say_once(key: str, text: str) -> None:
    """Print ``text`` the first time ``key`` comes up in this process."""
    if key not in _said:
        _said.add(key)
        print(text, flush=True)


def _split_sizes(cfg: Config) -> dict:
    from .data import split_sizes

    try:
        sizes = split_sizes(cfg.data_root)
    except (FileNotFoundError, OSError):
        return {}
    return {split: sizes[split] for split in (cfg.train_split, cfg.val_split) if split in sizes}


def run_line(name: str, seed: int, metrics: dict, out, prefix: str = "") -> str:
    """One line on a finished run, for logs and notebook outputs."""
    return (
        f"[{name}] seed {seed}: {prefix}best val mIoU {metrics['best_miou']:.4f} at epoch "
        f"{metrics['best_epoch']} of {metrics['epochs_run']} ({metrics['total_seconds']:.0f}s) -> {out}"
    )


def reused_line(name: str, finished: list, where) -> str:
    """One line for the finished runs a call reuses (a run alone: its own line)."""
    if len(finished) == 1:
        seed, metrics, out = finished[0]
        return run_line(name, seed, metrics, out, "finished run reused: ")
    mious = [m["best_miou"] for _, m, _ in finished]
    seeds = ", ".join(str(s) for s in sorted({s for s, _, _ in finished}))
    return (
        f"[{name}] {len(finished)} finished runs reused (seeds {seeds}): best val mIoU "
        f"{min(mious):.4f} to {max(mious):.4f} -> {where}"
    )


RUN_COLUMNS = ["run", "seed", "miou", "pixel_accuracy", "best_epoch", "epochs", "seconds", "kernels", "folder"]


# What a chapter's run table calls each column of `collect_runs`' (the folder is left out).
READER_COLUMNS = {
    "run": "Method",
    "seed": "Seed",
    "miou": "Best val mIoU",
    "pixel_accuracy": "Pixel accuracy",
    "best_epoch": "Best epoch",
    "epochs": "Epochs",
    "seconds": "Training time (s)",
}


def reader_table(runs: pd.DataFrame) -> pd.DataFrame:
    """`collect_runs`' table as a reader sees it: the methods' display names, the columns
    named in words, scores to 4 decimals (the precision the report's tables give), whole
    seconds, no folders, one row per run (`for_reader` does the names and the rounding)."""
    table = runs[list(READER_COLUMNS)].assign(seconds=runs["seconds"].round().astype(int))
    return for_reader(table).set_axis(list(READER_COLUMNS.values()), axis=1).reset_index(drop=True)


# Column names of kdlib's tables in words, where the snake_case one is not plain English.
WORDS = {
    "run": "method",
    "vs": "against",
    "mean_diff": "mean difference",
    "ci95_low": "95% CI from",
    "ci95_high": "95% CI to",
    "p_holm": "p (Holm)",
    "p_wilcoxon": "p (Wilcoxon)",
    "miou": "mIoU",
    "miou_mean": "mIoU (mean)",
    "miou_std": "mIoU (std)",
    "epochs_mean": "epochs (mean)",
    "seconds_mean": "training time per run (s, mean)",
    "ratio_ci95_low": "ratio, 95% CI from",
    "ratio_ci95_high": "ratio, 95% CI to",
    "same_kernels": "same CPU kernels",
    "ratio_minus_none": "ratio minus No KD's",
    "ratio_minus_none_low": "minus No KD's, interval from",
    "ratio_minus_none_high": "minus No KD's, interval to",
    "ratio_minus_none_level": "interval's level (Bonferroni)",
}


def for_reader(table: pd.DataFrame, digits: int = 4) -> pd.DataFrame:
    """Any of kdlib's tables as a chapter shows it: run names (as columns, index entries or the
    values of a ``run``/``vs``/``method`` column) by their display names, snake_case column names
    in words (``WORDS``), floats to ``digits`` decimals, yes/no columns as "yes"/"no". The table
    itself is left as it is."""
    runs = set(methods.run_names())

    def name(x):
        return methods.display_name(x) if isinstance(x, str) and x in runs else x

    def word(c):
        if not isinstance(c, str):
            return c
        return name(c) if c in runs else WORDS.get(c, c.replace("_", " "))

    out = table.rename(columns=word, index=name)
    for column in ("run", "vs", "method"):
        if column in table:
            out[word(column)] = table[column].map(name).to_numpy()
    out = out.round(digits)
    for column in table.select_dtypes(include="bool").columns:  # a raw True/False reads as code, not an answer
        out[word(column)] = table[column].map({True: "yes", False: "no"}).to_numpy()
    for column in P_VALUES & set(table.columns):  # "< 0.0001", not a p-value of 0.0
        out[word(column)] = table[column].map(lambda p: p_value(p, digits)).to_numpy()
    return out


P_VALUES = {"p", "p_holm", "p_wilcoxon"}


def p_value(p: float, digits: int = 4) -> str:
    """A p-value to ``digits`` decimals, or "< 0.0001" (for 4) where rounding would show 0."""
    if pd.isna(p):
        return "—"
    floor = 10.0**-digits
    return f"< {floor:.{digits}f}" if p < floor else f"{p:.{digits}f}"


def _run_folders(runs_dir, names=None):
    """(run name, folder, metrics.json, config.json) of every run under ``runs_dir`` that has
    written its first metrics.json (``config.json``'s dict is empty where there is none), for
    ``names`` (default: every registered run name)."""
    for method in methods.run_names() if names is None else names:
        for path in sorted(Path(runs_dir, method).glob("seed*/metrics.json")):
            config = path.parent / "config.json"
            yield (
                method,
                path.parent,
                json.loads(path.read_text()),
                json.loads(config.read_text()) if config.is_file() else {},
            )


def collect_runs(runs_dir, names=None) -> pd.DataFrame:
    """One row per *finished* run under ``runs_dir``: run name (``run``: a method or a variant,
    :mod:`kdlib.methods`), seed, best mIoU, epochs, seconds, the class of its arithmetic
    (``kernels``: :func:`kdlib.cpu_kernels.kernel_class`), ``folder``. A run still training, or stopped before its budget, is left
    out of every table, figure and verdict built from this; :func:`unfinished_runs` lists them."""
    rows = [
        {
            "run": name,
            "seed": m["seed"],
            "miou": m["best_miou"],
            "pixel_accuracy": m["pixel_accuracy"],
            "best_epoch": m["best_epoch"],
            "epochs": m["epochs_run"],
            "seconds": m["total_seconds"],
            "kernels": kernel_class(config.get("environment", {})),
            "folder": str(folder),
        }
        for name, folder, m, config in _run_folders(runs_dir, names)
        if _finished(m, config)
    ]
    return pd.DataFrame(rows, columns=RUN_COLUMNS)


def unfinished_runs(runs_dir, names=None) -> pd.DataFrame:
    """The runs under ``runs_dir`` that started but have not finished: run name, seed, epochs run
    of how many, folder (``--resume``, or the target that trains them, finishes them)."""
    rows = [
        {"run": name, "seed": m["seed"], "epochs_run": m.get("epochs_run", 0), "epochs": config.get("epochs")}
        | {"folder": str(folder)}
        for name, folder, m, config in _run_folders(runs_dir, names)
        if not _finished(m, config)
    ]
    return pd.DataFrame(rows, columns=["run", "seed", "epochs_run", "epochs", "folder"])


def regime(run) -> dict:
    """The :data:`REGIME` settings of a run folder, the sizes of its train and val splits and
    their data fingerprints (from its ``config.json``; None where it has none)."""
    path = Path(run) / "config.json"
    config = json.loads(path.read_text()) if path.is_file() else {}
    splits = (config.get("train_split"), config.get("val_split"))
    sizes, prints = config.get("split_sizes", {}), config.get("data_fingerprints")
    return {k: config.get(k) for k in REGIME} | {
        "split_sizes": {k: sizes.get(k) for k in splits},
        "data_fingerprints": None if prints is None else {k: prints.get(k) for k in splits},
    }


def same_regime(a: dict, b: dict) -> bool:
    """Whether two :func:`regime` dicts may be compared: the same settings and split sizes, and
    the same data where both runs recorded its fingerprints (older runs did not)."""
    prints = "data_fingerprints"
    if a[prints] is not None and b[prints] is not None and a[prints] != b[prints]:
        return False
    return {k: v for k, v in a.items() if k != prints} == {k: v for k, v in b.items() if k != prints}


def collect_with_committed(runs_dir, committed_dir, names=None) -> pd.DataFrame:
    """:func:`collect_runs` of ``runs_dir``, completed by the committed results (``report/runs/``,
    the same layout) trained in the same regime (:func:`same_regime`) as this machine's runs:
    the rows of `make methods` then appear in every report of the demo. A row of `make methods`
    takes this machine's finished runs when they are at least as many seeds as its committed
    ones, else the committed runs (so a `make methods` stopped half way does not put a one-seed
    row in place of a six-seed one); a row of `make demo` takes this machine's runs whenever it
    has any. ``source`` says where each row comes from."""
    names = methods.run_names() if names is None else names
    here = collect_runs(runs_dir, names).assign(source="this machine")
    committed = collect_runs(committed_dir, names).assign(source="committed")
    if not here.empty and not committed.empty:
        ours = regime(here["folder"].iloc[0])
        committed = committed[[same_regime(regime(r), ours) for r in committed["folder"]]]
    seeds_here, seeds_committed = here["run"].value_counts(), committed["run"].value_counts()
    use_committed = [
        n
        for n in names
        if seeds_here.get(n, 0) == 0 or (methods.is_extra(n) and seeds_committed.get(n, 0) > seeds_here.get(n, 0))
    ]
    return pd.concat(
        [here[~here["run"].isin(use_committed)], committed[committed["run"].isin(use_committed)]],
        ignore_index=True,
    )


def load_history(run) -> pd.DataFrame:
    return pd.read_csv(Path(run) / "history.csv")


def per_class_table(runs_dir, class_names, teacher: dict | None = None, committed_dir=None) -> pd.DataFrame:
    """Per-class IoU (mean over seeds) of the teacher and each method: classes × models (with
    ``committed_dir``, the committed runs of the methods this machine did not train too)."""
    runs = collect_runs(runs_dir) if committed_dir is None else collect_with_committed(runs_dir, committed_dir)
    table = {}
    if teacher is not None:
        table["teacher"] = teacher["per_class_iou"]
    for method in [m for m in methods.run_names() if m in set(runs["run"])]:  # every row, the tables' order
        per_seed = [
            json.loads((Path(r) / "metrics.json").read_text())["per_class_iou"]
            for r in runs[runs["run"] == method]["folder"]
        ]
        table[method] = pd.DataFrame(per_seed).mean(axis=0).tolist()
    return pd.DataFrame(table, index=list(class_names))
