"""``shapes``: an embedded, procedural, VOC-like segmentation benchmark that runs anywhere.

Twenty object classes plus background. Each class is a (shape, texture, colour family)
triple, and each of the 4 × 5 (colour, texture) pairs belongs to exactly one class, laid out
so that a teacher's soft labels carry real inter-class similarity: every shape has a base
class, a *colour* twin (same shape and texture, another colour family), a *texture* twin
(same shape and colour, another texture) and a fourth class of another colour and texture.

The four colour families are 90° of hue apart and an object's hue strays at most
``HUE_SPREAD`` from its family's, so the students' colour jitter (Table 2: hue ±0.1 turn =
±36°, brightness, contrast and saturation ±20 %) never turns one class into another: an
object's class survives every augmentation the students train with, as on VOC. The nuisances are those of the report's failure cases: small objects, dim and
uneven lighting, objects occluding each other, cluttered textured backgrounds, sensor noise
and blur.

Every sample is a pure function of ``(seed, split, index)``. Images are rendered at twice the
output size and averaged down; a 2×2 block holding more than one label becomes void (255)
in the mask, like the void borders of PASCAL VOC. Per-object metadata (class, visible and
full area, bounding box, occluded fraction, illumination) goes to ``metadata/<split>.jsonl``
for the failure analysis.
"""

from __future__ import annotations

import colorsys
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from .conventions import VOID, voc_palette

BENCHMARK_VERSION = 2
SPLITS = ("teacher_train", "train", "val")
SPLIT_CODES = {"teacher_train": 11, "train": 13, "val": 17, "test": 19}
DEFAULTS = {"teacher_train": 3000, "train": 32, "val": 300, "size": 64, "seed": 0}

HUES = {"red": 0, "lime": 90, "cyan": 180, "purple": 270}  # degrees
HUE_SPREAD = 3.0  # an object's hue is its family's ± this many degrees


@dataclass(frozen=True)
class ShapeClass:
    index: int
    shape: str
    texture: str
    colour: str

    @property
    def name(self) -> str:
        if self.shape == "background":
            return "background"
        texture = "" if self.texture == "solid" else self.texture + " "
        return f"{self.colour} {texture}{self.shape}"


def _make_classes() -> tuple[ShapeClass, ...]:
    # shape: (base colour, colour twin, base texture, texture twin's texture, (4th colour, 4th texture))
    plan = [
        ("disk", "red", "lime", "solid", "striped", ("cyan", "checked")),
        ("square", "red", "lime", "checked", "dotted", ("cyan", "solid")),
        ("triangle", "lime", "cyan", "striped", "halved", ("purple", "solid")),
        ("cross", "purple", "red", "halved", "striped", ("cyan", "dotted")),
        ("ring", "purple", "lime", "dotted", "checked", ("cyan", "halved")),
    ]
    classes = [ShapeClass(0, "background", "none", "none")]
    for shape, base, twin, texture, texture2, (colour4, texture4) in plan:
        for colour, tex in ((base, texture), (twin, texture), (base, texture2), (colour4, texture4)):
            classes.append(ShapeClass(len(classes), shape, tex, colour))
    return tuple(classes)


CLASSES = _make_classes()
CLASS_NAMES = tuple(c.name for c in CLASSES)


def confusable_pairs() -> list[tuple[int, int, str]]:
    """The designed look-alike pairs: (class a, class b, "colour" | "texture")."""
    pairs = []
    for a in CLASSES[1:]:
        for b in CLASSES[a.index + 1 :]:
            if a.shape != b.shape:
                continue
            if a.texture == b.texture and a.colour != b.colour:
                pairs.append((a.index, b.index, "colour"))
            elif a.colour == b.colour and a.texture != b.texture:
                pairs.append((a.index, b.index, "texture"))
    return pairs


# --------------------------------------------------------------------------- rendering


