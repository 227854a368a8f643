"""The comparison itself: profiles, the run folder layout, and running/collecting runs.

Runs live at ``<runs_dir>/<method>/seed<k>/`` (one ``fit`` each). A run whose
``metrics.json`` says it finished is reused, so notebooks and ``make report`` can be re-run
without training again, unless it is stale: distilled from other teacher weights than the
ones it would use now (:func:`stale_reason`).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd

from .files import atomic_write_text
from .losses import METHODS
from .train import Config, fit, teacher_fingerprint

# Run names: the four methods, and response KD distilled from the teacher-output cache
# (kdlib/teacher_cache.py), the offline variant whose accuracy the report compares.
VARIANTS = {"response_cached": {"method": "response"}}
RUN_NAMES = (*METHODS, *VARIANTS)


# Settings per profile. `full` is the report's Table 1; `demo` fits the 20-minute budget of
# `make demo` on a 2-core CPU; `smoke` exercises every code path in seconds (tests, nbval).
PROFILES = {
    "smoke": {"epochs": 1, "seeds": [0], "max_batches": 2, "batch_size": 8, "workers": 0,
              "benchmark": {"teacher_train": 4, "train": 16, "val": 12}},
    # workers 0: measured faster than 1 or 2 on a 2-core CPU (the augmentation competes with compute)
    "demo": {"epochs": 7, "seeds": [0, 1], "max_batches": None, "batch_size": 16, "workers": 0,
             "benchmark": {}},
    "full": {"epochs": 300, "seeds": [0, 1, 2], "max_batches": None, "batch_size": 16, "workers": 4,
             "benchmark": {}},
}  # fmt: skip


def profile_settings(profile: str) -> dict:
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    return PROFILES[profile]


def prepare_data(dataset: str, data_root: str, profile: str) -> Path:
    """The embedded benchmark is generated when absent (sized by the profile); VOC must exist."""
    if dataset == "shapes":
        from .shapes import generate

        return generate(data_root, progress=False, **profile_settings(profile)["benchmark"])
    return Path(data_root)


def run_dir(runs_dir, method: str, seed: int) -> Path:
    return Path(runs_dir) / method / f"seed{seed}"


def is_finished(out: Path, epochs: int) -> bool:
    path = Path(out) / "metrics.json"
    if not path.is_file():
        return False
    m = json.loads(path.read_text())
    return m.get("epochs_run", 0) >= epochs or m.get("early_stopped", False)


def stale_reason(out: Path, cfg: Config) -> str | None:
    """Why a finished run no longer answers ``cfg`` (None when it still does): it distilled
    from another teacher than the one ``cfg`` would use now (the shipped teacher retrained,
    or other ``--teacher-weights``)."""
    resolved = cfg.resolved()
    current = teacher_fingerprint(resolved)
    if current is None:
        return None
    path = Path(out) / "config.json"
    recorded = json.loads(path.read_text()).get("teacher_sha256") if path.is_file() else None
    if recorded == current:
        return None
    now = f"{Path(resolved.teacher_weights).name} (sha256 {current[:12]})"
    return f"it was trained with {'unrecorded' if recorded is None else 'other'} teacher weights, not {now}"


def train_method(method: str, *, dataset: str, data_root: str, runs_dir: str, profile: str = "demo",
                 seeds=None, epochs=None, image_size=None, device: str = "cpu", **overrides) -> pd.DataFrame:  # fmt: skip
    """Train ``method`` once per seed (skipping finished runs, resuming interrupted ones) and
    return one row per seed from each run's ``metrics.json``."""
    if method not in RUN_NAMES:
        raise ValueError(f"unknown method {method!r}; choose one of {RUN_NAMES}")
    name = method
    if method in VARIANTS:  # e.g. response_cached: method response, teacher logits from the cache
        overrides = {"teacher_cache": str(Path(runs_dir) / "teacher_cache"), **overrides}
        method = VARIANTS[name]["method"]
    settings = profile_settings(profile)
    seeds = settings["seeds"] if seeds is None else list(seeds)
    epochs = settings["epochs"] if epochs is None else epochs
    base = Config(method=method, dataset=dataset, data_root=str(data_root), epochs=epochs,
                  image_size=image_size, device=device, batch_size=settings["batch_size"],
                  workers=settings["workers"], max_batches=settings["max_batches"], progress="lines")  # fmt: skip
    base = dataclasses.replace(base, **overrides)
    for seed in seeds:
        out = run_dir(runs_dir, name, seed)
        cfg = dataclasses.replace(base, seed=seed, out=str(out))
        stale = stale_reason(out, cfg) if (out / "config.json").is_file() else None
        if stale:
            print(f"[{name}] seed {seed}: {out} is stale, {stale}; training it again")
        elif is_finished(out, epochs):
            print(f"[{name}] seed {seed}: finished run in {out}, reused")
            continue
        resume = not stale and (out / "last.pt").is_file()
        fit(dataclasses.replace(cfg, resume=resume, overwrite=not resume))
    return collect_runs(runs_dir, methods=[name])


def collect_runs(runs_dir, methods=RUN_NAMES) -> pd.DataFrame:
    """One row per finished run under ``runs_dir``: method, seed, best mIoU, epochs, seconds."""
    rows = []
    for method in methods:
        for path in sorted(Path(runs_dir, method).glob("seed*/metrics.json")):
            m = json.loads(path.read_text())
            rows.append({
                "method": method, "seed": m["seed"], "miou": m["best_miou"],
                "pixel_accuracy": m["pixel_accuracy"], "best_epoch": m["best_epoch"],
                "epochs": m["epochs_run"], "seconds": m["total_seconds"], "run": str(path.parent),
            })  # fmt: skip
    return pd.DataFrame(rows, columns=["method", "seed", "miou", "pixel_accuracy", "best_epoch",
                                       "epochs", "seconds", "run"])  # fmt: skip


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


def per_class_table(runs_dir, class_names, teacher: dict | None = None) -> pd.DataFrame:
    """Per-class IoU (mean over seeds) of the teacher and each method: classes × models."""
    runs = collect_runs(runs_dir)
    table = {}
    if teacher is not None:
        table["teacher"] = teacher["per_class_iou"]
    for method in [m for m in METHODS if m in set(runs["method"])]:
        per_seed = [json.loads((Path(r) / "metrics.json").read_text())["per_class_iou"]
                    for r in runs[runs["method"] == method]["run"]]  # fmt: skip
        table[method] = pd.DataFrame(per_seed).mean(axis=0).tolist()
    return pd.DataFrame(table, index=list(class_names))
