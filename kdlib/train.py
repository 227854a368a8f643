"""The report's training recipe (Table 1, Section 2) as one resumable, reproducible trainer.

Read top to bottom: the runtime and samplers, ``build_datasets`` and the loaders, ``build_teacher``,
``train_one_epoch``, ``validate``, ``fit``; the settings are :class:`kdlib.config.Config`, the
checkpoint and RNG-state I/O :mod:`kdlib.checkpoints`. ``python -m kdlib train`` is
``fit`` behind an argument parser (see ``kdlib/cli.py``).

Artifacts in ``config.out``: ``config.json``, ``history.csv`` (a row per epoch),
``metrics.json`` (the best epoch), ``best.pt`` and ``last.pt`` (atomic writes).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import platform
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from . import __version__, cpu_kernels, methods
from .augment import prepare_batch
from .checkpoints import load_checkpoint, load_model, load_weights, rng_state, set_rng_state
from .config import Config, resolve_device
from .conventions import NUM_CLASSES, VOID
from .data import SegmentationFolder, build_dataset, split_fingerprint
from .evaluate import score
from .files import RunFolderError, RunLock, atomic_save, atomic_write_text, file_sha256
from .models import TeacherWrapper, build_model, count_parameters

# --------------------------------------------------------------------------- plumbing


@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_runtime(device: str) -> Runtime:
    """Single process, or one rank of ``torchrun`` (its environment variables decide)."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", rank))
        use_cuda = device != "cpu" and torch.cuda.is_available()
        if not dist.is_initialized():
            dist.init_process_group("nccl" if use_cuda else "gloo")
        dev = torch.device(f"cuda:{local}") if use_cuda else torch.device("cpu")
        if use_cuda:
            torch.cuda.set_device(dev)
        return Runtime(dev, rank, world)
    return Runtime(resolve_device(device))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of one sample in one epoch: a pure function of its arguments,
    so augmentation does not depend on worker count, persistent workers, ranks or resumes."""
    return (seed * 1_000_003 + epoch) * 1_000_003 + index


class SeededSampler(DistributedSampler):
    """``DistributedSampler`` (shuffle by epoch, shard by rank; ``set_epoch`` each epoch)
    that hands the dataset ``(index, augmentation seed)`` pairs, ``repeats`` passes per epoch,
    each shuffled and augmented anew (pass r of epoch e is drawn as epoch e·repeats + r, so
    ``repeats=1`` is the plain sampler)."""

    def __init__(self, dataset, *, repeats: int = 1, **kwargs):
        super().__init__(dataset, **kwargs)
        self.repeats = repeats

    def __iter__(self):
        epoch = self.epoch
        try:
            for r in range(self.repeats):
                self.epoch = epoch * self.repeats + r
                for index in super().__iter__():
                    yield index, sample_seed(self.seed, self.epoch, index)
        finally:
            self.epoch = epoch

    def __len__(self) -> int:
        return super().__len__() * self.repeats


class ShardSampler(torch.utils.data.Sampler):
    """Evaluation order without padding: rank r gets indices r, r+W, r+2W, ... so that the
    ranks together see every sample exactly once (metrics then equal a single process's)."""

    def __init__(self, n: int, rank: int = 0, world: int = 1):
        self.indices = list(range(rank, n, world))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)


def build_datasets(cfg: Config) -> tuple[SegmentationFolder, SegmentationFolder]:
    """The run's training split (augmented by ``cfg.augment``, decoded once and kept in
    memory when it fits) and its validation split."""
    train_set = build_dataset(
        cfg.dataset,
        cfg.data_root,
        cfg.train_split,
        train=True,
        image_size=cfg.image_size,
        download=cfg.download,
        augment=cfg.augment,
        skip_bad=cfg.skip_bad,
    )
    train_set.preload()  # before the loader starts: its workers then share the decoded images
    val_set = build_dataset(
        cfg.dataset, cfg.data_root, cfg.val_split, train=False, image_size=cfg.image_size, skip_bad=cfg.skip_bad
    )
    val_set.preload()  # when small: read once, not once an epoch
    return train_set, val_set


def train_loader(cfg: Config, rt: Runtime, dataset) -> tuple[DataLoader, SeededSampler]:
    """The training loader: this rank's share of ``cfg.train_repeats`` shuffled passes per
    epoch, each sample keyed with its own augmentation seed (:func:`sample_seed`)."""
    sampler = SeededSampler(
        dataset,
        repeats=cfg.train_repeats,
        num_replicas=rt.world,
        rank=rt.rank,
        shuffle=True,
        seed=cfg.seed,
        drop_last=False,
    )
    return DataLoader(dataset, cfg.batch_size, sampler=sampler, drop_last=False, **_loader_options(cfg, rt)), sampler


