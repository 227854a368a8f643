"""The report's training recipe (Table 1, Section 2) as one resumable, reproducible trainer.

Read top to bottom: the runtime and samplers, ``build_datasets`` and the loaders, ``build_teacher``,
``train_one_epoch``, ``evaluate``, ``fit``; the settings are :class:`kdlib.config.Config`, the
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

from . import __version__, methods
from .augment import prepare_batch
from .checkpoints import load_checkpoint, load_model, load_weights, rng_state, set_rng_state
from .config import Config, resolve_device
from .conventions import NUM_CLASSES, VOID
from .data import SegmentationFolder, build_dataset, split_fingerprint
from .evaluate import score
from .files import RunFolderError, RunLock, atomic_save, atomic_write_text, file_sha256
from .metrics import SegmentationMetrics
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


def _objective(cfg: Config, student_out, teacher_out, target, kd_mask=None):
    return methods.objective(cfg)(student_out, teacher_out, target, kd_mask)


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


def train_step(cfg, student, teacher, optimizer, x, y, cached=None, rt: Runtime | None = None, kd_mask=None) -> dict:
    """One optimisation step on a batch already on the device: the frozen teacher (online,
    or its ``cached`` logits), the student, the method's loss, backward, Adam. ``kd_mask``:
    the pixels the distillation terms see when they are not just the labelled ones (a batch
    with unlabeled images). Returns the loss components (detached, still on the device:
    reading them is the caller's choice)."""
    with _autocast(cfg, x.device):
        if cached is not None:
            teacher_out = {"out": cached, "features": [], "raw_features": []}
        elif teacher is not None:
            teacher_out = teacher_outputs(cfg, teacher, teacher.teacher_forward(x, _reads_features(cfg)))
        else:
            teacher_out = None
        student_out = student(x)
        loss, parts = _objective(cfg, student_out, teacher_out, y, kd_mask)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    # DDP averages the student's gradients; the projections live outside it, so they are averaged here
    if rt is not None and rt.world > 1 and methods.get(cfg.method).trains_projections:
        for p in teacher.projections.parameters():
            dist.all_reduce(p.grad)
            p.grad /= rt.world
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


def train_one_epoch(cfg, student, teacher, optimizer, loader, rt, epoch, progress, unlabeled=None) -> dict:
    student.train()
    if teacher is not None:
        teacher.train()
    totals, start = LossTotals(rt.device), time.perf_counter()
    extra = unlabeled.epoch(epoch) if unlabeled is not None else None
    for step, batch in enumerate(progress(_batches(loader, cfg.max_batches), epoch)):
        x, y, cached = prepare_batch(batch, rt.device, cfg.channels_last)
        kd_mask = None
        if extra is not None:
            x, y, cached, kd_mask = with_unlabeled(
                (x, y, cached), prepare_batch(next(extra), rt.device, cfg.channels_last)
            )
        totals.add(train_step(cfg, student, teacher, optimizer, x, y, cached, rt, kd_mask), x.shape[0], step)
    means = totals.means(rt, epoch, "train")  # waits for the device once, then checks finiteness
    seconds = time.perf_counter() - start
    return {f"train_{k}": v for k, v in means.items()} | {
        "train_seconds": seconds,
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


@torch.no_grad()
def evaluate(cfg, student, teacher, loader, rt, epoch=0, teacher_cache: ValTeacherCache | None = None) -> dict:
    """Whole-split metrics (confusion matrix over every pixel) and every loss component."""
    student.eval()
    if teacher is not None:
        teacher.eval()
    metrics = SegmentationMetrics(NUM_CLASSES, rt.device)
    totals = LossTotals(rt.device)
    for step, batch in enumerate(loader):
        x, y, cached = prepare_batch(batch, rt.device, cfg.channels_last)
        with _autocast(cfg, rt.device):
            teacher_out = {"out": cached, "features": [], "raw_features": []} if cached is not None else None
            if teacher is not None and cached is None:
                raw = teacher_cache.get(step) if teacher_cache is not None else None
                if raw is None:
                    raw = teacher.teacher_forward(x, _reads_features(cfg))
                    if teacher_cache is not None:
                        teacher_cache.put(step, raw)
                teacher_out = teacher_outputs(cfg, teacher, raw)
            student_out = student(x)
            _, parts = _objective(cfg, student_out, teacher_out, y)
        metrics.update(student_out["out"].float(), y)
        totals.add(parts, x.shape[0], step)
    means = totals.means(rt, epoch, "val")
    result = metrics.compute()
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


def data_fingerprints(cfg: Config) -> dict[str, str]:
    """The fingerprint (:func:`kdlib.data.split_fingerprint`) of every split a run reads: train,
    val and the unlabeled split when it has one. Saved in ``config.json`` so that a finished run
    is not reused on other data with the same split sizes (another benchmark draw, an edited
    split list)."""
    splits = {cfg.train_split: True, cfg.val_split: True}
    if cfg.unlabeled_split:
        splits[cfg.unlabeled_split] = False
    return {split: split_fingerprint(cfg.dataset, cfg.data_root, split, labelled) for split, labelled in splits.items()}


def environment() -> dict:
    import torchvision

    return {
        "kdlib": __version__,
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "torchvision": str(torchvision.__version__),
        "platform": platform.platform(),
        "cpu_threads": torch.get_num_threads(),
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
        "epoch_seconds",
        "train_images_per_s",
    )


def write_history(history: list[dict], path: Path) -> None:
    keys = history_keys()
    lines = [",".join(keys)]
    for row in history:
        lines.append(",".join("" if row.get(k) is None else f"{row[k]:.6g}" for k in keys))
    atomic_write_text("\n".join(lines) + "\n", path)


def fit(cfg: Config | dict | None = None, **overrides) -> dict:
    """Train one model by the report's recipe and return the run's ``metrics.json`` dict.

    ``fit(Config(...))``, ``fit({"method": "both", ...})`` or ``fit(method="both", ...)``.
    """
    if cfg is None:
        cfg = Config()
    elif isinstance(cfg, dict):
        unknown = sorted(set(cfg) - {f.name for f in dataclasses.fields(Config)})
        if unknown:
            raise ValueError(f"unknown setting(s) {unknown}")
        cfg = Config(**cfg)
    cfg = dataclasses.replace(cfg, **overrides)
    cfg.validate()
    cfg = cfg.resolved()
    rt = setup_runtime(cfg.device)
    with RunLock(cfg.out) if rt.main else contextlib.nullcontext():  # one writer per run folder
        return _fit(cfg, rt)


def _fit(cfg: Config, rt: Runtime) -> dict:
    out = _prepare_out(cfg, rt)
    seed_everything(cfg.seed)

    train_set, val_set = build_datasets(cfg)
    unlabeled_set = build_unlabeled(cfg)
    skipped = {"train": [i for i, _ in train_set.skipped], "val": [i for i, _ in val_set.skipped]}
    split_sizes = {cfg.train_split: len(train_set), cfg.val_split: len(val_set)}
    if unlabeled_set is not None:
        skipped["unlabeled"] = [i for i, _ in unlabeled_set.skipped]
        split_sizes[cfg.unlabeled_split] = len(unlabeled_set)
    train_eval_set = train_set.evaluation_view()  # the train split scored like val (train mIoU)
    student = build_model(cfg.model, NUM_CLASSES).to(rt.device)
    teacher = build_teacher(cfg, rt.device)
    cache_cards = None
    if cfg.teacher_cache:  # offline KD on logits: the teacher runs once per image, then goes
        splits = [train_set, val_set] + ([unlabeled_set] if unlabeled_set is not None else [])
        served, cache_cards = attach_teacher_cache(cfg, rt, teacher, splits)
        train_set, val_set = served[:2]
        unlabeled_set = served[2] if unlabeled_set is not None else None
        teacher = None
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
    params = list(student.parameters())
    if teacher is not None and methods.get(cfg.method).trains_projections:
        params += list(teacher.projections.parameters())
    optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.lr_schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    else:
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer,
            mode="max",
            factor=cfg.lr_factor,
            patience=cfg.lr_patience,
            threshold=0.0,
            min_lr=cfg.min_lr,
        )
    model = student
    if rt.world > 1:
        model = nn.parallel.DistributedDataParallel(
            student, device_ids=[rt.device.index] if rt.device.type == "cuda" else None
        )
    state = {"epoch": 0, "best_miou": -1.0, "best_epoch": 0, "bad_epochs": 0, "history": [], "seconds": 0.0}
    if cfg.resume and (out / "last.pt").is_file():
        ckpt = load_checkpoint(out / "last.pt")
        load_weights(student, ckpt["model"], out / "last.pt", f"{cfg.model!r} of this run")
        if teacher is not None and ckpt.get("projections") is not None:
            load_weights(teacher.projections, ckpt["projections"], out / "last.pt", "teacher projections")
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        state = ckpt["state"]
        set_rng_state(ckpt["rng"])
        _log(cfg, rt, f"resumed {out} after epoch {state['epoch']}")
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
        "teacher_cache_cards": cache_cards,
    }
    if rt.main:
        atomic_write_text(json.dumps(run_config, indent=2) + "\n", out / "config.json")

    # the same protocol as val (every rank its shard), so that train and val mIoU compare
    train_eval_loader = eval_loader(cfg, rt, train_eval_set) if cfg.train_miou else None
    progress = _progress_factory(cfg, rt, len(train_batches))
    val_cache = ValTeacherCache(len(val_loader)) if teacher is not None else None
    stop = state["bad_epochs"] >= cfg.early_stop
    while state["epoch"] < cfg.epochs and not stop:
        epoch = state["epoch"] + 1
        sampler.set_epoch(epoch)
        t0 = time.perf_counter()
        train = train_one_epoch(cfg, model, teacher, optimizer, train_batches, rt, epoch, progress, unlabeled)
        val = evaluate(cfg, student, teacher, val_loader, rt, epoch, val_cache)
        if train_eval_loader is not None:
            val["train_miou"] = score(student, train_eval_loader, rt.device, cfg.channels_last)["miou"]
        miou = val["val_miou"]
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step() if cfg.lr_schedule == "cosine" else scheduler.step(miou)
        improved = miou > state["best_miou"]
        if improved:
            state.update(best_miou=miou, best_epoch=epoch, bad_epochs=0)
        else:
            state["bad_epochs"] += 1
        seconds = time.perf_counter() - t0
        state["seconds"] += seconds
        row = {
            "epoch": epoch,
            "lr": lr,
            **{k: v for k, v in (train | val).items() if k in history_keys()},
            "epoch_seconds": seconds,
        }
        state["history"].append(row)
        state["epoch"] = epoch
        stop = state["bad_epochs"] >= cfg.early_stop
        if rt.main:
            ckpt = {
                "model": student.state_dict(),
                "projections": teacher.projections.state_dict() if teacher is not None else None,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "state": state,
                "rng": rng_state(),
                "config": run_config,
                "epoch": epoch,
            }
            if improved:
                atomic_save(ckpt | {"val": _summary(val)}, out / "best.pt")
                atomic_write_text(
                    json.dumps(_metrics(cfg, state, val, student, run_config["skipped_samples"]), indent=2) + "\n",
                    out / "metrics.json",
                )
            atomic_save(ckpt, out / "last.pt")
            write_history(state["history"], out / "history.csv")
            _update_metrics_progress(out / "metrics.json", state, cfg)
        _log(cfg, rt, _epoch_line(cfg, epoch, row, improved))
    if rt.world > 1:
        dist.barrier()
    return json.loads((out / "metrics.json").read_text())