def _hsv(h_deg: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb((h_deg % 360) / 360.0, s, v), dtype=np.float32)


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
    """Boolean mask of a shape of radius ``r`` in its own rotated coordinates (u, v)."""
    if shape == "disk":
        return u * u + v * v <= r * r
    if shape == "square":
        h = 0.82 * r
        return (np.abs(u) <= h) & (np.abs(v) <= h)
    if shape == "triangle":  # equilateral, circumradius r
        inside = v >= -0.5 * r
        for angle in (np.pi / 6, 5 * np.pi / 6):
            inside &= u * np.cos(angle) - v * np.sin(angle) >= -0.5 * r
        return inside
    if shape == "cross":
        w = 0.36 * r
        return ((np.abs(u) <= r) & (np.abs(v) <= w)) | ((np.abs(u) <= w) & (np.abs(v) <= r))
    if shape == "ring":
        d2 = u * u + v * v
        return (d2 <= r * r) & (d2 >= (0.5 * r) ** 2)
    raise ValueError(shape)


def _texture(texture: str, u: np.ndarray, v: np.ndarray, period: float) -> np.ndarray:
    """Multiplicative shading pattern in [0.4, 1] of a texture, in object coordinates."""
    if texture == "solid":
        return np.ones_like(u)
    if texture == "striped":
        return np.where(np.sin(2 * np.pi * u / period) > 0, 1.0, 0.42)
    if texture == "checked":
        cell = (np.floor(u / (period / 2)) + np.floor(v / (period / 2))) % 2
        return np.where(cell == 0, 1.0, 0.42)
    if texture == "halved":  # two tones split through the object's centre: no period at all
        return np.where(u > 0, 1.0, 0.42)
    if texture == "dotted":
        du = (u / period) % 1.0 - 0.5
        dv = (v / period) % 1.0 - 0.5
        return np.where(du * du + dv * dv <= 0.09, 0.4, 1.0)
    raise ValueError(texture)


def _background(rng: np.random.Generator, n: int, yy, xx) -> np.ndarray:
    """Low-saturation smooth colour field, textured clutter and distractor blobs."""
    grid = rng.integers(2, 5)
    base_h = rng.uniform(0, 360)
    cells = np.stack(
        [
            _hsv(base_h + rng.uniform(-40, 40), rng.uniform(0.0, 0.22), rng.uniform(0.35, 0.85))
            for _ in range(grid * grid)
        ]
    ).reshape(grid, grid, 3)
    img = (
        np.asarray(
            Image.fromarray((cells * 255).astype(np.uint8)).resize((n, n), Image.BILINEAR),
            dtype=np.float32,
        )
        / 255.0
    )
    # fine background texture: oriented grain or speckle
    if rng.random() < 0.6:
        theta, period = rng.uniform(0, np.pi), rng.uniform(3, 9) * n / 64
        grain = np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / period)
        img = img * (1 + rng.uniform(0.05, 0.18) * grain[..., None])
    # distractors: grey-ish blobs and bars, labelled background
    for _ in range(rng.integers(0, 6)):
        cx, cy, r = rng.uniform(0, n), rng.uniform(0, n), rng.uniform(0.04, 0.2) * n
        theta = rng.uniform(0, np.pi)
        u = (xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta)
        v = -(xx - cx) * np.sin(theta) + (yy - cy) * np.cos(theta)
        blob = (u / r) ** 2 + (v / (r * rng.uniform(0.15, 1.0))) ** 2 <= 1
        img[blob] = _hsv(rng.uniform(0, 360), rng.uniform(0.0, 0.25), rng.uniform(0.2, 0.9))
    return img


