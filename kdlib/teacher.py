"""The embedded benchmark's teacher: trained from scratch with the project's own trainer
(``make teacher``), then shipped as an fp16 checkpoint with a JSON card.

It plays the part that torchvision's COCO-pretrained FCN-ResNet50 plays for VOC: a larger
torchvision segmentation network, trained on more data (``teacher_train``) than the students
ever see (``train``), then frozen.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path

import torch

from . import shapes
from .checkpoints import load_checkpoint, load_model
from .config import SHAPES_TEACHER, Config, resolve_device, resolve_image_size
from .files import atomic_save, atomic_write_text
from .train import fit

# A cosine schedule over a fixed number of epochs (see the card for the time it takes); batch 32
# and NCHW, the fastest layout for this network on a CPU. The students' colour jitter, and no
# flip or warp: 3,000 generated images are not overfitted in this budget, so geometric
# augmentation would only slow convergence, while the colour jitter makes the teacher's targets
# as good on the students' jittered images as on clean ones (the card records both).
TEACHER_RECIPE = {
    "model": "lraspp_resnet18",
    "method": "none",
    "train_split": "teacher_train",
    "epochs": 40,
    "batch_size": 32,
    "lr": 3e-3,
    "lr_schedule": "cosine",
    "augment": "color",
    "channels_last": False,
    "early_stop": 30,
    "train_miou": False,  # scoring 3,000 training images each epoch would cost a third of the time
}


def card_path(checkpoint: Path = SHAPES_TEACHER) -> Path:
    return Path(checkpoint).with_suffix(".json")


def read_card(checkpoint: Path = SHAPES_TEACHER) -> dict:
    path = card_path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the shipped teacher has no card (run `make teacher`)")
    return json.loads(path.read_text())


def export_teacher(best: Path, target: Path = SHAPES_TEACHER) -> Path:
    """Write ``best``'s weights as fp16 (model + the config needed to rebuild it)."""
    ckpt = load_checkpoint(best)
    slim = {
        "model": {k: v.half() if v.is_floating_point() else v for k, v in ckpt["model"].items()},
        "config": {"model": ckpt["config"]["model"], "num_classes": ckpt["config"]["num_classes"]},
    }
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_save(slim, target)
    return target


def train_shapes_teacher(
    data_root="data/shapes", out="runs/teacher", epochs=None, device="auto", target: Path = SHAPES_TEACHER
) -> dict:
    """Generate the default benchmark if needed, train the teacher, export and evaluate it."""
    from .evaluate import evaluate_augmented, evaluate_checkpoint

    root = shapes.generate(data_root)
    card_bench = json.loads((Path(root) / "benchmark.json").read_text())
    recipe = TEACHER_RECIPE | ({"epochs": epochs} if epochs else {})
    start = time.perf_counter()
    metrics = fit(Config(**recipe, dataset="shapes", data_root=str(root), out=str(out), device=device, overwrite=True))
    seconds = time.perf_counter() - start
    export_teacher(Path(out) / "best.pt", target)
    result = evaluate_checkpoint(target, dataset="shapes", data_root=str(root), split="val", device=device)
    model = load_model(target)
    augmented = {mode: evaluate_augmented(model, "shapes", root, "val", mode)["miou"] for mode in ("color", "table2")}
    card = {
        "architecture": "torchvision LRASPP head on a ResNet-18 backbone (IntermediateLayerGetter; low = layer1, "
        "high = layer4; output stride 4)",
        "model": recipe["model"],
        "parameters": result["parameters"],
        "weights_dtype": "float16",
        "benchmark": {k: card_bench[k] for k in ("name", "version", "seed", "size")}
        | {"splits": {k: card_bench["splits"][k] for k in (recipe["train_split"], "val")}},
        "recipe": recipe,
        "command": "python -m kdlib " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        if sys.argv[1:]
        else "make teacher",
        "device": str(resolve_device(device)),
        "cpu_threads": torch.get_num_threads(),
        "train_seconds": round(seconds, 1),
        "epochs_run": metrics["epochs_run"],
        "best_epoch": metrics["best_epoch"],
        "val_miou": round(result["miou"], 4),
        "val_pixel_accuracy": round(result["pixel_accuracy"], 4),
        # the same val images through the students' augmentation (fixed seeds): colour jitter
        # alone, and all of Table 2 (flip and warp too; exposed pixels are void)
        "val_miou_color_jitter": round(augmented["color"], 4),
        "val_miou_table2": round(augmented["table2"], 4),
        "val_per_class_iou": [round(v, 4) for v in result["per_class_iou"]],
    }
    atomic_write_text(json.dumps(card, indent=2) + "\n", card_path(target))
    print(json.dumps({k: card[k] for k in ("val_miou", "train_seconds", "epochs_run")}))
    return card


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
