"""The comparison itself: profiles, the run folder layout, and running/collecting runs.

Runs live at ``<runs_dir>/<method>/seed<k>/`` (one ``fit`` each). A run whose
``metrics.json`` says it finished is reused, so notebooks and ``make report`` can be re-run
without training again, unless it is stale: distilled from other teacher weights than the
ones it would use now (:func:`stale_reason`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

import pandas as pd

from . import methods
from .config import Config, cpu_cores
from .files import atomic_write_text
from .train import data_fingerprints, fit, teacher_weights_sha256

# The split of images without masks each data set offers to `<method>_unlabeled` runs (VOC has
# none of its own: pass unlabeled_split=, e.g. a list of SBD's extra image ids).
UNLABELED_SPLITS = {"shapes": "teacher_train"}

# Settings per profile. `full` is the report's Table 1. `demo` is the report's situation in
# miniature within the 20 minutes of `make demo` on a 2-core CPU: a data-starved student (the
# benchmark's 32 training images, each seen 8 times per epoch) trained to convergence by a
# cosine schedule, six seeds (two side by side: six cost what five do); docs/regime.md says what chose it. `smoke`
# exercises every code path in seconds (tests, nbval). `leaves_out`: run names its notebooks do not
# train (every other registered one they may): the demo leaves out the cached variant of response
# KD, whose speed, not accuracy, is its point. `train` holds Config overrides; `jobs`
# runs train side by side on a CPU; workers 0: a DataLoader worker on a 2-core CPU only takes
# a core from the training step.
PROFILES = {
    "smoke": {
        "epochs": 1,
        "seeds": [0],
        "max_batches": 2,
        "batch_size": 8,
        "workers": 0,
        "jobs": 1,
        "benchmark": {"teacher_train": 4, "train": 16, "val": 12},
        "train": {},
    },
    "demo": {
        "epochs": 20,
        "seeds": [0, 1, 2, 3, 4, 5],
        "max_batches": None,
        "batch_size": 16,
        "workers": 0,
        "jobs": 2,
        "benchmark": {},
        "train": {"lr": 1e-2, "lr_schedule": "cosine", "train_repeats": 8},
        "leaves_out": ("response_cached",),
    },
    "full": {
        "epochs": 300,
        "seeds": [0, 1, 2],
        "max_batches": None,
        "batch_size": 16,
        "workers": 4,
        "jobs": 1,
        "benchmark": {},
        "train": {},
    },
}


def profile_settings(profile: str) -> dict:
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    return PROFILES[profile]


def profile_runs(profile: str) -> tuple[str, ...]:
    """The run names a profile trains (every registered one but those it leaves out)."""
    return tuple(n for n in methods.run_names() if n not in profile_settings(profile).get("leaves_out", ()))


def extra_runs() -> tuple[str, ...]:
    """The rows beyond the report that `make methods` trains before its unlabeled-images row:
    every variant of settings and every method beyond the report's."""
    return tuple(n for n in methods.run_names() if methods.is_extra(n) and not n.endswith("_unlabeled"))


def prepare_data(dataset: str, data_root: str, profile: str, seed: int | None = None) -> Path:
    """The embedded benchmark is generated when absent (sized by the profile; ``seed``: another
    draw of it than the demo's); VOC must exist."""
    if dataset == "shapes":
        from .shapes import DEFAULTS, generate

        draw = DEFAULTS["seed"] if seed is None else seed
        return generate(data_root, progress=False, seed=draw, **profile_settings(profile)["benchmark"])
    return Path(data_root)


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


def run_config(
    name: str,
    seed: int,
    *,
    dataset: str,
    data_root: str,
    runs_dir,
    profile: str = "demo",
    epochs=None,
    image_size=None,
    device: str = "cpu",
    **overrides,
) -> Config:
    """The settings of run ``name`` (a method or a variant such as ``response_cached``) for
    ``seed`` in ``profile``, writing to ``<runs_dir>/<name>/seed<seed>``."""
    if name not in methods.run_names():
        raise ValueError(f"unknown run {name!r}; choose one of {', '.join(methods.run_names())}")
    method = name
    if name in methods.VARIANTS:
        variant = methods.VARIANTS[name]
        method, changes = variant.method, dict(variant.overrides)
        if variant.cached:  # teacher logits from the cache, one per runs folder
            changes["teacher_cache"] = str(Path(runs_dir) / "teacher_cache")
        if variant.unlabeled:
            changes["unlabeled_split"] = UNLABELED_SPLITS.get(dataset)
            if "unlabeled_split" not in overrides and changes["unlabeled_split"] is None:
                raise ValueError(
                    f"run {name!r}: the {dataset!r} data set has no unlabeled split; pass unlabeled_split="
                )
        overrides = {**changes, **overrides}
    settings = profile_settings(profile)
    cfg = Config(
        method=method,
        dataset=dataset,
        data_root=str(data_root),
        epochs=settings["epochs"] if epochs is None else epochs,
        image_size=image_size,
        device=device,
        batch_size=settings["batch_size"],
        workers=settings["workers"],
        max_batches=settings["max_batches"],
        progress="lines",
        seed=seed,
        out=str(run_dir(runs_dir, name, seed)),
        **settings["train"],
    )
    return dataclasses.replace(cfg, **overrides)