def render_sample(seed: int, split: str, index: int, size: int = 64) -> tuple[np.ndarray, np.ndarray, dict]:
    """One sample, a pure function of its arguments: (uint8 H×W×3 image, uint8 H×W mask, meta)."""
    rng = np.random.default_rng([seed, SPLIT_CODES[split], index])
    ss = 2  # supersampling factor
    n = size * ss
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32) + 0.5
    img = _background(rng, n, yy, xx)
    labels = np.zeros((n, n), np.uint8)
    owner = np.full((n, n), -1, np.int16)

    n_objects = int(rng.choice([1, 2, 3, 4], p=[0.25, 0.35, 0.25, 0.15]))
    objects, centres = [], []
    for k in range(n_objects):
        cls = CLASSES[int(rng.integers(1, len(CLASSES)))]
        r = float(np.exp(rng.uniform(np.log(4.0), np.log(0.34 * size)))) * ss
        if centres and rng.random() < 0.4:  # place it against an earlier object: occlusion
            px, py, pr = centres[int(rng.integers(len(centres)))]
            ang = rng.uniform(0, 2 * np.pi)
            dist = rng.uniform(0.3, 1.0) * (pr + r)
            cx, cy = px + dist * np.cos(ang), py + dist * np.sin(ang)
        else:
            cx, cy = rng.uniform(0.1, 0.9) * n, rng.uniform(0.1, 0.9) * n
        theta = rng.uniform(0, 2 * np.pi)
        u = (xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta)
        v = -(xx - cx) * np.sin(theta) + (yy - cy) * np.cos(theta)
        shape = _shape_mask(cls.shape, u, v, r)
        if not shape.any():
            continue
        colour = _hsv(
            HUES[cls.colour] + rng.uniform(-HUE_SPREAD, HUE_SPREAD), rng.uniform(0.65, 0.95), rng.uniform(0.7, 1.0)
        )
        pattern = _texture(cls.texture, u, v, period=rng.uniform(4.5, 6.0) * ss)
        img[shape] = colour * pattern[shape][:, None]
        labels[shape] = cls.index
        owner[shape] = k
        centres.append((cx, cy, r))
        objects.append({"k": k, "class": cls.index, "name": cls.name, "full_area": int(shape.sum())})

    # lighting: global gain (often dim) times a linear gradient (uneven), per pixel
    gain = float(rng.uniform(0.4, 1.15))
    phi, slope = rng.uniform(0, 2 * np.pi), rng.uniform(0.0, 0.6)
    ramp = ((xx - n / 2) * np.cos(phi) + (yy - n / 2) * np.sin(phi)) / n
    light = np.clip(gain * (1 + slope * ramp * 2), 0.08, 1.6).astype(np.float32)
    img = img * light[..., None]

    # back to the output size: average the image, void the mixed-label blocks of the mask
    img = img.reshape(size, ss, size, ss, 3).mean(axis=(1, 3))
    blocks = labels.reshape(size, ss, size, ss).transpose(0, 2, 1, 3).reshape(size, size, ss * ss)
    mask = np.where((blocks == blocks[..., :1]).all(-1), blocks[..., 0], VOID).astype(np.uint8)
    light_out = light.reshape(size, ss, size, ss).mean(axis=(1, 3))
    owner_out = owner.reshape(size, ss, size, ss).transpose(0, 2, 1, 3).reshape(size, size, -1)

    noise = float(rng.uniform(0.0, 0.05))
    img = img + rng.normal(0.0, noise, img.shape).astype(np.float32)
    image = Image.fromarray((np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8))
    blur = float(rng.uniform(0.4, 0.9)) if rng.random() < 0.3 else 0.0
    if blur:
        image = image.filter(ImageFilter.GaussianBlur(blur))

    meta_objects = []
    for obj in objects:
        visible = (owner == obj["k"]).sum()
        full = obj["full_area"]
        pixels = (owner_out == obj["k"]).all(-1) & (mask == obj["class"])
        ys, xs = np.nonzero((owner_out == obj["k"]).any(-1))
        if not len(ys):
            continue  # entirely hidden by later objects
        meta_objects.append(
            {
                "class": obj["class"],
                "name": obj["name"],
                "area": int(pixels.sum()),
                "area_fraction": round(float(pixels.sum()) / (size * size), 5),
                "bbox": [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1],
                "occluded_fraction": round(1.0 - float(visible) / full, 4),
                "illumination": round(float(light_out[pixels].mean()) if pixels.any() else gain, 4),
            }
        )
    meta = {"noise": round(noise, 4), "blur": round(blur, 3), "gain": round(gain, 4), "objects": meta_objects}
    return np.asarray(image), mask, meta