def eval_loader(cfg: Config, rt: Runtime, dataset) -> DataLoader:
    """A whole split in order, this rank's shard only (:class:`ShardSampler`)."""
    sampler = ShardSampler(len(dataset), rt.rank, rt.world)
    return DataLoader(dataset, cfg.batch_size, sampler=sampler, **_loader_options(cfg, rt))


def build_unlabeled(cfg: Config) -> SegmentationFolder | None:
    """``cfg.unlabeled_split`` as a training split whose masks are all void (None without one)."""
    if not cfg.unlabeled_split:
        return None
    images = build_dataset(
        cfg.dataset,
        cfg.data_root,
        cfg.unlabeled_split,
        train=True,
        image_size=cfg.image_size,
        augment=cfg.augment,
        skip_bad=cfg.skip_bad,
        labelled=False,
    )
    images.preload()
    return images


class UnlabeledBatches:
    """As many batches of unlabeled images per epoch as the labeled loader gives: each
    epoch its own shuffle of the split (sharded by rank), augmentation keyed like the labeled
    samples' but under another seed, so an epoch's batches depend on the epoch only (resumes
    see the same images)."""

    SEED_OFFSET = 7_919  # keeps the unlabeled images' shuffles and augmentations apart from the labeled ones'

    def __init__(self, cfg: Config, rt: Runtime, dataset, batches_per_epoch: int):
        need = batches_per_epoch * cfg.batch_size * rt.world
        own = dataclasses.replace(
            cfg, train_repeats=max(1, math.ceil(need / len(dataset))), seed=cfg.seed + self.SEED_OFFSET
        )
        self.loader, self.sampler = train_loader(own, rt, dataset)

    def epoch(self, epoch: int):
        self.sampler.set_epoch(epoch)
        return iter(self.loader)


def _loader_options(cfg: Config, rt: Runtime) -> dict:
    return {"num_workers": cfg.workers, "pin_memory": rt.device.type == "cuda", "persistent_workers": cfg.workers > 0}


def attach_teacher_cache(cfg: Config, rt: Runtime, teacher: TeacherWrapper, datasets) -> tuple[list, dict]:
    """Build (rank 0) or reuse the teacher-logit cache of each split: the data sets that serve
    each sample with its cached logits (:class:`kdlib.teacher_cache.WithTeacherMaps`), and
    the caches' cards."""
    from .teacher_cache import WithTeacherMaps, ensure_cache

    if rt.world > 1 and not rt.main:
        dist.barrier()  # rank 0 builds; the others then find the cache fresh
    served, cards = [], {}
    for ds in datasets:
        maps, card = ensure_cache(
            teacher,
            ds,
            cfg.teacher_cache,
            cfg.image_size,
            device=rt.device,
            batch_size=cfg.batch_size,
            log=lambda m: _log(cfg, rt, m),
        )
        served.append(WithTeacherMaps(ds, maps))
        cards[ds.split] = {k: card[k] for k in ("shape", "bytes_per_image", "seconds", "built")}
    if rt.world > 1 and rt.main:
        dist.barrier()
    return served, cards


def build_teacher(cfg: Config, device: torch.device) -> TeacherWrapper | None:
    """The frozen teacher behind its wrapper, or None for a method that does not read it
    (``none``: never built)."""
    if not methods.get(cfg.method).needs_teacher:
        return None
    if cfg.teacher == "fcn_resnet50":
        from .models import fcn_resnet50_teacher

        model = fcn_resnet50_teacher(cfg.teacher_weights)
    else:
        model = load_model(cfg.teacher_weights, expect=cfg.teacher)
    return TeacherWrapper(model).to(device)


def build_adapters(method: methods.Method, student: nn.Module, teacher: TeacherWrapper | None, device):
    """The method's adapters (``Method.adapters``: trainable modules on the student's side,
    built to the student's and the teacher's feature widths), or None when it has none."""
    if method.adapters is None:
        return None
    return method.adapters(student.feature_channels, teacher.teacher_channels).to(device)


def kd_parameters(method: methods.Method, teacher: TeacherWrapper | None, adapters: nn.Module | None) -> list:
    """What trains with the student but lives outside it: the teacher wrapper's projections
    (a method that reads projected features) and the method's adapters."""
    params = list(teacher.projections.parameters()) if teacher is not None and method.trains_projections else []
    return params + (list(adapters.parameters()) if adapters is not None else [])


def with_adapted(student_out: dict, adapters: nn.Module | None) -> dict:
    """The student's outputs, with its features through the method's adapters as ``"adapted"``."""
    if adapters is None:
        return student_out
    return student_out | {"adapted": adapters(student_out["features"])}


# --------------------------------------------------------------------------- the loop