def train_method(
    method: str,
    *,
    dataset: str,
    data_root: str,
    runs_dir: str,
    profile: str = "demo",
    seeds=None,
    epochs=None,
    image_size=None,
    device: str = "cpu",
    **overrides,
) -> pd.DataFrame:
    """Train ``method`` once per seed (skipping finished runs, resuming interrupted ones) and
    return one row per seed from each run's ``metrics.json``.

    The profile's ``jobs`` runs train side by side, each in its own process with an equal
    share of the CPU threads (a small model's step scales poorly across threads: on a 2-core
    CPU two one-thread runs together do 1.47 times the work of one two-thread run); a line
    per finished run is printed."""
    settings = profile_settings(profile)
    if method not in profile_runs(profile):
        print(f"[{method}] not trained in the {profile!r} profile (see kdlib/experiment.py PROFILES)")
        return collect_runs(runs_dir, [method])
    todo = pending_runs(
        method,
        dataset=dataset,
        data_root=data_root,
        runs_dir=runs_dir,
        profile=profile,
        seeds=seeds,
        epochs=epochs,
        image_size=image_size,
        device=device,
        **overrides,
    )
    train_runs(todo, settings.get("jobs", 1), method)
    return collect_runs(runs_dir, [method])


def pending_runs(name: str, *, runs_dir, profile: str, seeds=None, reused=None, **settings) -> list[Config]:
    """The runs of ``name`` (one per seed) that still have to train, each set to resume an
    interrupted run or to start over a stale one. Finished runs are left out and said in one
    line, or, given a list ``reused``, added to it as (seed, metrics, folder) for the caller to
    say (the sweep says all its cells' in one line)."""
    seeds = profile_settings(profile)["seeds"] if seeds is None else list(seeds)
    todo, finished = [], [] if reused is None else reused
    for seed in seeds:
        cfg = run_config(name, seed, runs_dir=runs_dir, profile=profile, **settings)
        out = Path(cfg.out)
        stale = stale_reason(out, cfg) if (out / "config.json").is_file() else None
        if stale:
            print(f"[{name}] seed {seed}: {out} is stale, {stale}; training it again")
        elif is_finished(out, cfg.epochs):
            finished.append((seed, json.loads((out / "metrics.json").read_text()), out))
            continue
        resume = not stale and (out / "last.pt").is_file()
        todo.append(dataclasses.replace(cfg, resume=resume, overwrite=not resume))
    if reused is None and finished:
        print(reused_line(name, finished, Path(runs_dir) / name))
    return todo


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


def train_runs(configs: list[Config], jobs: int, name: str) -> None:
    """Train ``configs``, ``jobs`` side by side on a CPU (one after the other on a GPU)."""
    jobs = min(jobs, len(configs))
    if jobs <= 1 or any(cfg.device != "cpu" for cfg in configs):
        progress = RunProgress(len(configs), 1)
        for cfg in configs:
            print(run_line(_label(name, cfg), cfg.seed, fit(cfg), cfg.out) + progress.finished(), flush=True)
    else:
        _fit_side_by_side(configs, jobs, name)


class RunProgress:
    """Where a batch of runs stands, said after each finished one: how many are done, how many
    are running, and the time left at the pace so far (the batch's elapsed time per finished
    run; with runs side by side that pace already counts them)."""

    def __init__(self, total: int, jobs: int):
        self.total, self.jobs, self.done, self.start = total, jobs, 0, time.perf_counter()

    def finished(self) -> str:
        self.done += 1
        elapsed, left = time.perf_counter() - self.start, self.total - self.done
        if left == 0:
            return f" | {self.done} of {self.total} done in {_minutes(elapsed)}"
        running = min(self.jobs, left)
        return (
            f" | {self.done} of {self.total} done, {running} running, about {_minutes(elapsed / self.done * left)} left"
        )


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def _fit_side_by_side(configs: list[Config], jobs: int, name: str) -> None:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    threads = max(1, cpu_cores() // jobs)
    print(f"[{name}] {len(configs)} runs, {jobs} at a time with {threads} thread(s) each")
    context = multiprocessing.get_context("spawn")  # no fork of a process that already runs torch threads
    progress = RunProgress(len(configs), jobs)
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_set_threads, initargs=(threads,)) as pool:
        futures = {pool.submit(fit, dataclasses.replace(cfg, progress="none")): cfg for cfg in configs}
        for future in as_completed(futures):
            cfg = futures[future]
            print(run_line(_label(name, cfg), cfg.seed, future.result(), cfg.out) + progress.finished(), flush=True)


