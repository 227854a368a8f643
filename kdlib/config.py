"""Every setting of a run (:class:`Config`, defaults from the report's Table 1), the one
place settings are checked and the data-set-dependent defaults filled in, and the device
resolver every entry point uses."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from . import methods
from .data import AUGMENTATIONS, DATASETS
from .losses import PAIRWISE_GRID
from .models import ARCHITECTURES

PACKAGE_DIR = Path(__file__).resolve().parent
SHAPES_TEACHER = PACKAGE_DIR / "teachers" / "shapes_lraspp_resnet18.pt"

# The settings that take one of a few values: checked by Config.validate, offered by the CLI
# (`method`: the registered methods, kdlib.methods, read when asked so a registered one counts).
CHOICES = {
    "dataset": DATASETS,
    "model": ARCHITECTURES,
    "teacher": ("fcn_resnet50", "lraspp_resnet18"),
    "augment": AUGMENTATIONS,
    "lr_schedule": ("plateau", "cosine"),
    "progress": ("auto", "bar", "lines", "none"),
}


@dataclass
class Config:
    """Every setting of a run. Defaults are the report's Table 1; ``None`` means "resolved
    from the data set" (224 px and the FCN-ResNet50 teacher for VOC; the benchmark's own size
    and the shipped teacher for ``shapes``). The resolved config is saved with every run."""

    method: str = "none"  # a registered method (kdlib.methods): none, feature, response, both, pairwise, cwd, dist
    dataset: str = "shapes"  # voc | shapes
    data_root: str = "data/shapes"
    out: str | None = None  # the run folder; None: runs/<method>
    model: str = "student"  # the trained network: student, or a teacher architecture
    train_split: str = "train"
    val_split: str = "val"
    image_size: int | None = None
    augment: str = "table2"  # table2 (the report's) | geometric | color | none (kdlib/augment.py)
    epochs: int = 300
    train_repeats: int = 1  # passes over the training split per epoch (a small split's epoch is short)
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    lr_schedule: str = "plateau"  # plateau (the report's) | cosine (per epoch, to 0 at `epochs`)
    lr_factor: float = 0.2  # ReduceLROnPlateau on val mIoU
    lr_patience: int = 10
    min_lr: float = 1e-7
    early_stop: int = 30  # epochs without a better val mIoU
    # None: the method's own default (its declaration in kdlib.methods: Table 1 for the report's
    # methods, the papers' for pairwise, cwd and dist)
    temperature: float | None = None
    alpha: float | None = None
    beta: float | None = None
    scale_by_t2: bool = False
    pairwise_grid: int = PAIRWISE_GRID  # nodes per side of the pair-wise affinity (method pairwise)
    unlabeled_split: str | None = None  # images without masks: only the distillation terms see them
    teacher: str | None = None  # fcn_resnet50 | lraspp_resnet18
    teacher_weights: str | None = None
    teacher_cache: str | None = None  # folder of cached teacher logits (response KD offline)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    workers: int | None = None  # DataLoader workers; None: default_workers() of this machine
    amp: bool = False  # bf16 autocast on CUDA
    channels_last: bool = True
    max_batches: int | None = None  # cap batches per epoch (smoke runs)
    progress: str = "auto"  # auto | bar | lines | none
    resume: bool = False
    overwrite: bool = False
    download: bool = False
    skip_bad: bool = False  # leave broken samples out (counted in metrics.json) instead of failing
    train_miou: bool = True  # also score the whole training split (eval mode, unaugmented) each epoch

    def validate(self) -> None:
        """Refuse bad settings before any work starts; each message names the setting."""
        problems = [
            f"{name}={getattr(self, name)!r}: choose one of {', '.join(allowed)}"
            for name, allowed in choices().items()
            if getattr(self, name) not in allowed and not (name == "teacher" and self.teacher is None)
        ]
        if self.method not in methods.METHODS:  # the checks below read the method's declaration
            raise ValueError("invalid settings:\n  " + "\n  ".join(problems))
        method = methods.get(self.method)
        if self.model != "student" and method.needs_teacher:
            problems.append(f"model={self.model!r} trains only with method='none'")
        if self.temperature is not None and self.temperature <= 0:
            problems.append(f"temperature={self.temperature}: must be > 0")
        for name in ("alpha", "beta"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                problems.append(f"{name}={getattr(self, name)}: must be >= 0")
        if self.pairwise_grid < 1:
            problems.append(f"pairwise_grid={self.pairwise_grid}: must be >= 1")
        if self.unlabeled_split and not method.needs_teacher:
            problems.append(
                f"unlabeled_split={self.unlabeled_split!r} needs a KD method (got {self.method!r}): "
                "only the distillation terms can learn from images without masks"
            )
        if self.unlabeled_split and self.unlabeled_split in (self.train_split, self.val_split):
            problems.append(f"unlabeled_split={self.unlabeled_split!r} is also the train or val split")
        if self.image_size is not None and (self.image_size <= 0 or self.image_size % 32):
            problems.append(f"image_size={self.image_size}: must be a positive multiple of 32")
        if self.batch_size < 1:
            problems.append(f"batch_size={self.batch_size}: must be >= 1")
        if self.train_repeats < 1:
            problems.append(f"train_repeats={self.train_repeats}: must be >= 1")
        if self.epochs < 1:
            problems.append(f"epochs={self.epochs}: must be >= 1")
        if self.lr <= 0:
            problems.append(f"lr={self.lr}: must be > 0")
        if self.max_batches is not None and self.max_batches < 1:
            problems.append(f"max_batches={self.max_batches}: must be >= 1")
        if self.workers is not None and self.workers < 0:
            problems.append(f"workers={self.workers}: must be >= 0")
        if self.teacher_cache and not method.cacheable:
            cacheable = ", ".join(n for n, m in methods.METHODS.items() if m.cacheable)
            problems.append(
                f"teacher_cache={self.teacher_cache!r} serves the methods that read the teacher's logits only "
                f"({cacheable}; got {self.method!r}): feature methods need the teacher's features of "
                "every augmented image, see kdlib/teacher_cache.py"
            )
        if problems:
            raise ValueError("invalid settings:\n  " + "\n  ".join(problems))

    def resolved(self) -> Config:
        """A copy with the data-set-dependent defaults filled in."""
        cfg = dataclasses.replace(self)
        kd = methods.get(cfg.method).needs_teacher
        for name, value in methods.get(cfg.method).defaults.items():
            if getattr(cfg, name) is None:
                setattr(cfg, name, value)
        if cfg.out is None:
            cfg.out = f"runs/{cfg.method}"
        if cfg.workers is None:
            cfg.workers = default_workers()
        if cfg.image_size is None:
            cfg.image_size = 224 if cfg.dataset == "voc" else _shapes_size(cfg.data_root)
        if cfg.teacher is None and kd:
            cfg.teacher = "fcn_resnet50" if cfg.dataset == "voc" else "lraspp_resnet18"
        if cfg.teacher == "lraspp_resnet18" and cfg.teacher_weights is None and kd:
            cfg.teacher_weights = str(SHAPES_TEACHER)
        return cfg


def choices() -> dict[str, tuple[str, ...]]:
    """Every setting that takes one of a few values, with those values (methods as registered now)."""
    return {"method": methods.names(), **CHOICES}


def default_workers() -> int:
    """DataLoader workers that help rather than compete: none on a machine with 2 cores or
    fewer (measured by ``make bench``: a worker there takes a core from the training step's
    threads, and the batched augmentation leaves workers little to do), else up to 4 while
    leaving 2 cores to the main process."""
    return max(0, min(4, cpu_cores() - 2))


def cpu_cores() -> int:
    """The CPU cores this process may run on (its affinity, where the OS tells it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _shapes_size(root: str) -> int:
    card = Path(root) / "benchmark.json"
    return json.loads(card.read_text())["size"] if card.is_file() else 64


def resolve_device(device: str) -> torch.device:
    """``auto`` is the first GPU when there is one, else the CPU; anything else as given."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_image_size(dataset: str, data_root, image_size=None) -> int:
    return image_size or Config(dataset=dataset, data_root=str(data_root)).resolved().image_size
