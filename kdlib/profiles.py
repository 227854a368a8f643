"""The profiles (smoke, demo, full) and the settings of each run they train: ``run_config``
turns a run name, a seed and a profile into the ``Config`` that ``fit`` trains."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from . import methods
from .config import Config
from .results import run_dir

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


# The settings a chapter shows when it says what a profile trains with (chapter 2), in words
SHOWN_SETTINGS = {
    "epochs": "epochs",
    "train_repeats": "passes over the training images per epoch",
    "batch_size": "batch size",
    "lr": "learning rate (Adam)",
    "weight_decay": "weight decay",
    "lr_schedule": "learning-rate schedule",
    "lr_factor": "plateau: factor",
    "lr_patience": "plateau: patience (epochs)",
    "early_stop": "early stopping: patience (epochs)",
    "augment": "augmentation",
}


def settings_table(dataset: str, data_root, profile: str = "demo", epochs=None):
    """The training settings the report's Table 1 (``full``) and ``profile`` give a run, as
    :func:`run_config` resolves them (``epochs`` overriding the profile's, as a chapter's
    parameter does), so the table cannot drift from what trains; with each profile's seeds and
    runs side by side, and the training split's size in ``data_root``. A setting that cannot act
    (the plateau's, on a cosine schedule; early stopping no shorter than the run) shows "—"."""
    import pandas as pd

    from .data import split_sizes

    columns = {}
    for name in dict.fromkeys(("full", profile)):
        cfg = run_config(
            "none", 0, dataset=dataset, data_root=data_root, runs_dir="runs", profile=name,
            epochs=epochs if name == profile else None,
        )  # fmt: skip
        settings = profile_settings(name)
        column = {k: getattr(cfg, k) for k in SHOWN_SETTINGS}
        if cfg.lr_schedule != "plateau":
            column.update(lr_factor="—", lr_patience="—")
        if cfg.early_stop >= cfg.epochs:
            column.update(early_stop="—")
        column.update(seeds=len(settings["seeds"]), runs_side_by_side=settings.get("jobs", 1))
        columns[f"{name} (Table 1)" if name == "full" else name] = column
    table = pd.DataFrame(columns).astype(str)
    try:
        images = split_sizes(data_root).get("train")
    except FileNotFoundError:  # a VOC root not there yet: the table still says what would train
        images = None
    if images:
        table.loc["training images (this data root)"] = str(images)
    words = SHOWN_SETTINGS | {"seeds": "seeds", "runs_side_by_side": "runs side by side"}
    return table.rename(index=words)
