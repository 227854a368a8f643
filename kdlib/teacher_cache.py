"""Offline response distillation: the frozen teacher's logits, computed once per image.

Online distillation runs the frozen teacher on every training image in every epoch, although
its output on an image never changes; for FCN-ResNet50 that pass costs ~50 student forward
passes. ``--teacher-cache DIR`` runs it once per image instead and stores, per split:

    DIR/<dataset>-<split>-<image size>.f16    N × C × h × w float16 logits, memory-mapped
    DIR/<dataset>-<split>-<image size>.json   what they were computed from (the cache's key)

The logits are kept at the teacher's own output stride (image size / 8 for FCN-ResNet50:
21 × 28 × 28 × 2 B = 33 kB per VOC image at 224 px; / 4 for the ``shapes`` LR-ASPP: 10.8 kB)
and, at training time, upsampled like the teacher does it and warped by the *same* flip and
affine as the image and mask (:func:`kdlib.augment.augment_batch`). Colour jitter changes the
student's input but not the cached target; that is the one difference to online distillation,
and the accuracy study in the report measures what it costs.

The key holds the teacher's weights (a hash), the data (split ids, file sizes and
modification times), the image size and the format; a cache whose key differs is rebuilt,
with a message saying why, never used.

Why feature KD stays online: its targets are four feature maps per image (FCN-ResNet50 at
224 px: 256×56² + 512×28² + 1024×28² + 2048×28² values, 7.2 MB per image in fp16, 10.6 GB for
VOC's 1,464 training images; :func:`feature_bytes_per_image` measures it for any teacher),
and warping a stride-32 map by a few degrees is a poor stand-in for the teacher's features of
the warped image. The projections also train, so only the frozen part could be cached anyway.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from .augment import prepare_batch
from .files import atomic_write_text, waiting_lock

FORMAT_VERSION = 1


def state_dict_sha256(teacher) -> str:
    """SHA-256 of the frozen teacher's architecture and weights (its state dict, in order)."""
    digest = hashlib.sha256(type(teacher.model).__name__.encode())
    for name, tensor in teacher.model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def data_fingerprint(dataset) -> dict:
    """The samples a split holds and the state of their files (size, modification time)."""
    ids = hashlib.sha256("\n".join(dataset.ids).encode()).hexdigest()
    files = hashlib.sha256()
    for path in (*dataset.images, *(m for m in dataset.masks if m is not None)):  # None: an unlabeled split
        stat = os.stat(path)
        files.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return {
        "root": str(Path(dataset.root).resolve()),
        "split": dataset.split,
        "samples": len(dataset.ids),
        "ids_sha256": ids,
        "files_sha256": files.hexdigest(),
    }


class TeacherMaps:
    """``maps[i]``: sample i's cached logits (C×h×w float16 tensor). The memory map opens
    lazily, so the object pickles cheaply into DataLoader workers."""

    def __init__(self, path: Path, shape: tuple[int, ...]):
        self.path, self.shape, self._array = Path(path), tuple(shape), None

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: int) -> torch.Tensor:
        if self._array is None:
            self._array = np.memmap(self.path, dtype=np.float16, mode="r", shape=self.shape)
        return torch.from_numpy(np.array(self._array[index]))

    def __getstate__(self):
        return {"path": self.path, "shape": self.shape, "_array": None}

    @property
    def bytes_per_image(self) -> int:
        return int(np.prod(self.shape[1:])) * 2


class WithTeacherMaps(torch.utils.data.Dataset):
    """A data set's samples, each with its cached teacher logits added as ``"teacher"``
    (:func:`kdlib.augment.prepare_batch` warps them with the sample's own flip and affine).
    Keys pass through unchanged, ``(index, seed)`` included."""

    def __init__(self, dataset, maps: TeacherMaps):
        if len(maps) != len(dataset):
            raise ValueError(f"teacher maps hold {len(maps)} samples, the {dataset.split!r} split {len(dataset)}")
        self.dataset, self.maps = dataset, maps

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key) -> dict:
        index = key[0] if isinstance(key, tuple) else key
        return self.dataset[key] | {"teacher": self.maps[index].float()}


def cache_paths(folder, dataset, image_size: int) -> tuple[Path, Path]:
    stem = f"{dataset.name}-{dataset.split}-{image_size}"
    return Path(folder) / f"{stem}.f16", Path(folder) / f"{stem}.json"


