"""Evaluation of a checkpoint (student or teacher) on a whole split, and its predictions."""

from __future__ import annotations

import contextlib
import math

import numpy as np
import torch
from torch.utils.data import DataLoader

from .augment import prepare_batch
from .checkpoints import load_model
from .config import Config, resolve_device, resolve_image_size
from .conventions import NUM_CLASSES
from .data import build_dataset, class_names
from .metrics import SegmentationMetrics
from .models import count_parameters


@torch.no_grad()
def predict(model, dataset, device="cpu", batch_size: int = 16, keep_logits: bool = False):
    """Run ``model`` over ``dataset`` in order: (predictions N×H×W uint8, targets N×H×W uint8,
    softmax probabilities N×C×H×W float16 or None)."""
    device = resolve_device(str(device))
    model = model.to(device).eval()
    preds, targets, probs = [], [], []
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        x, y, _ = prepare_batch(batch, device, channels_last=True)
        logits = model(x)["out"].float()
        preds.append(logits.argmax(1).to(torch.uint8).cpu())
        targets.append(y.to(torch.uint8).cpu())
        if keep_logits:
            probs.append(logits.softmax(1).half().cpu())
    return (
        torch.cat(preds).numpy(),
        torch.cat(targets).numpy(),
        torch.cat(probs).numpy() if keep_logits else None,
    )


def evaluate_model(model, dataset, device="cpu", batch_size: int = 16) -> dict:
    device = resolve_device(str(device))
    return score(model.to(device), DataLoader(dataset, batch_size=batch_size, shuffle=False), device)


@torch.no_grad()
def score(model, loader, device, channels_last: bool = True, each_batch=None, autocast=contextlib.nullcontext) -> dict:
    """mIoU, pixel accuracy and per-class IoU of ``model`` (in eval mode) over a loader's
    batches (each augmented by its samples' parameters: the identity for an evaluation split),
    from one confusion matrix; under torch.distributed every rank must call it with its shard
    (torchmetrics sums the matrix across ranks). The one evaluation loop of kdlib: the trainer
    adds its loss terms through ``each_batch(step, x, y, cached, outputs)``, called for every
    batch under ``autocast()`` with the model's outputs."""
    model.eval()
    metrics = SegmentationMetrics(NUM_CLASSES, device)
    for step, batch in enumerate(loader):
        x, y, cached = prepare_batch(batch, device, channels_last)
        with autocast():
            out = model(x)
            if each_batch is not None:
                each_batch(step, x, y, cached, out)
        metrics.update(out["out"].float(), y)
    return metrics.compute()


class _SeededAugmented(torch.utils.data.Dataset):
    """A training-mode data set read with fixed augmentation seeds (sample i: seed + i)."""

    def __init__(self, dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        return self.dataset[(index, self.seed + index)]


def evaluate_augmented(
    model,
    dataset: str,
    root,
    split: str = "val",
    augment: str = "color",
    image_size: int | None = None,
    device="cpu",
    seed: int = 0,
) -> dict:
    """Metrics of ``model`` on ``split`` passed through the students' training augmentation
    (``augment``: one of :data:`kdlib.augment.MODES`; each image's parameters from a fixed
    seed). Next to :func:`evaluate_model` on the clean split it says whether an augmentation
    preserves the labels, and how good a teacher's targets are on augmented batches."""
    size = image_size or Config(dataset=dataset, data_root=str(root)).resolved().image_size
    data = build_dataset(dataset, root, split, train=True, image_size=size, augment=augment)
    return evaluate_model(model, _SeededAugmented(data, seed), device)


def evaluate_checkpoint(
    checkpoint=None,
    *,
    dataset: str = "shapes",
    data_root: str = "data/shapes",
    split: str = "val",
    image_size: int | None = None,
    device: str = "auto",
    batch_size: int = 16,
    teacher: str | None = None,
    teacher_weights: str | None = None,
) -> dict:
    """Metrics of a kdlib checkpoint, or of torchvision's FCN-ResNet50 (``teacher=...``)."""
    if teacher == "fcn_resnet50":
        from .models import fcn_resnet50_teacher

        model, name = fcn_resnet50_teacher(teacher_weights), "fcn_resnet50"
    elif checkpoint is None:
        raise ValueError("give --checkpoint PATH, or --teacher fcn_resnet50")
    else:
        model = load_model(checkpoint)
        name = str(checkpoint)
    size = image_size or Config(dataset=dataset, data_root=data_root).resolved().image_size
    data = build_dataset(dataset, data_root, split, train=False, image_size=size)
    result = evaluate_model(model, data, device, batch_size)
    result.pop("confusion_matrix")
    return {
        "model": name,
        "dataset": dataset,
        "split": split,
        "images": len(data),
        "image_size": size,
        "parameters": count_parameters(model),
        "class_names": list(class_names(dataset)),
        **result,
    }


def format_table(result: dict) -> str:
    lines = [
        f"{result['model']} on {result['dataset']}/{result['split']} "
        f"({result['images']} images, {result['image_size']}px, {result['parameters']:,} parameters)",
        f"{'class':<28}{'IoU':>8}",
    ]
    for name, iou in zip(result["class_names"], result["per_class_iou"]):
        lines.append(f"{name:<28}{'—' if math.isnan(iou) else f'{iou:.4f}':>8}")
    lines += [f"{'mIoU':<28}{result['miou']:>8.4f}", f"{'pixel accuracy':<28}{result['pixel_accuracy']:>8.4f}"]
    return "\n".join(lines)


def confusion_from_predictions(pred: np.ndarray, target: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """C×C counts (rows ground truth, columns prediction) over non-void pixels."""
    valid = target < num_classes
    idx = target[valid].astype(np.int64) * num_classes + pred[valid].astype(np.int64)
    return np.bincount(idx, minlength=num_classes**2).reshape(num_classes, num_classes)


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