def _batches(loader, cap):
    for i, batch in enumerate(loader):
        if cap is not None and i >= cap:
            break
        yield batch


class NonFiniteLossError(RuntimeError):
    pass


class LossTotals:
    """Per-batch loss components summed on the device, read once per epoch: no host-device
    synchronisation per step. Also remembers, per component, the first step whose value was
    not finite, so that a run that blew up stops at the end of the epoch (before anything of
    it is saved) with the component, epoch and step named."""

    def __init__(self, device):
        self.device, self.sums, self.first_bad, self.seen = device, {}, {}, 0

    def add(self, parts: dict, n: int, step: int) -> None:
        self.seen += n
        for k, v in parts.items():
            v = v.detach()
            self.sums[k] = self.sums.get(k, 0) + v.double() * n
            if k not in self.first_bad:
                self.first_bad[k] = torch.full((), -1, device=v.device)
            first = self.first_bad[k]
            self.first_bad[k] = torch.where((first < 0) & ~torch.isfinite(v), step, first)

    def means(self, rt: Runtime, epoch: int, phase: str) -> dict:
        """Mean of each component over the epoch (over every rank's samples): the one host read.
        Every rank learns whether any rank saw a non-finite value, so that all of them stop."""
        keys = sorted(self.sums)
        seen = torch.tensor(float(self.seen), dtype=torch.float64, device=self.device)
        failed_here = [(self.first_bad[k] >= 0).double() for k in keys]
        totals = torch.stack([self.sums[k] for k in keys] + [seen] + failed_here)
        if rt.world > 1:
            dist.all_reduce(totals)
        values = totals.tolist()
        sums, seen, failed_anywhere = values[: len(keys)], values[len(keys)], values[len(keys) + 1 :]
        if any(failed_anywhere):
            steps = dict(zip(keys, torch.stack([self.first_bad[k] for k in keys]).tolist()))
            here = {k: s for k, s in steps.items() if s >= 0}
            step = min(here.values()) if here else None
            names = sorted(k for k, s in here.items() if s == step) or [k for k, f in zip(keys, failed_anywhere) if f]
            where = f"at epoch {epoch}, step {step}" if here else f"at epoch {epoch} on another rank"
            raise NonFiniteLossError(
                f"{phase} loss component(s) {names} became non-finite {where}; last.pt and best.pt hold the run "
                "before this epoch (try a lower --lr, or --amp off)"
            )
        return {k: v / max(seen, 1) for k, v in zip(keys, sums)}


def _autocast(cfg: Config, device: torch.device):
    enabled = cfg.amp and device.type == "cuda"
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def teacher_outputs(cfg: Config, teacher: TeacherWrapper, raw: dict) -> dict:
    """What the method's objective reads of the teacher's ``raw`` outputs
    (:meth:`TeacherWrapper.teacher_forward`): logits, projected features (feature KD), and
    the teacher's own features (pair-wise KD)."""
    reads = methods.get(cfg.method).reads
    return {
        "out": raw["out"],
        "features": teacher.project(raw["features"]) if "features" in reads else [],
        "raw_features": raw["features"] if "raw_features" in reads else [],
    }


def _reads_features(cfg: Config) -> bool:
    return methods.get(cfg.method).reads_features


def _world(rt: Runtime | None) -> int:
    if rt is not None:
        return rt.world
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def train_step(
    cfg,
    student,
    teacher,
    optimizer,
    x,
    y,
    *,
    cached=None,
    kd_mask=None,
    rt: Runtime | None = None,
    objective=None,
    adapters=None,
) -> dict:
    """One optimisation step on a batch already on the device: the frozen teacher (online,
    or its ``cached`` logits), the student (and the method's ``adapters``), the method's
    objective (``objective``: bound once by the run; built from ``cfg`` when not given),
    backward, Adam. ``kd_mask``: the pixels the distillation terms see when they are not just
    the labelled ones (a batch with unlabeled images). Under torch.distributed the gradients of
    the projections and adapters are averaged over the ranks (``rt``, or the process group).
    Returns the loss components (detached, still on the device: reading them is the caller's
    choice)."""
    objective = objective or methods.objective(cfg)
    with _autocast(cfg, x.device):
        if cached is not None:
            teacher_out = {"out": cached, "features": [], "raw_features": []}
        elif teacher is not None:
            teacher_out = teacher_outputs(cfg, teacher, teacher.teacher_forward(x, _reads_features(cfg)))
        else:
            teacher_out = None
        student_out = with_adapted(student(x), adapters)
        loss, parts = objective(student_out, teacher_out, y, kd_mask)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    # DDP averages the student's gradients; the projections and adapters live outside it, so
    # they are averaged here
    world = _world(rt)
    if world > 1:
        for p in kd_parameters(objective.method, teacher, adapters):
            dist.all_reduce(p.grad)
            p.grad /= world
    optimizer.step()
    return parts


