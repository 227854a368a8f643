"""Training the comparison's runs: one run name over its seeds (``train_method``), runs side by
side on a CPU with a line per finished run and the time left, and `make methods`' rows with
its rule (the unlabeled images go to the best KD method).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import pandas as pd

from . import methods
from .config import Config, cpu_cores
from .profiles import extra_runs, profile_runs, profile_settings, run_config
from .results import collect_runs, collect_with_committed, is_finished, reused_line, run_line, stale_reason
from .train import fit


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
        print(f"[{method}] not trained in the {profile!r} profile (see kdlib/profiles.py PROFILES)")
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


def _set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def target_of(name: str) -> str:
    """The make target that trains (and, when interrupted, resumes) the runs of ``name``."""
    return "make methods" if methods.is_extra(name) else "make demo"


def demo_runs(profile: str) -> tuple[str, ...]:
    """The run names `make demo` trains (chapters 2-5): every one that is not `make methods`'."""
    return tuple(n for n in profile_runs(profile) if not methods.is_extra(n))


def train_demo_rows(*, runs_dir, profile: str = "demo", **settings) -> None:
    """`make demo`'s training, before its chapters run: every seed of :func:`demo_runs` in one
    batch side by side (the chapters then reuse them), a line per finished run with the time
    left. Finished runs are reused, interrupted ones resumed."""
    todo = []
    for name in demo_runs(profile):
        todo += pending_runs(name, runs_dir=runs_dir, profile=profile, **settings)
    train_runs(todo, profile_settings(profile).get("jobs", 1), "demo")


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
    kd = runs[runs["run"].isin(candidates)]
    if kd.empty:
        raise ValueError(
            f"no finished run of {candidates} to choose the best method from: train them first (make methods)"
        )
    return str(kd.groupby("run")["miou"].mean().idxmax())