def cache_key(teacher, dataset, image_size: int) -> dict:
    return {
        "format": FORMAT_VERSION,
        "teacher_sha256": state_dict_sha256(teacher),
        "image_size": image_size,
        "data": data_fingerprint(dataset),
    }


def _stale_reason(card_path: Path, data_path: Path, key: dict) -> str | None:
    if not card_path.is_file() or not data_path.is_file():
        return "no cache yet"
    try:
        card = json.loads(card_path.read_text())
    except (OSError, ValueError):
        return f"{card_path} is unreadable"
    old = card.get("key", {})
    changed = [k for k in key if old.get(k) != key[k]]
    if "data" in changed:
        changed.remove("data")
        changed += [f"data.{k}" for k in key["data"] if old.get("data", {}).get(k) != key["data"][k]]
    if changed:
        names = {"teacher_sha256": "the teacher's weights", "image_size": "the image size", "format": "the format"}
        return "stale: " + ", ".join(names.get(k, k) for k in changed) + " changed"
    if data_path.stat().st_size != int(np.prod(card["shape"])) * 2:
        return f"{data_path} is incomplete"
    return None


def ensure_cache(
    teacher, dataset, folder, image_size: int, *, device="cpu", batch_size: int = 16, log=print
) -> tuple[TeacherMaps, dict]:
    """The cached teacher logits of ``dataset`` (a :class:`kdlib.data.SegmentationFolder`),
    built or rebuilt when missing or stale. Returns the maps and the cache's card."""
    data_path, card_path = cache_paths(folder, dataset, image_size)
    key = cache_key(teacher, dataset, image_size)
    with waiting_lock(data_path.with_name(f".{data_path.name}.lock")):  # runs started together build it once
        return _ensure(teacher, dataset, data_path, card_path, key, device, batch_size, log)


def _ensure(teacher, dataset, data_path, card_path, key, device, batch_size, log):
    reason = _stale_reason(card_path, data_path, key)
    if reason is None:
        card = json.loads(card_path.read_text())
        return TeacherMaps(data_path, card["shape"]), card | {"built": False}
    log(f"teacher cache {data_path}: building ({reason})")
    card = build_cache(teacher, dataset, data_path, device=device, batch_size=batch_size)
    card["key"] = key
    atomic_write_text(json.dumps(card, indent=2) + "\n", card_path)
    log(
        f"teacher cache {data_path}: {card['samples']} images, {card['bytes_per_image']} B each, {card['seconds']:.1f}s"
    )
    return TeacherMaps(data_path, card["shape"]), card | {"built": True}


@torch.no_grad()
def build_cache(teacher, dataset, data_path: Path, *, device="cpu", batch_size: int = 16) -> dict:
    """Run the teacher once over the un-augmented split and write its native-stride logits as
    float16 into ``data_path`` (temporary file, then rename)."""
    start = time.perf_counter()
    plain = dataset.evaluation_view()
    loader = torch.utils.data.DataLoader(plain, batch_size=batch_size, shuffle=False)
    teacher = teacher.to(device).eval()
    data_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = data_path.with_name(f".{data_path.name}.{os.getpid()}.tmp")
    array, offset = None, 0
    try:
        for batch in loader:
            image, _, _ = prepare_batch(batch, device)
            logits = teacher.native_logits(image).float().cpu()
            if array is None:
                shape = (len(plain), *logits.shape[1:])
                array = np.memmap(tmp, dtype=np.float16, mode="w+", shape=shape)
            array[offset : offset + len(logits)] = logits.numpy().astype(np.float16)
            offset += len(logits)
        array.flush()
        del array
        os.replace(tmp, data_path)
    finally:
        tmp.unlink(missing_ok=True)
    return {
        "shape": list(shape),
        "samples": shape[0],
        "bytes_per_image": int(np.prod(shape[1:])) * 2,
        "seconds": round(time.perf_counter() - start, 3),
        "device": str(device),
    }


@torch.no_grad()
def feature_bytes_per_image(teacher, image_size: int) -> int:
    """What caching the four distilled feature maps would take per image, in float16."""
    x = torch.zeros(1, 3, image_size, image_size, device=next(teacher.model.parameters()).device)
    return sum(f[0].numel() * 2 for f in teacher.teacher_forward(x, with_features=True)["features"])