def with_unlabeled(labelled: tuple, unlabeled: tuple) -> tuple:
    """One batch of labeled and unlabeled images, ``(x, y, cached, kd_mask)``: the unlabeled
    images' targets are void (no cross entropy), and ``kd_mask`` opens all their pixels to
    the distillation terms (the labeled images keep their non-void pixels)."""
    (xl, yl, cl), (xu, yu, cu) = labelled, unlabeled
    x, y = torch.cat([xl, xu]), torch.cat([yl, torch.full_like(yu, VOID)])
    kd_mask = torch.cat([yl != VOID, torch.ones_like(yu, dtype=torch.bool)])
    cached = None if cl is None else torch.cat([cl, cu])
    return x, y, cached, kd_mask


def train_one_epoch(cfg: Config, parts: RunParts, rt: Runtime, epoch: int, progress) -> dict:
    """One epoch of ``parts.train_loader`` (each labelled batch joined by as many unlabeled
    images when the run has them): the loss components' means, the wall and CPU seconds of
    its steps (CPU time is this process's: runs side by side do not count each other's load),
    and the images per second."""
    parts.model.train()
    if parts.teacher is not None:
        parts.teacher.train()
    if parts.adapters is not None:
        parts.adapters.train()
    totals, start, cpu = LossTotals(rt.device), time.perf_counter(), time.process_time()
    extra = parts.unlabeled.epoch(epoch) if parts.unlabeled is not None else None
    for step, batch in enumerate(progress(_batches(parts.train_loader, cfg.max_batches), epoch)):
        x, y, cached = prepare_batch(batch, rt.device, cfg.channels_last)
        kd_mask = None
        if extra is not None:
            x, y, cached, kd_mask = with_unlabeled(
                (x, y, cached), prepare_batch(next(extra), rt.device, cfg.channels_last)
            )
        step_parts = train_step(
            cfg,
            parts.model,
            parts.teacher,
            parts.optimizer,
            x,
            y,
            cached=cached,
            kd_mask=kd_mask,
            rt=rt,
            objective=parts.objective,
            adapters=parts.adapters,
        )
        totals.add(step_parts, x.shape[0], step)
    means = totals.means(rt, epoch, "train")  # waits for the device once, then checks finiteness
    seconds = time.perf_counter() - start
    return {f"train_{k}": v for k, v in means.items()} | {
        "train_seconds": seconds,
        "train_cpu_seconds": time.process_time() - cpu,
        "train_images_per_s": totals.seen * rt.world / seconds if seconds > 0 else math.nan,
    }


class ValTeacherCache:
    """The frozen teacher's raw outputs on the validation split, kept in memory after the
    first epoch. Validation has no augmentation and the teacher never changes, so this is
    exact (the trainable projections are still applied every epoch). Disabled when the
    outputs would exceed ``limit_bytes`` (VOC at 224 px: tens of GB)."""

    def __init__(self, num_batches: int, limit_bytes: int = 1 << 30):
        self.num_batches, self.limit, self.batches, self.enabled = num_batches, limit_bytes, [], True

    def get(self, step):
        return self.batches[step] if self.enabled and step < len(self.batches) else None

    def put(self, step, raw):
        if not self.enabled or step != len(self.batches):
            return
        size = sum(t.numel() * t.element_size() for t in [raw["out"], *raw["features"]])
        if size * self.num_batches > self.limit:
            self.enabled, self.batches = False, []
            return
        self.batches.append(raw)


def validate(
    cfg,
    student,
    teacher,
    loader,
    rt,
    *,
    epoch=0,
    val_cache: ValTeacherCache | None = None,
    objective=None,
    adapters=None,
) -> dict:
    """Whole-split metrics (confusion matrix over every pixel, :func:`kdlib.evaluate.score`:
    the student alone) and every loss component of the method's objective (with its adapters)."""
    objective = objective or methods.objective(cfg)
    if teacher is not None:
        teacher.eval()
    if adapters is not None:
        adapters.eval()
    totals = LossTotals(rt.device)

    def losses_of(step, x, y, cached, student_out):
        teacher_out = {"out": cached, "features": [], "raw_features": []} if cached is not None else None
        if teacher is not None and cached is None:
            raw = val_cache.get(step) if val_cache is not None else None
            if raw is None:
                raw = teacher.teacher_forward(x, _reads_features(cfg))
                if val_cache is not None:
                    val_cache.put(step, raw)
            teacher_out = teacher_outputs(cfg, teacher, raw)
        totals.add(objective(with_adapted(student_out, adapters), teacher_out, y)[1], x.shape[0], step)

    result = score(student, loader, rt.device, cfg.channels_last, losses_of, lambda: _autocast(cfg, rt.device))
    means = totals.means(rt, epoch, "val")
    return {f"val_{k}": v for k, v in means.items()} | {
        "val_miou": result["miou"],
        "val_pixel_accuracy": result["pixel_accuracy"],
        "per_class_iou": result["per_class_iou"],
        "confusion_matrix": result["confusion_matrix"],
    }