def _label(name: str, cfg: Config) -> str:
    """A batch's name, and the run's own where the batch mixes runs (``draws: cwd``)."""
    run = Path(cfg.out).parent.name
    return name if run in name else f"{name}: {run}"


def run_line(name: str, seed: int, metrics: dict, out, prefix: str = "") -> str:
    """One line on a finished run, for logs and notebook outputs."""
    return (
        f"[{name}] seed {seed}: {prefix}best val mIoU {metrics['best_miou']:.4f} at epoch "
        f"{metrics['best_epoch']} of {metrics['epochs_run']} ({metrics['total_seconds']:.0f}s) -> {out}"
    )


def _set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


RUN_COLUMNS = ["method", "seed", "miou", "pixel_accuracy", "best_epoch", "epochs", "seconds", "run"]


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
    """One row per *finished* run under ``runs_dir``: run name (column ``method``), seed, best
    mIoU, epochs, seconds, folder. A run still training, or stopped before its budget, is left
    out of every table, figure and verdict built from this; :func:`unfinished_runs` lists them."""
    rows = [
        {
            "method": method,
            "seed": m["seed"],
            "miou": m["best_miou"],
            "pixel_accuracy": m["pixel_accuracy"],
            "best_epoch": m["best_epoch"],
            "epochs": m["epochs_run"],
            "seconds": m["total_seconds"],
            "run": str(folder),
        }
        for method, folder, m, config in _run_folders(runs_dir, names)
        if _finished(m, config)
    ]
    return pd.DataFrame(rows, columns=RUN_COLUMNS)


def unfinished_runs(runs_dir, names=None) -> pd.DataFrame:
    """The runs under ``runs_dir`` that started but have not finished: run name, seed, epochs run
    of how many, folder (``--resume``, or the target that trains them, finishes them)."""
    rows = [
        {"method": method, "seed": m["seed"], "epochs_run": m.get("epochs_run", 0), "epochs": config.get("epochs")}
        | {"run": str(folder)}
        for method, folder, m, config in _run_folders(runs_dir, names)
        if not _finished(m, config)
    ]
    return pd.DataFrame(rows, columns=["method", "seed", "epochs_run", "epochs", "run"])


def target_of(name: str) -> str:
    """The make target that trains (and, when interrupted, resumes) the runs of ``name``."""
    return "make methods" if methods.is_extra(name) else "make demo"


def train_extra_rows(*, runs_dir, committed_dir, **settings) -> pd.DataFrame:
    """`make methods` (chapter 8): the no-KD baseline every row is paired with (reused after
    `make demo`), every row of :func:`extra_runs`, then the data set's unlabeled images added to
    the KD method with the best mean of the table (this machine's runs and the committed ones,
    :func:`best_kd_method`): the rule docs/regime.md states. Returns the table's runs."""
    train_method("none", runs_dir=runs_dir, **settings)
    for name in extra_runs():
        train_method(name, runs_dir=runs_dir, **settings)
    best = best_kd_method(collect_with_committed(runs_dir, committed_dir))
    train_method(f"{best}_unlabeled", runs_dir=runs_dir, **settings)
    return collect_with_committed(runs_dir, committed_dir)


def best_kd_method(runs: pd.DataFrame, among=None) -> str:
    """The KD method (no variant; of ``among`` when given) with the highest mean val mIoU in ``runs``."""
    candidates = list(methods.kd_names() if among is None else among)
    kd = runs[runs["method"].isin(candidates)]
    if kd.empty:
        raise ValueError(
            f"no finished run of {candidates} to choose the best method from: train them first (make methods)"
        )
    return str(kd.groupby("method")["miou"].mean().idxmax())


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
        ours = regime(here["run"].iloc[0])
        committed = committed[[same_regime(regime(r), ours) for r in committed["run"]]]
    seeds_here, seeds_committed = here["method"].value_counts(), committed["method"].value_counts()
    use_committed = [
        n
        for n in names
        if seeds_here.get(n, 0) == 0 or (methods.is_extra(n) and seeds_committed.get(n, 0) > seeds_here.get(n, 0))
    ]
    return pd.concat(
        [here[~here["method"].isin(use_committed)], committed[committed["method"].isin(use_committed)]],
        ignore_index=True,
    )


