"""Data: one reading path for PASCAL VOC 2012 and the embedded ``shapes`` benchmark.

Both live on disk in the VOC layout::

    <voc2012 folder>/
        JPEGImages/<id>.jpg
        SegmentationClass/<id>.png          palette PNG: class index per pixel, 255 = void
        ImageSets/Segmentation/<split>.txt  one <id> per line

and are read by :class:`SegmentationFolder`, resized with ``torchvision.transforms.v2``
(masks: nearest). Every sample is the same kind of item, a dict of the uint8 image, the uint8
mask and its augmentation parameters (Table 2's, drawn per sample, for a training split; the
identity for an evaluation split); :func:`kdlib.augment.prepare_batch` applies them to whole
batches on the device and normalises.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from .augment import IDENTITY, MODES, sample_params
from .conventions import MEAN, NUM_CLASSES, STD, VOC_CLASSES, VOID

DATASETS = ("voc", "shapes")
VOC_URL = "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar"


class DatasetNotFoundError(FileNotFoundError):
    """A data folder is missing or incomplete; the message shows the expected layout."""


def layout_help(root: Path, split: str, name: str) -> str:
    where = (
        f"Get VOC 2012 from {VOC_URL} (2 GB) and unpack it so that the folder above exists, "
        "or pass --download to let torchvision fetch it."
        if name == "voc"
        else f"Generate it with: python -m kdlib shapes --out {root}"
    )
    return (
        f"Expected the {name!r} data set in the VOC layout:\n"
        f"  {root}/JPEGImages/<id>.jpg\n"
        f"  {root}/SegmentationClass/<id>.png   (palette PNG, class index per pixel, 255 = void)\n"
        f"  {root}/ImageSets/Segmentation/{split}.txt\n{where}"
    )


def resolve_voc_root(root: str | os.PathLike) -> Path:
    """Accept the VOC2012 folder itself, its VOCdevkit parent, or the folder above that."""
    root = Path(root)
    for candidate in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (candidate / "JPEGImages").is_dir():
            return candidate
    return root / "VOCdevkit" / "VOC2012"


class DataError(ValueError):
    """A broken sample; the message names the file and what is wrong with it."""


class SegmentationFolder(Dataset):
    """The samples of a VOC-layout folder; the same code reads VOC and ``shapes``.

    ``mask_dir`` is ``SegmentationClass`` (VOC's own) or ``SegmentationClassAug`` (SBD's
    ``train_aug``). Images decode to uint8 tensors, masks from palette (or grayscale) PNGs to
    class indices. Every read checks the pair: a file that cannot be decoded, image and mask
    of different sizes, a colour (non-index) mask or labels outside 0..20 and 255 raise
    :class:`DataError` naming the file. With ``skip_bad=True`` the whole split is checked
    up front instead, broken pairs are left out with a warning, and ``self.skipped`` lists
    them (the trainer counts them in the run's metrics).

    ``augment`` (a mode of :mod:`kdlib.augment`) makes it a training split: each sample then
    carries its own random augmentation parameters (see :meth:`__getitem__`).

    ``mask_dir=None`` makes it a split of unlabeled images: no mask is read (none needs to
    exist) and every sample's mask is void, so that only the distillation terms learn from it.
    """

    def __init__(
        self,
        root,
        split,
        transforms=None,
        mask_dir="SegmentationClass",
        name="voc",
        skip_bad: bool = False,
        augment: str | None = None,
        image_size=None,
    ):
        self.root, self.split, self.transforms, self.name = Path(root), split, transforms, name
        self.augment = augment  # None (an evaluation split), or a mode of kdlib.augment
        self.image_size = image_size  # (H, W) the transforms resize to
        self._decoded = None  # pairs kept after their first read (see _resized)
        self.labelled = mask_dir is not None
        list_file = self.root / "ImageSets" / "Segmentation" / f"{split}.txt"
        needed = (self.root / "JPEGImages", list_file) + ((self.root / mask_dir,) if self.labelled else ())
        problems = [str(p) for p in needed if not p.exists()]
        if problems:
            raise DatasetNotFoundError(
                f"Data set folder incomplete: missing {', '.join(problems)}.\n" + layout_help(self.root, split, name)
            )
        self.ids = [line.strip() for line in list_file.read_text().splitlines() if line.strip()]
        if not self.ids:
            raise DatasetNotFoundError(f"{list_file} lists no image ids; the split is empty.")
        self.images = [self.root / "JPEGImages" / f"{i}.jpg" for i in self.ids]
        self.masks = [self.root / mask_dir / f"{i}.png" if self.labelled else None for i in self.ids]
        self.skipped: list[tuple[str, str]] = []
        missing = [
            (i, f"{p} is missing")
            for i, im, m in zip(self.ids, self.images, self.masks)
            for p in (im, m)
            if p is not None and not p.is_file()
        ]
        if missing and not skip_bad:
            shown = "\n  ".join(reason for _, reason in missing[:5])
            raise DataError(
                f"{len(missing)} file(s) of split {split!r} ({list_file}) are missing, e.g.:\n  {shown}\n"
                "Fix the folder, or pass --skip-bad to leave those samples out."
            )
        if skip_bad:
            self._drop_bad(missing)

    def _drop_bad(self, missing) -> None:
        import warnings

        bad = dict(missing)
        for index, sample_id in enumerate(self.ids):
            if sample_id in bad:
                continue
            try:
                self.read(index)
            except DataError as exc:
                bad[sample_id] = str(exc)
        if bad:
            keep = [i for i, sample_id in enumerate(self.ids) if sample_id not in bad]
            self.ids = [self.ids[i] for i in keep]
            self.images = [self.images[i] for i in keep]
            self.masks = [self.masks[i] for i in keep]
            self.skipped = sorted(bad.items())
            warnings.warn(
                f"skipped {len(bad)} broken sample(s) of {self.root}, e.g. {self.skipped[0][1]}", stacklevel=3
            )

    def __len__(self) -> int:
        return len(self.ids)

    def read(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The raw pair: uint8 image 3×H×W and uint8 mask H×W (class indices, 255 void)."""
        image_path, mask_path = self.images[index], self.masks[index]
        try:
            with Image.open(image_path) as jpeg:
                image = np.array(jpeg.convert("RGB"))
        except (OSError, SyntaxError, ValueError) as exc:
            raise DataError(f"{image_path}: cannot read the image ({exc})") from exc
        if mask_path is None:  # an unlabeled image: every pixel void
            void = torch.full(image.shape[:2], VOID, dtype=torch.uint8)
            return torch.from_numpy(image).permute(2, 0, 1).contiguous(), void
        try:
            with Image.open(mask_path) as png:
                mode = png.mode
                mask = np.array(png)
        except (OSError, SyntaxError, ValueError) as exc:
            raise DataError(f"{mask_path}: cannot read the mask ({exc})") from exc
        if mode not in ("P", "L"):
            raise DataError(
                f"{mask_path}: mask is a {mode} image; expected a palette (P) or grayscale (L) PNG "
                "whose pixel values are class indices (a colour-coded mask would be read as wrong labels)"
            )
        if mask.shape != image.shape[:2]:
            raise DataError(
                f"{image_path} is {image.shape[1]}×{image.shape[0]} but its mask {mask_path} is "
                f"{mask.shape[1]}×{mask.shape[0]}"
            )
        bad = np.unique(mask[(mask >= NUM_CLASSES) & (mask != VOID)])
        if bad.size:
            raise DataError(
                f"{mask_path}: label value(s) {bad[:8].tolist()} outside 0..{NUM_CLASSES - 1} and {VOID} (void)"
            )
        return torch.from_numpy(image).permute(2, 0, 1).contiguous(), torch.from_numpy(mask.astype(np.uint8))

    # decoded and resized pairs are kept (uint8) while the split fits: a training split's up to
    # this (it is read on every pass), an evaluation split's (read once an epoch) only while small,
    # e.g. the embedded benchmark's, so that VOC's val split is not held by every loader worker
    DECODED_CACHE_BYTES = 2 << 30
    EVAL_CACHE_BYTES = 64 << 20

    def _resized(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The uint8 pair at the model's size. A split keeps its pairs in memory after their
        first read when they fit its budget; a training split's evaluation view shares them."""
        cache = self._cache()
        if cache and cache[index] is not None:
            return cache[index]
        image, mask = self.read(index)
        if tuple(image.shape[-2:]) != tuple(self.image_size):
            pair = self.transforms(tv_tensors.Image(image), tv_tensors.Mask(mask))
            image, mask = (t.as_subclass(torch.Tensor) for t in pair)
        if cache:
            cache[index] = (image, mask)
        return image, mask

    def _cache(self) -> list:
        """The slots of the decoded pairs, one per sample; [] when the split exceeds its budget."""
        if self._decoded is None:
            h, w = self.image_size
            budget = self.DECODED_CACHE_BYTES if self.augment is not None else self.EVAL_CACHE_BYTES
            self._decoded = [None] * len(self) if len(self) * 4 * h * w <= budget else []
        return self._decoded

    def preload(self) -> bool:
        """Decode and resize every image now (DataLoader workers then inherit them instead of
        each decoding its own copy). False, having read nothing, when they would not fit the
        split's budget."""
        if not self._cache():
            return False
        for index in range(len(self)):
            self._resized(index)
        return True

    def __getitem__(self, key) -> dict:
        """``{"image": uint8 3×H×W, "mask": uint8 H×W, "params": float 15}`` at the model's size.

        ``params`` are the sample's augmentation (:func:`kdlib.augment.sample_params`) on a
        training split, the identity on an evaluation split. ``key`` is an index, or
        ``(index, seed)``: the parameters are then drawn from a generator seeded with ``seed``
        (from torch's global generator for a plain index), so a sample's augmentation depends
        on its seed only, never on workers or ranks."""
        index, seed = key if isinstance(key, tuple) else (key, None)
        image, mask = self._resized(index)
        if self.augment is None:
            params = IDENTITY.clone()
        else:
            generator = None if seed is None else torch.Generator().manual_seed(seed)
            params = sample_params(self.augment, *image.shape[-2:], generator)
        return {"image": image, "mask": mask, "params": params}

    def subset(self, n: int) -> SegmentationFolder:
        """The first ``n`` samples, as a data set of their own."""
        part = copy.copy(self)
        part.ids, part.images, part.masks, part._decoded = self.ids[:n], self.images[:n], self.masks[:n], None
        return part

    def evaluation_view(self) -> SegmentationFolder:
        """The same samples without augmentation (what a frozen teacher is run on once)."""
        view = copy.copy(self)
        view.augment = None
        return view


# --------------------------------------------------------------------------- transforms


AUGMENTATIONS = MODES  # table2 (the report's), geometric, color, none: see kdlib/augment.py


def resize_transforms(image_size: int = 224) -> v2.Compose:
    """Every split's transform: resized (nearest for the mask), still uint8. Augmentation and
    normalisation run batched on the device (:func:`kdlib.augment.prepare_batch`)."""
    return v2.Compose([v2.Resize((image_size, image_size), antialias=True)])


def denormalize(image: torch.Tensor) -> torch.Tensor:
    """Undo :func:`v2.Normalize` for display: float 3×H×W (or N×3×H×W) in [0, 1]."""
    mean = torch.tensor(MEAN, device=image.device).view(3, 1, 1)
    std = torch.tensor(STD, device=image.device).view(3, 1, 1)
    return (image * std + mean).clamp(0, 1)


# --------------------------------------------------------------------------- entry point


def build_dataset(
    name: str,
    root: str | os.PathLike,
    split: str,
    *,
    train: bool,
    image_size: int = 224,
    download: bool = False,
    augment: str = "table2",
    skip_bad: bool = False,
    labelled: bool = True,
) -> SegmentationFolder:
    """The one way to get a data set: ``name`` in ``voc | shapes``.

    ``train`` picks the training augmentation (``augment``: Table 2 by default), else resize
    only. For ``voc``, ``root`` may be the ``VOC2012`` folder or a folder above it; ``split``
    is ``train``, ``val``, ``trainval`` or ``train_aug`` (SBD's 10,582 images, read from
    ``SegmentationClassAug/`` next to ``SegmentationClass/`` when the user has it), or any
    list in ``ImageSets/Segmentation/``. Downloads only with ``download=True``.
    ``labelled=False`` reads the images of ``split`` only (e.g. a list of extra image ids
    without masks, such as SBD's): every mask is void.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {DATASETS}")
    if image_size % 32:
        raise ValueError(f"image_size must be a multiple of 32 (the student's stride), got {image_size}")
    if augment not in AUGMENTATIONS:
        raise ValueError(f"augment={augment!r}: choose one of {AUGMENTATIONS}")
    # training sets keep their decoded uint8 images in memory; evaluation sets are read each time
    transforms = resize_transforms(image_size)
    options = {"skip_bad": skip_bad, "augment": augment if train else None, "image_size": (image_size, image_size)}
    if name == "voc" and download and not (resolve_voc_root(root) / "JPEGImages").is_dir():
        from torchvision.datasets import VOCSegmentation

        VOCSegmentation(str(root), year="2012", image_set="trainval", download=True)
    folder, mask_dir = _layout(name, root, split, labelled)
    return SegmentationFolder(folder, split, transforms, mask_dir=mask_dir, name=name, **options)


def _layout(name: str, root, split: str, labelled: bool) -> tuple[Path, str | None]:
    """The VOC-layout folder of data set ``name`` and the folder of ``split``'s masks (None: no
    masks are read). VOC's ``root`` may be a folder above ``VOC2012``; SBD's ``train_aug``
    masks live in ``SegmentationClassAug/``."""
    if name == "shapes":
        return Path(root), "SegmentationClass" if labelled else None
    mask_dir = "SegmentationClassAug" if split == "train_aug" else "SegmentationClass"
    return resolve_voc_root(root), mask_dir if labelled else None


def split_fingerprint(name: str, root, split: str, labelled: bool = True) -> str:
    """What the images of ``split`` are, cheap to compute, recorded with every run so that a run
    is not reused on other data of the same size. For ``shapes`` every sample is a pure
    function of (generator version, seed, split, index) at the card's image size: the card's
    generator fields and a hash of the split's ids with each listed file's size (regenerating
    gives byte-identical files, so new modification times do not count). For any other folder
    (VOC): the number of ids and a hash of the ids with every listed image's and mask's size and
    modification time (a stat per file, no decoding; a file that is missing counts as such).
    Raises FileNotFoundError when the split's list does not exist, DataError when the shapes
    card cannot be read."""
    import hashlib
    import json

    folder, mask_dir = _layout(name, root, split, labelled)
    listed = (folder / "ImageSets" / "Segmentation" / f"{split}.txt").read_text()
    ids = [line.strip() for line in listed.splitlines() if line.strip()]
    id_hash = hashlib.sha256("\n".join(ids).encode()).hexdigest()[:12]
    card = folder / "benchmark.json"
    generated = name == "shapes" and card.is_file()
    files = hashlib.sha256()
    for i in ids:
        for path in (folder / "JPEGImages" / f"{i}.jpg", folder / mask_dir / f"{i}.png" if mask_dir else None):
            if path is None:
                continue
            try:
                st = path.stat()
                stamp = st.st_size if generated else f"{st.st_size} {st.st_mtime_ns}"
                files.update(f"{i} {path.suffix} {stamp}\n".encode())
            except FileNotFoundError:
                files.update(f"{i} {path.suffix} missing\n".encode())
    if generated:
        try:
            c = json.loads(card.read_text())
            generator = f"shapes v{c['version']} seed {c['seed']} {c['size']}px"
        except (ValueError, KeyError, TypeError) as exc:
            raise DataError(
                f"{card} is not a benchmark card ({exc!r}); generate the benchmark again: "
                f"python -m kdlib shapes --out {folder}"
            ) from exc
        return f"{generator}, {len(ids)} ids {id_hash} {files.hexdigest()[:8]}"
    return f"{len(ids)} ids {id_hash}, files {files.hexdigest()[:12]}"


def class_names(name: str) -> tuple[str, ...]:
    """The 21 class names of a data set, background first."""
    if name == "voc":
        return VOC_CLASSES
    from .shapes import CLASS_NAMES

    return CLASS_NAMES


def split_sizes(root) -> dict[str, int]:
    """Images per split list in a VOC-layout folder."""
    folder = Path(root)
    if not (folder / "ImageSets").is_dir():
        folder = resolve_voc_root(root)
    lists = sorted((folder / "ImageSets" / "Segmentation").glob("*.txt"))
    return {p.stem: len([line for line in p.read_text().splitlines() if line.strip()]) for p in lists}


def class_table(name: str):
    """The classes of a data set as a DataFrame (for ``shapes``: shape, texture, colour and
    the designed look-alikes of each class)."""
    import pandas as pd

    if name == "voc":
        return pd.DataFrame({"class": VOC_CLASSES})
    from .shapes import CLASSES, confusable_pairs

    twins = {c.index: [] for c in CLASSES}
    for a, b, kind in confusable_pairs():
        twins[a].append(f"{CLASSES[b].name} ({kind})")
        twins[b].append(f"{CLASSES[a].name} ({kind})")
    return pd.DataFrame(
        [
            {
                "class": c.name,
                "shape": c.shape,
                "texture": c.texture,
                "colour": c.colour,
                "look-alikes": ", ".join(twins[c.index]),
            }
            for c in CLASSES
        ]
    )