def _progress_factory(cfg: Config, rt: Runtime, total: int):
    mode = cfg.progress
    if mode == "auto":
        mode = "bar" if sys.stderr.isatty() else "lines"
    if mode == "bar" and rt.main:
        from tqdm import tqdm

        return lambda it, epoch: tqdm(it, total=total, desc=f"epoch {epoch}", leave=False)
    return lambda it, epoch: it


def _log(cfg: Config, rt: Runtime, text: str) -> None:
    if rt.main and cfg.progress != "none":
        print(text, flush=True)


def teacher_weights_sha256(cfg: Config) -> str | None:
    """SHA-256 of the teacher's weights file a (resolved) config distils from; None without
    one (no KD, or torchvision's hub checkpoint found elsewhere). Saved in ``config.json`` so
    that a finished run trained with another teacher is recognised as stale."""
    if cfg.method == "none" or not cfg.teacher_weights or not Path(cfg.teacher_weights).is_file():
        return None
    return file_sha256(cfg.teacher_weights)


def data_fingerprints(cfg: Config, missing_ok: bool = False) -> dict[str, str]:
    """The fingerprint (:func:`kdlib.data.split_fingerprint`) of every split a run reads: train,
    val and the unlabeled split when it has one. Saved in ``config.json`` so that a finished run
    is not reused on other data with the same split sizes (another benchmark draw, an edited
    split list). ``missing_ok``: a split whose list or folder is missing is left out."""
    splits = {cfg.train_split: True, cfg.val_split: True}
    if cfg.unlabeled_split:
        splits[cfg.unlabeled_split] = False
    prints = {}
    for split, labelled in splits.items():
        try:
            prints[split] = split_fingerprint(cfg.dataset, cfg.data_root, split, labelled)
        except FileNotFoundError:
            if not missing_ok:
                raise
    return prints