def _summary(val: dict) -> dict:
    return {k: v for k, v in val.items() if k != "confusion_matrix"}


def _metrics(cfg: Config, state: dict, val: dict, student: nn.Module, skipped: dict) -> dict:
    return {
        "method": cfg.method,
        "model": cfg.model,
        "dataset": cfg.dataset,
        "seed": cfg.seed,
        "best_epoch": state["best_epoch"],
        "best_miou": state["best_miou"],
        "train_miou": val.get("train_miou"),  # the whole training split, at the best epoch
        "pixel_accuracy": val["val_pixel_accuracy"],
        "per_class_iou": val["per_class_iou"],
        "confusion_matrix": val["confusion_matrix"],
        "parameters": count_parameters(student),
        "skipped_samples": {k: len(v) for k, v in skipped.items()},
    }


def _update_metrics_progress(path: Path, state: dict, cfg: Config) -> None:
    """Keep ``epochs_run``, ``total_seconds`` and ``early_stopped`` current in metrics.json."""
    metrics = json.loads(path.read_text())
    metrics.update(
        epochs_run=state["epoch"],
        total_seconds=round(state["seconds"], 3),
        early_stopped=state["bad_epochs"] >= cfg.early_stop,
    )
    atomic_write_text(json.dumps(metrics, indent=2) + "\n", path)


def _epoch_line(cfg: Config, epoch: int, row: dict, improved: bool) -> str:
    mark = " *" if improved else ""
    return (
        f"[{cfg.method}] epoch {epoch:3d}/{cfg.epochs} loss {row['train_total']:.4f} "
        f"val {row['val_total']:.4f} mIoU {row['val_miou']:.4f} lr {row['lr']:.1e} "
        f"{row['epoch_seconds']:.1f}s{mark}"
    )
