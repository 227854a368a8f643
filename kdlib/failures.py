"""Where the students fail (the report's Section 5): objects by size, light and occlusion,
the most confused classes, how much a student's failures follow the teacher's, the
predictions of every method's best run, and what feature KD aligned (chapter 3's collapse)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from .conventions import NUM_CLASSES, VOID
from .methods import names

SIZE_BUCKETS = ((0.0, 0.01, "small (<1%)"), (0.01, 0.05, "medium (1-5%)"), (0.05, 1.01, "large (>5%)"))


LIGHT_BUCKETS = ((0.0, 0.6, "dim (<0.6)"), (0.6, 1.0, "normal (0.6-1.0)"), (1.0, 9.9, "bright (>1.0)"))


OCCLUSION_BUCKETS = ((0.0, 0.05, "none (<5%)"), (0.05, 0.3, "partial (5-30%)"), (0.3, 1.01, "heavy (>30%)"))


FAIL_IOU = 0.5  # an object is "failed" when its IoU is below this
# A feature map is "collapsed" at a level when two positions of an image point the same way on
# average (position_similarity) above this: fixed before feature_student's runs (docs/regime.md)
COLLAPSED_SIMILARITY = 0.99
# The confidence of the teacher-dependency verdicts taken together: each KD student's interval
# is at 1 - (1 - FAMILY_LEVEL) / students (Bonferroni), since the findings name any one of them
FAMILY_LEVEL = 0.95


def _bucket(value: float, buckets) -> str:
    for lo, hi, name in buckets:
        if lo <= value < hi:
            return name
    return buckets[-1][2]


def objects_from_metadata(metas: list[dict]) -> pd.DataFrame:
    """One row per object of a ``shapes`` split, with its buckets."""
    rows = []
    for image_index, meta in enumerate(metas):
        for obj in meta["objects"]:
            if obj["area"] == 0:
                continue
            rows.append(
                {
                    "image": image_index,
                    "class": obj["class"],
                    "bbox": tuple(obj["bbox"]),
                    "area_fraction": obj["area_fraction"],
                    "illumination": obj["illumination"],
                    "occluded_fraction": obj["occluded_fraction"],
                }
            )
    return _with_buckets(pd.DataFrame(rows))


def objects_from_masks(targets: np.ndarray) -> pd.DataFrame:
    """VOC: one "object" per (image, foreground class) segment, sized from the mask."""
    rows = []
    n, h, w = targets.shape
    for image_index in range(n):
        for cls in np.unique(targets[image_index]):
            if cls == 0 or cls == VOID:
                continue
            ys, xs = np.nonzero(targets[image_index] == cls)
            rows.append(
                {
                    "image": image_index,
                    "class": int(cls),
                    "bbox": (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1),
                    "area_fraction": len(ys) / (h * w),
                    "illumination": math.nan,
                    "occluded_fraction": math.nan,
                }
            )
    return _with_buckets(pd.DataFrame(rows))


def _with_buckets(df: pd.DataFrame) -> pd.DataFrame:
    if df.empty:
        return df.assign(size=[], light=[], occlusion=[])
    df["size"] = [_bucket(v, SIZE_BUCKETS) for v in df["area_fraction"]]
    df["light"] = [None if math.isnan(v) else _bucket(v, LIGHT_BUCKETS) for v in df["illumination"]]
    df["occlusion"] = [None if math.isnan(v) else _bucket(v, OCCLUSION_BUCKETS) for v in df["occluded_fraction"]]
    return df


def object_ious(objects: pd.DataFrame, pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """IoU of each object: prediction vs ground truth of its class inside its bounding box
    (void pixels left out)."""
    ious = np.empty(len(objects))
    for i, (image, cls, (x0, y0, x1, y1)) in enumerate(zip(objects["image"], objects["class"], objects["bbox"])):
        t = target[image, y0:y1, x0:x1]
        p = pred[image, y0:y1, x0:x1]
        valid = t != VOID
        gt, pr = (t == cls) & valid, (p == cls) & valid
        union = (gt | pr).sum()
        ious[i] = (gt & pr).sum() / union if union else math.nan
    return ious


def iou_by_bucket(objects: pd.DataFrame, ious_by_model: dict[str, np.ndarray], by: str) -> pd.DataFrame:
    """Mean object IoU per bucket of ``by`` (size, light or occlusion), one column per model,
    with the number of objects per bucket and their median area (a share of the image): size
    matters most to every model, so a bucket of larger objects scores higher whatever ``by``
    is, and the area says when that is the reason."""
    order = {"size": SIZE_BUCKETS, "light": LIGHT_BUCKETS, "occlusion": OCCLUSION_BUCKETS}[by]
    df = objects[[by]].copy()
    for name, ious in ious_by_model.items():
        df[name] = ious
    table = df.groupby(by).mean(numeric_only=True)
    table.insert(0, "objects", df.groupby(by).size())
    table.insert(1, "median_area", objects.groupby(by)["area_fraction"].median())
    names = [b[2] for b in order if b[2] in table.index]
    return table.loc[names]


def most_confused_pairs(confmat, class_names, k: int = 8) -> pd.DataFrame:
    """The k largest off-diagonal entries of the row-normalised confusion matrix: "x% of
    class a's pixels are predicted as b"."""
    cm = np.asarray(confmat, dtype=np.float64)
    rates = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    np.fill_diagonal(rates, 0)
    flat = np.argsort(rates, axis=None)[::-1][:k]
    rows = []
    for idx in flat:
        a, b = divmod(int(idx), cm.shape[0])
        if rates[a, b] <= 0:
            break
        rows.append(
            {"true class": class_names[a], "predicted as": class_names[b], "rate": rates[a, b], "pixels": int(cm[a, b])}
        )
    return pd.DataFrame(rows, columns=["true class", "predicted as", "rate", "pixels"])