def environment() -> dict:
    import torchvision

    return {
        "kdlib": __version__,
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "torchvision": str(torchvision.__version__),
        "platform": platform.platform(),
        "cpu_threads": torch.get_num_threads(),
        "cpu_kernels": cpu_kernels.in_force(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def _prepare_out(cfg: Config, rt: Runtime) -> Path:
    out = Path(cfg.out)
    if rt.main:
        if (out / "config.json").exists() and not (cfg.resume or cfg.overwrite):
            raise RunFolderError(
                f"{out} already holds a run; pass --resume to continue it or --overwrite to start over"
            )
        out.mkdir(parents=True, exist_ok=True)
        if cfg.overwrite and not cfg.resume:
            for name in ("last.pt", "best.pt", "history.csv", "metrics.json"):
                (out / name).unlink(missing_ok=True)
    return out


def history_keys() -> tuple[str, ...]:
    """The columns of history.csv: every registered loss term, train and val, beside the
    epoch's learning rate, mIoUs and timings (a method leaves the others' terms empty)."""
    terms = ("total", "ce", *methods.term_names())
    return (
        "epoch",
        "lr",
        *(f"train_{t}" for t in terms),
        *(f"val_{t}" for t in terms),
        "val_miou",
        "val_pixel_accuracy",
        "train_miou",
        "train_seconds",
        "train_cpu_seconds",
        "epoch_seconds",
        "train_images_per_s",
    )


def write_history(history: list[dict], path: Path) -> None:
    keys = history_keys()
    lines = [",".join(keys)]
    for row in history:
        lines.append(",".join("" if row.get(k) is None else f"{row[k]:.6g}" for k in keys))
    atomic_write_text("\n".join(lines) + "\n", path)


# --------------------------------------------------------------------------- a run


@dataclass
class RunParts:
    """Everything a run is built from, once, before its first epoch (:func:`build_run`)."""

    train_loader: DataLoader
    sampler: SeededSampler
    val_loader: DataLoader
    train_eval_loader: DataLoader | None  # the train split scored like val (train mIoU), or None
    unlabeled: UnlabeledBatches | None
    student: nn.Module
    model: nn.Module  # the student, wrapped in DistributedDataParallel under torchrun
    teacher: TeacherWrapper | None  # the online teacher; None without one or when its logits are cached
    teacher_source: str  # "online", "cached" (logits served with each sample) or "none"
    adapters: nn.Module | None  # the method's modules on the student's side (Method.adapters), or None
    objective: methods.Objective  # α / β / T bound once
    optimizer: torch.optim.Optimizer
    scheduler: object
    val_cache: ValTeacherCache | None
    run_config: dict  # what config.json records


@dataclass
class RunState:
    """Where a run stands after each epoch; saved in every checkpoint (as a plain dict)."""

    epoch: int = 0
    best_miou: float = -1.0
    best_epoch: int = 0
    bad_epochs: int = 0
    history: list = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    def done(self, cfg: Config) -> bool:
        return self.epoch >= cfg.epochs or self.early_stopped(cfg)

    def early_stopped(self, cfg: Config) -> bool:
        return self.bad_epochs >= cfg.early_stop

    def record(self, row: dict) -> bool:
        """Add an epoch's history row; whether its val mIoU is the best so far."""
        improved = row["val_miou"] > self.best_miou
        if improved:
            self.best_miou, self.best_epoch, self.bad_epochs = row["val_miou"], row["epoch"], 0
        else:
            self.bad_epochs += 1
        self.seconds += row["epoch_seconds"]
        self.history.append(row)
        self.epoch = row["epoch"]
        return improved


def fit(cfg: Config | dict | None = None, **overrides) -> dict:
    """Train one model by the report's recipe and return the run's ``metrics.json`` dict.

    ``fit(Config(...))``, ``fit({"method": "both", ...})`` or ``fit(method="both", ...)``.
    Builds the run's parts once (:func:`build_run`), resumes its state when asked, then trains
    epoch after epoch until the budget or early stopping ends it; :class:`RunWriter` writes
    every artifact.
    """
    cfg = _settings(cfg, overrides)
    rt = setup_runtime(cfg.device)
    with RunLock(cfg.out) if rt.main else contextlib.nullcontext():  # one writer per run folder
        out = _prepare_out(cfg, rt)
        seed_everything(cfg.seed)
        parts = build_run(cfg, rt)
        state = resume(cfg, rt, parts, out)
        writer = RunWriter(cfg, rt, out, parts)
        progress = _progress_factory(cfg, rt, len(parts.train_loader))
        while not state.done(cfg):
            row, val = run_epoch(cfg, rt, parts, state.epoch + 1, progress)
            improved = state.record(row)
            writer.epoch(state, val, improved)
            _log(cfg, rt, _epoch_line(cfg, row, improved))
        metrics = writer.finish(state)
        if rt.world > 1:
            dist.barrier()
        return metrics


def _settings(cfg, overrides) -> Config:
    """A Config from what ``fit`` was given, checked and resolved."""
    if cfg is None:
        cfg = Config()
    elif isinstance(cfg, dict):
        unknown = sorted(set(cfg) - {f.name for f in dataclasses.fields(Config)})
        if unknown:
            raise ValueError(f"unknown setting(s) {unknown}")
        cfg = Config(**cfg)
    cfg = dataclasses.replace(cfg, **overrides)
    cfg.validate()
    return cfg.resolved()


def build_run(cfg: Config, rt: Runtime) -> RunParts:
    """The data, loaders, student, teacher source, objective, optimizer and scheduler of a run,
    and the config.json it records. The order is that of the random draws (the student's
    weights, then the projections', then the adapters'), so a run is the same from one version
    to the next."""
    train_set, val_set = build_datasets(cfg)
    unlabeled_set = build_unlabeled(cfg)
    skipped = {"train": [i for i, _ in train_set.skipped], "val": [i for i, _ in val_set.skipped]}
    split_sizes = {cfg.train_split: len(train_set), cfg.val_split: len(val_set)}
    if unlabeled_set is not None:
        skipped["unlabeled"] = [i for i, _ in unlabeled_set.skipped]
        split_sizes[cfg.unlabeled_split] = len(unlabeled_set)
    train_eval_set = train_set.evaluation_view()
    student = build_model(cfg.model, NUM_CLASSES).to(rt.device)
    teacher = build_teacher(cfg, rt.device)
    adapters = build_adapters(methods.get(cfg.method), student, teacher, rt.device)
    source = "none" if teacher is None else "online"
    cache_cards = None
    if cfg.teacher_cache:  # offline KD on logits: the teacher runs once per image, then goes
        splits = [train_set, val_set] + ([unlabeled_set] if unlabeled_set is not None else [])
        served, cache_cards = attach_teacher_cache(cfg, rt, teacher, splits)
        train_set, val_set = served[:2]
        unlabeled_set = served[2] if unlabeled_set is not None else None
        teacher, source = None, "cached"
    train_batches, sampler = train_loader(cfg, rt, train_set)
    unlabeled = None
    if unlabeled_set is not None:
        per_epoch = len(train_batches) if cfg.max_batches is None else min(cfg.max_batches, len(train_batches))
        unlabeled = UnlabeledBatches(cfg, rt, unlabeled_set, per_epoch)
    val_loader = eval_loader(cfg, rt, val_set)
    if cfg.channels_last:
        student = student.to(memory_format=torch.channels_last)
        if teacher is not None:
            teacher = teacher.to(memory_format=torch.channels_last)
        if adapters is not None:
            adapters = adapters.to(memory_format=torch.channels_last)
    objective = methods.objective(cfg)
    params = list(student.parameters()) + kd_parameters(objective.method, teacher, adapters)
    optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    model = student
    if rt.world > 1:
        model = nn.parallel.DistributedDataParallel(
            student, device_ids=[rt.device.index] if rt.device.type == "cuda" else None
        )
    run_config = dataclasses.asdict(cfg) | {
        "skipped_samples": skipped,
        "num_classes": NUM_CLASSES,
        "split_sizes": split_sizes,
        "world_size": rt.world,
        "device_name": str(rt.device),
        "environment": environment(),
        "student_parameters": count_parameters(student),
        "teacher_sha256": teacher_weights_sha256(cfg),
        "data_fingerprints": data_fingerprints(cfg),
        "method_constants": objective.method.constants,
        "teacher_source": source,  # where the distillation targets came from
        "teacher_cache_cards": cache_cards,
    }
    return RunParts(
        train_loader=train_batches,
        sampler=sampler,
        val_loader=val_loader,
        # the same protocol as val (every rank its shard), so that train and val mIoU compare
        train_eval_loader=eval_loader(cfg, rt, train_eval_set) if cfg.train_miou else None,
        unlabeled=unlabeled,
        student=student,
        model=model,
        teacher=teacher,
        teacher_source=source,
        adapters=adapters,
        objective=objective,
        optimizer=optimizer,
        scheduler=_scheduler(cfg, optimizer),
        val_cache=ValTeacherCache(len(val_loader)) if teacher is not None else None,
        run_config=run_config,
    )


def _scheduler(cfg: Config, optimizer):
    """Table 1's ReduceLROnPlateau on val mIoU, or a cosine annealing to 0 at ``cfg.epochs``."""
    if cfg.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    return torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="max", factor=cfg.lr_factor, patience=cfg.lr_patience, threshold=0.0, min_lr=cfg.min_lr
    )


def resume(cfg: Config, rt: Runtime, parts: RunParts, out: Path) -> RunState:
    """A fresh state, or with ``--resume`` the one in ``last.pt``: weights, optimizer,
    scheduler and RNG state restored, so that the run goes on as if never stopped."""
    path = out / "last.pt"
    if not (cfg.resume and path.is_file()):
        return RunState()
    ckpt = load_checkpoint(path)
    load_weights(parts.student, ckpt["model"], path, f"{cfg.model!r} of this run")
    if parts.teacher is not None and ckpt.get("projections") is not None:
        load_weights(parts.teacher.projections, ckpt["projections"], path, "teacher projections")
    if parts.adapters is not None:  # checkpoints of methods without adapters have none (or no key)
        load_weights(parts.adapters, ckpt.get("adapters") or {}, path, f"adapters of {cfg.method!r}")
    parts.optimizer.load_state_dict(ckpt["optimizer"])
    parts.scheduler.load_state_dict(ckpt["scheduler"])
    set_rng_state(ckpt["rng"])
    state = RunState(**ckpt["state"])
    _log(cfg, rt, f"resumed {out} after epoch {state.epoch}")
    return state


def run_epoch(cfg: Config, rt: Runtime, parts: RunParts, epoch: int, progress) -> tuple[dict, dict]:
    """Train one epoch, validate, score the train split, step the scheduler: the epoch's
    history row and its validation result."""
    parts.sampler.set_epoch(epoch)
    t0 = time.perf_counter()
    train = train_one_epoch(cfg, parts, rt, epoch, progress)
    val = validate(
        cfg,
        parts.student,
        parts.teacher,
        parts.val_loader,
        rt,
        epoch=epoch,
        val_cache=parts.val_cache,
        objective=parts.objective,
        adapters=parts.adapters,
    )
    if parts.train_eval_loader is not None:
        val["train_miou"] = score(parts.student, parts.train_eval_loader, rt.device, cfg.channels_last)["miou"]
    lr = parts.optimizer.param_groups[0]["lr"]
    parts.scheduler.step() if cfg.lr_schedule == "cosine" else parts.scheduler.step(val["val_miou"])
    keys = history_keys()
    row = {"epoch": epoch, "lr": lr, **{k: v for k, v in (train | val).items() if k in keys}}
    return row | {"epoch_seconds": time.perf_counter() - t0}, val


class RunWriter:
    """Every artifact of a run folder, written atomically by the main process alone:
    ``config.json`` once; after each epoch ``last.pt``, ``history.csv`` and ``metrics.json``
    (the best epoch's metrics and the run's progress), and ``best.pt`` when the epoch is the
    best so far. ``metrics`` is the dict of the last metrics.json written (None before)."""

    def __init__(self, cfg: Config, rt: Runtime, out: Path, parts: RunParts):
        self.cfg, self.rt, self.out, self.parts = cfg, rt, out, parts
        self.metrics = None
        self._best = None  # the best epoch's part of metrics.json
        if cfg.resume and (out / "metrics.json").is_file():
            kept = json.loads((out / "metrics.json").read_text())
            self._best = {k: v for k, v in kept.items() if k not in ("epochs_run", "total_seconds", "early_stopped")}
        if rt.main:
            atomic_write_text(json.dumps(parts.run_config, indent=2) + "\n", out / "config.json")

    def _progress(self, state: RunState) -> dict:
        return self._best | {
            "epochs_run": state.epoch,
            "total_seconds": round(state.seconds, 3),
            "early_stopped": state.early_stopped(self.cfg),
        }

    def epoch(self, state: RunState, val: dict, improved: bool) -> None:
        if improved or self._best is None:
            self._best = _metrics(self.cfg, state, val, self.parts.student, self.parts.run_config["skipped_samples"])
        self.metrics = self._progress(state)
        if not self.rt.main:
            return
        parts = self.parts
        ckpt = {
            "model": parts.student.state_dict(),
            "projections": parts.teacher.projections.state_dict() if parts.teacher is not None else None,
            "adapters": parts.adapters.state_dict() if parts.adapters is not None else None,
            "optimizer": parts.optimizer.state_dict(),
            "scheduler": parts.scheduler.state_dict(),
            "state": dataclasses.asdict(state),
            "rng": rng_state(),
            "config": parts.run_config,
            "epoch": state.epoch,
        }
        # metrics.json last: a failed write of a checkpoint (a full disk) leaves the run as it
        # was after the epoch before, which a resume continues
        if improved:
            atomic_save(ckpt | {"val": _summary(val)}, self.out / "best.pt")
        atomic_save(ckpt, self.out / "last.pt")
        write_history(state.history, self.out / "history.csv")
        atomic_write_text(json.dumps(self.metrics, indent=2) + "\n", self.out / "metrics.json")

    def finish(self, state: RunState) -> dict:
        """The run's metrics. A run resumed with nothing left to train whose metrics.json lags its
        last.pt (killed between the two writes of its last epoch) has its progress brought up to
        date, so that it counts as finished; when that last epoch was also its best, metrics.json
        cannot be rebuilt (best.pt keeps no confusion matrix) and the run stays unfinished: the
        report lists it, and --overwrite trains it again."""
        same_best = self._best is not None and self._best.get("best_epoch") == state.best_epoch
        if self.metrics is None and same_best and self._on_disk().get("epochs_run", 0) < state.epoch:
            self.metrics = self._progress(state)
            if self.rt.main:
                write_history(state.history, self.out / "history.csv")
                atomic_write_text(json.dumps(self.metrics, indent=2) + "\n", self.out / "metrics.json")
        return self.metrics if self.metrics is not None else self._on_disk()

    def _on_disk(self) -> dict:
        path = self.out / "metrics.json"
        return json.loads(path.read_text()) if path.is_file() else {}


def _summary(val: dict) -> dict:
    return {k: v for k, v in val.items() if k != "confusion_matrix"}


def _metrics(cfg: Config, state: RunState, val: dict, student: nn.Module, skipped: dict) -> dict:
    return {
        "method": cfg.method,
        "model": cfg.model,
        "dataset": cfg.dataset,
        "seed": cfg.seed,
        "best_epoch": state.best_epoch,
        "best_miou": state.best_miou,
        "train_miou": val.get("train_miou"),  # the whole training split, at the best epoch
        "pixel_accuracy": val["val_pixel_accuracy"],
        "per_class_iou": val["per_class_iou"],
        "confusion_matrix": val["confusion_matrix"],
        "parameters": count_parameters(student),
        "skipped_samples": {k: len(v) for k, v in skipped.items()},
    }


def _epoch_line(cfg: Config, row: dict, improved: bool) -> str:
    mark = " *" if improved else ""
    return (
        f"[{cfg.method}] epoch {row['epoch']:3d}/{cfg.epochs} loss {row['train_total']:.4f} "
        f"val {row['val_total']:.4f} mIoU {row['val_miou']:.4f} lr {row['lr']:.1e} "
        f"{row['epoch_seconds']:.1f}s{mark}"
    )