# The hyper-parameter map (chapter 9, `make sweep`): every (T, β) over a few seeds.
SWEEP_TEMPERATURES = (1.0, 2.0, 4.0, 8.0)
SWEEP_BETAS = (0.1, 0.3, 0.5, 0.7)
SWEEP_SEEDS = (0, 1, 2)
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
    method (default: response KD and the best of the methods beyond the report in the table of
    this machine's and the committed runs, the rule docs/regime.md states), written to
    ``table_path`` (``sweep.csv``: the no-KD rows first, their T and β empty). Returns it."""
    kw = dict(dataset=dataset, data_root=data_root, profile=profile, device=device)
    none = train_method("none", runs_dir=runs_dir, seeds=seeds, **kw)
    if swept is None:
        swept = [
            "response",
            best_kd_method(collect_with_committed(runs_dir, committed_dir), among=methods.names("new")),
        ]
    maps = [sweep(m, runs_dir=runs_dir, temperatures=temperatures, betas=betas, seeds=seeds, **kw) for m in swept]
    baseline = none[none["seed"].isin(list(seeds))].assign(temperature=math.nan, beta=math.nan)
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
                {"method": method, "temperature": float(t), "beta": float(b), **r} for r in runs.to_dict("records")
            ]
    table = pd.DataFrame(rows)
    return table.drop(columns=["run", "pixel_accuracy"], errors="ignore")


def load_history(run) -> pd.DataFrame:
    return pd.read_csv(Path(run) / "history.csv")


def resolve_image_size(dataset: str, data_root, image_size=None) -> int:
    return image_size or Config(dataset=dataset, data_root=str(data_root)).resolved().image_size


def teacher_arch(dataset: str) -> str:
    return Config(dataset=dataset, method="both").resolved().teacher


def load_teacher(dataset: str, teacher_weights=None):
    """The data set's frozen teacher (unwrapped), as the trainer builds it."""
    from .train import build_teacher

    cfg = Config(dataset=dataset, method="response", teacher_weights=teacher_weights).resolved()
    return build_teacher(cfg, "cpu").model


def sample_batch(dataset: str, data_root, split: str = "val", n: int = 8, image_size=None):
    """The first ``n`` images of ``split`` as the models see them at evaluation (resized,
    normalised): ``(images N×3×H×W, masks N×H×W)``. The notebooks show each loss at work on it."""
    from torch.utils.data import default_collate

    from .augment import prepare_batch
    from .data import build_dataset

    size = resolve_image_size(dataset, data_root, image_size)
    items = build_dataset(dataset, data_root, split, train=False, image_size=size)
    x, y, _ = prepare_batch(default_collate([items[i] for i in range(min(n, len(items)))]), "cpu")
    return x, y


def evaluate_teacher(dataset: str, data_root, image_size=None, device: str = "cpu", report_dir=None) -> dict:
    """The upper-bound row: the teacher on the whole validation split (saved to
    ``report_dir/teacher_eval.json`` when given)."""
    from .data import build_dataset
    from .evaluate import evaluate_model
    from .models import count_parameters

    size = resolve_image_size(dataset, data_root, image_size)
    model = load_teacher(dataset)
    result = evaluate_model(model, build_dataset(dataset, data_root, "val", train=False, image_size=size), device)
    result.pop("confusion_matrix")
    out = {"model": teacher_arch(dataset), "parameters": count_parameters(model), **result}
    if report_dir is not None:
        Path(report_dir).mkdir(parents=True, exist_ok=True)
        atomic_write_text(json.dumps(out, indent=2) + "\n", Path(report_dir) / "teacher_eval.json")
    return out


def per_class_table(runs_dir, class_names, teacher: dict | None = None, committed_dir=None) -> pd.DataFrame:
    """Per-class IoU (mean over seeds) of the teacher and each method: classes × models (with
    ``committed_dir``, the committed runs of the methods this machine did not train too)."""
    runs = collect_runs(runs_dir) if committed_dir is None else collect_with_committed(runs_dir, committed_dir)
    table = {}
    if teacher is not None:
        table["teacher"] = teacher["per_class_iou"]
    for method in [m for m in methods.names() if m in set(runs["method"])]:
        per_seed = [
            json.loads((Path(r) / "metrics.json").read_text())["per_class_iou"]
            for r in runs[runs["method"] == method]["run"]
        ]
        table[method] = pd.DataFrame(per_seed).mean(axis=0).tolist()
    return pd.DataFrame(table, index=list(class_names))