# --------------------------------------------------------------------------- writing


def benchmark_card(size: int, seed: int, counts: dict[str, int]) -> dict:
    return {
        "name": "shapes",
        "version": BENCHMARK_VERSION,
        "seed": seed,
        "size": size,
        "splits": counts,
        "classes": list(CLASS_NAMES),
        "confusable_pairs": [list(p) for p in confusable_pairs()],
        "class_specs": [asdict(c) for c in CLASSES],
    }


def generate(
    out,
    *,
    teacher_train: int = DEFAULTS["teacher_train"],
    train: int = DEFAULTS["train"],
    val: int = DEFAULTS["val"],
    size: int = DEFAULTS["size"],
    seed: int = DEFAULTS["seed"],
    progress: bool = True,
) -> Path:
    """Write the benchmark in the VOC layout under ``out`` and return that folder.

    Regenerating with the same arguments gives byte-identical files. If ``out`` already holds
    exactly this benchmark (same version, seed, size and split sizes), nothing is written.
    """
    from tqdm import tqdm  # tqdm.auto warns inside a notebook kernel without ipywidgets

    out = Path(out)
    counts = {"teacher_train": teacher_train, "train": train, "val": val}
    card = benchmark_card(size, seed, counts)
    card_path = out / "benchmark.json"
    if card_path.is_file() and json.loads(card_path.read_text()) == card:
        return out
    palette = voc_palette()
    # the card is written last: a generation cut off half way leaves no card that vouches for it
    card_path.unlink(missing_ok=True)
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation", "metadata"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for split, count in counts.items():
        ids, metas = [], []
        for index in tqdm(range(count), desc=f"shapes {split}", disable=not progress, mininterval=1):
            image, mask, meta = render_sample(seed, split, index, size)
            sample_id = f"{split}_{index:05d}"
            Image.fromarray(image).save(out / "JPEGImages" / f"{sample_id}.jpg", quality=95)
            png = Image.fromarray(mask, mode="P")
            png.putpalette(palette)
            png.save(out / "SegmentationClass" / f"{sample_id}.png", optimize=False)
            ids.append(sample_id)
            metas.append(json.dumps({"id": sample_id, **meta}))
        (out / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
        (out / "metadata" / f"{split}.jsonl").write_text("\n".join(metas) + "\n")
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    return out


def load_metadata(root, split: str) -> list[dict]:
    """Per-image metadata of a generated split, in the split list's order."""
    path = Path(root) / "metadata" / f"{split}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; regenerate with: python -m kdlib shapes --out {root}")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def nuisance_summary(root, split: str = "val") -> dict:
    """How often each of the report's failure conditions occurs in a split."""
    metas = load_metadata(root, split)
    objects = [o for m in metas for o in m["objects"]]
    n = max(len(objects), 1)
    return {
        "images": len(metas),
        "objects": len(objects),
        "of which wholly hidden (no visible pixel: left out of chapter 6's tables)": sum(
            o["area"] == 0 for o in objects
        ),
        "small objects (<1% of the image)": round(sum(o["area_fraction"] < 0.01 for o in objects) / n, 3),
        "dim objects (illumination < 0.6)": round(sum(o["illumination"] < 0.6 for o in objects) / n, 3),
        "occluded objects (> 5% hidden)": round(sum(o["occluded_fraction"] > 0.05 for o in objects) / n, 3),
        "blurred images": round(sum(m["blur"] > 0 for m in metas) / max(len(metas), 1), 3),
        "mean noise sigma": round(sum(m["noise"] for m in metas) / max(len(metas), 1), 4),
    }