def teacher_dependency(student_ious: np.ndarray, teacher_ious: np.ndarray, fail_iou: float = FAIL_IOU) -> dict:
    """How often the student fails where the teacher fails, against where it does not.

    Returns P(student fails | teacher fails), P(student fails | teacher succeeds) and the
    counts; a ratio well above 1 is the report's "teacher dependency"."""
    ok = ~(np.isnan(student_ious) | np.isnan(teacher_ious))
    s_fail = student_ious[ok] < fail_iou
    t_fail = teacher_ious[ok] < fail_iou
    p_tf = float(s_fail[t_fail].mean()) if t_fail.any() else math.nan
    p_ts = float(s_fail[~t_fail].mean()) if (~t_fail).any() else math.nan
    return {
        "teacher_failures": int(t_fail.sum()),
        "objects": int(ok.sum()),
        "p_student_fails_given_teacher_fails": p_tf,
        "p_student_fails_given_teacher_succeeds": p_ts,
        "ratio": p_tf / p_ts if p_ts and not math.isnan(p_ts) and p_ts > 0 else math.nan,
    }


def dependency_ratio_interval(
    student_ious: np.ndarray,
    teacher_ious: np.ndarray,
    fail_iou: float = FAIL_IOU,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
    groups: np.ndarray | None = None,
) -> tuple[float, float]:
    """Percentile bootstrap interval (``level``, default 95 %) of :func:`teacher_dependency`'s
    ratio: ``n_boot`` resamples (:func:`resample_weights`: of the objects, or, given ``groups``,
    e.g. each object's image, of the groups with all their objects), an object keeping its
    student and teacher IoU together; resamples without a ratio (the teacher fails on none or on
    every object, or the student never fails where the teacher succeeds) are left out. How far
    the ratio moves with the objects drawn."""
    ok, (s_fail, t_fail) = _failed_where_scored(fail_iou, student_ious, teacher_ious)
    if not len(s_fail):
        return math.nan, math.nan
    weights = resample_weights(len(s_fail), n_boot, seed, None if groups is None else groups[ok])
    ratio = _resampled_ratios(s_fail, t_fail, weights)
    ratio = ratio[np.isfinite(ratio)]
    if not len(ratio):
        return math.nan, math.nan
    low, high = np.quantile(ratio, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def _failed_where_scored(fail_iou: float, *ious: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """The objects every model has an IoU for, and on those, whether each model failed (IoU
    below ``fail_iou``), one boolean array per model of ``ious``."""
    ok = ~np.logical_or.reduce([np.isnan(v) for v in ious])
    return ok, [v[ok] < fail_iou for v in ious]


def resample_weights(n: int, n_boot: int, seed: int, groups: np.ndarray | None = None) -> np.ndarray:
    """How many times each of ``n`` objects is drawn in each of ``n_boot`` bootstrap resamples
    (``n_boot``×``n``), from ``numpy.random.default_rng(seed)``: without ``groups``, ``n`` objects
    drawn with replacement (one ``n_boot``×``n`` array of indices); with ``groups`` (a label per
    object), as many groups drawn with replacement as there are, each bringing all its objects,
    so that objects that share an image (and its lighting, clutter and scale) are not counted
    as independent evidence."""
    rng = np.random.default_rng(seed)
    rows = np.arange(n_boot)[:, None]
    if groups is None:
        weights = np.zeros((n_boot, n))
        np.add.at(weights, (rows, rng.integers(0, n, size=(n_boot, n))), 1)
        return weights
    labels, of_object = np.unique(groups, return_inverse=True)
    drawn = np.zeros((n_boot, len(labels)))
    np.add.at(drawn, (rows, rng.integers(0, len(labels), size=(n_boot, len(labels)))), 1)
    return drawn[:, of_object]


def _resampled_ratios(student_fails: np.ndarray, teacher_fails: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """:func:`teacher_dependency`'s ratio in each resample (a row of ``weights``: how many times
    each object is drawn); inf or nan where a resample leaves it undefined."""
    s, t = student_fails.astype(float), teacher_fails.astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return ((weights @ (s * t)) / (weights @ t)) / ((weights @ (s * (1 - t))) / (weights @ (1 - t)))


# A bootstrap interval is given only when at most this share of its resamples has the statistic
# defined nowhere: leaving out more would leave out the largest ratios and narrow it unfairly
MAX_UNDEFINED_RESAMPLES = 0.05


def dependency_ratio_difference(
    student_ious: np.ndarray,
    baseline_ious: np.ndarray,
    teacher_ious: np.ndarray,
    fail_iou: float = FAIL_IOU,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
    groups: np.ndarray | None = None,
) -> tuple[float, float, float]:
    """A student's :func:`teacher_dependency` ratio minus a baseline student's (the no-KD one)
    on the same objects, with its paired percentile bootstrap interval (``level``): each of the
    ``n_boot`` resamples (:func:`resample_weights`; of whole ``groups``, e.g. images, when
    given) draws objects with their three IoUs together and takes both ratios on that draw, so
    the luck of which objects were drawn (more hard ones, fewer) moves both ratios alike and does
    not widen the interval, as two separate intervals would. Objects without all three IoUs are
    left out first. Returns (difference, low, high); the interval is NaN when more than
    :data:`MAX_UNDEFINED_RESAMPLES` of the resamples leave either ratio undefined. An interval
    above 0 says the student follows the teacher's failures more than the baseline does."""
    ok, (s_fail, b_fail, t_fail) = _failed_where_scored(fail_iou, student_ious, baseline_ious, teacher_ious)
    if not len(t_fail):
        return math.nan, math.nan, math.nan
    difference = (
        teacher_dependency(student_ious[ok], teacher_ious[ok], fail_iou)["ratio"]
        - teacher_dependency(baseline_ious[ok], teacher_ious[ok], fail_iou)["ratio"]
    )
    weights = resample_weights(len(t_fail), n_boot, seed, None if groups is None else groups[ok])
    with np.errstate(invalid="ignore"):  # inf - inf where neither student fails where the teacher succeeds
        diffs = _resampled_ratios(s_fail, t_fail, weights) - _resampled_ratios(b_fail, t_fail, weights)
    defined = np.isfinite(diffs)
    if math.isnan(difference) or 1 - defined.mean() > MAX_UNDEFINED_RESAMPLES:
        return difference, math.nan, math.nan
    low, high = np.quantile(diffs[defined], [(1 - level) / 2, (1 + level) / 2])
    return float(difference), float(low), float(high)


def area_in_percent(table: pd.DataFrame) -> pd.DataFrame:
    """A bucket table (:func:`iou_by_bucket`) as a chapter shows it beside bucket labels that
    are in % of the image: its median area in % of the image too, to one decimal (as the
    findings state it), under a column name that says so. The table itself is left as it is."""
    area = (100 * table["median_area"]).round(1)
    return table.assign(median_area=area).rename(columns={"median_area": "median area (% of image)"})


def split_miou(pred: np.ndarray, target: np.ndarray) -> float:
    """The mIoU of predictions over a whole split, by the trainer's metric
    (:class:`kdlib.metrics.SegmentationMetrics`: pixels pooled per class over every image, then
    the mean over the classes present in prediction or ground truth), so that it matches the
    runs' ``best val mIoU`` beside :func:`per_image_miou`."""
    import torch

    from .metrics import SegmentationMetrics

    metric = SegmentationMetrics(NUM_CLASSES)
    metric.update(torch.as_tensor(pred).long(), torch.as_tensor(target).long())
    return metric.compute()["miou"]


def per_image_miou(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """mIoU of each image over the classes present in its ground truth or prediction."""
    scores = np.empty(len(pred))
    for i in range(len(pred)):
        valid = target[i] != VOID
        p, t = pred[i][valid], target[i][valid]
        ious = []
        for c in np.union1d(np.unique(p), np.unique(t)):
            inter = np.sum((p == c) & (t == c))
            union = np.sum((p == c) | (t == c))
            ious.append(inter / union)
        scores[i] = np.mean(ious) if ious else math.nan
    return scores


def output_stride_ceiling(targets: np.ndarray, stride: int, num_classes: int = 21) -> float:
    """The mIoU that logits at ``stride`` can reach at best, measured on ground truth: each
    mask as one-hot scores, average-pooled to 1/``stride`` of its size, upsampled back
    bilinearly (as a segmentation head's logits are) and arg-maxed. Small objects and thin
    parts vanish at coarse strides; on 64 px ``shapes`` images stride 8 loses a quarter of
    the mIoU, which is why the benchmark's teacher classifies at stride 4."""
    import torch
    import torch.nn.functional as F
    from torchmetrics.classification import MulticlassJaccardIndex

    masks = torch.as_tensor(targets).long()
    valid = masks != VOID
    scores = F.one_hot(masks.clamp(max=num_classes - 1), num_classes).permute(0, 3, 1, 2).float()
    scores = scores * valid[:, None]
    coarse = F.avg_pool2d(scores, stride) if stride > 1 else scores
    pred = F.interpolate(coarse, size=masks.shape[-2:], mode="bilinear", align_corners=False).argmax(1)
    return float(MulticlassJaccardIndex(num_classes, ignore_index=VOID)(pred, masks))


def pick_examples(scores: np.ndarray, k: int = 2) -> tuple[list[int], list[int]]:
    """The stated rule for qualitative figures: the k images with the highest per-image mIoU
    (successes) and the k with the lowest (failures), ties broken by index."""
    order = np.lexsort((np.arange(len(scores)), np.nan_to_num(scores, nan=-1.0)))
    return [int(i) for i in order[::-1][:k]], [int(i) for i in order[:k]]


def predict_all(dataset: str, data_root, runs_dir, image_size: int, device: str = "cpu", seed=None):
    """Predictions on the whole val split of the teacher and of each method's best checkpoint
    (``seed``: that seed's run; default the lowest seed present). Returns
    ``(images uint8 N×H×W×3, targets N×H×W, {name: predictions N×H×W})``."""
    from .checkpoints import load_model
    from .data import build_dataset
    from .evaluate import predict
    from .results import collect_runs
    from .teacher import load_teacher

    val = build_dataset(dataset, data_root, "val", train=False, image_size=image_size)
    runs = collect_runs(runs_dir)
    preds = {}
    pred, targets, _ = predict(load_teacher(dataset), val, device)
    preds["teacher"] = pred
    for method in names("report"):
        rows = runs[runs["run"] == method]
        if rows.empty:
            continue
        row = rows.sort_values("seed").iloc[0] if seed is None else rows[rows["seed"] == seed].iloc[0]
        preds[method] = predict(load_model(Path(row["folder"]) / "best.pt"), val, device)[0]
    images = np.stack([val[i]["image"].permute(1, 2, 0).numpy() for i in range(len(val))])
    return images, targets, preds


def position_similarity(features) -> list[float]:
    """Per feature level (each N×C×h×w): the mean cosine between the vectors at two different
    positions of the same image. Near 1, every position points the same way and the map says
    nothing about where things are; a feature-KD target that has collapsed so (a trainable
    projection can make it) is met by a student whose features have collapsed too."""
    import torch
    import torch.nn.functional as F

    values = []
    for f in features:
        v = F.normalize(f.detach().float().flatten(2), dim=1)  # N×C×P unit vectors
        p = v.shape[-1]
        if p < 2:
            values.append(math.nan)
            continue
        gram = torch.einsum("ncp,ncq->npq", v, v)
        values.append(float(((gram.sum((1, 2)) - gram.diagonal(dim1=1, dim2=2).sum(1)) / (p * (p - 1))).mean()))
    return values


def similarity_to_mean(features) -> list:
    """Per feature level (each N×C×h×w): an N×h×w map of the cosine between each position's
    vector and the image's mean direction (the mean of its unit vectors). Where the map keeps
    the image's layout, positions differ (objects from background); a map near 1 everywhere is
    the collapse :func:`position_similarity` measures, drawn."""
    import torch.nn.functional as F

    maps = []
    for f in features:
        v = F.normalize(f.detach().float(), dim=1)  # N×C×h×w unit vectors
        mean = F.normalize(v.mean((2, 3), keepdim=True), dim=1)
        maps.append((v * mean).sum(1))
    return maps


def failure_tables(objects: pd.DataFrame, targets: np.ndarray, preds: dict) -> dict:
    """Object IoU by size / illumination / occlusion bucket for every model, and teacher
    dependency for every student method, with the bootstrap interval of its ratio over objects
    (:func:`dependency_ratio_interval`) and, for each KD student, its ratio minus the no-KD
    student's with the paired interval of that difference (:func:`dependency_ratio_difference`)
    at the Bonferroni level that keeps the KD students' verdicts at :data:`FAMILY_LEVEL`
    together (``ratio_minus_none_level``)."""
    ious = {name: object_ious(objects, p, targets) for name, p in preds.items()}
    tables = {}
    for by in ("size", "light", "occlusion"):
        if objects[by].notna().any():
            tables[by] = iou_by_bucket(
                objects[objects[by].notna()], {k: v[objects[by].notna().to_numpy()] for k, v in ious.items()}, by
            )
    if "teacher" in ious:
        rows = []
        kd = [m for m in ious if m not in ("teacher", "none")]
        family = 1 - (1 - FAMILY_LEVEL) / max(len(kd), 1)  # Bonferroni: one claim per KD student
        images = objects["image"].to_numpy()  # an image's objects are resampled together
        for m in [m for m in ious if m != "teacher"]:
            low, high = dependency_ratio_interval(ious[m], ious["teacher"], groups=images)
            row = {"method": m, **teacher_dependency(ious[m], ious["teacher"]), "images": len(np.unique(images))}
            row.update(ratio_ci95_low=low, ratio_ci95_high=high)
            if "none" in ious and m != "none":
                diff, d_low, d_high = dependency_ratio_difference(
                    ious[m], ious["none"], ious["teacher"], level=family, groups=images
                )
                row.update(
                    ratio_minus_none=diff, ratio_minus_none_low=d_low, ratio_minus_none_high=d_high,
                    ratio_minus_none_level=family,
                )  # fmt: skip
            rows.append(row)
        tables["teacher_dependency"] = pd.DataFrame(rows)
    return tables
