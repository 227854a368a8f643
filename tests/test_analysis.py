import math

import numpy as np
import pandas as pd
import pytest

from kdlib import failures, stats
from kdlib.conventions import VOID
from kdlib.evaluate import confusion_from_predictions
from kdlib.metrics import SegmentationMetrics


def test_object_iou_and_buckets():
    target = np.zeros((1, 10, 10), np.uint8)
    target[0, 2:6, 2:6] = 3  # 16 px
    pred = np.zeros_like(target)
    pred[0, 2:6, 2:4] = 3  # 8 px right
    objects = failures.objects_from_masks(target)
    assert list(objects["class"]) == [3] and objects["size"].iloc[0] == "large (>5%)"
    assert failures.object_ious(objects, pred, target)[0] == pytest.approx(0.5)
    table = failures.iou_by_bucket(objects, {"m": failures.object_ious(objects, pred, target)}, "size")
    assert table.loc["large (>5%)", "objects"] == 1 and table.loc["large (>5%)", "m"] == pytest.approx(0.5)
    assert table.loc["large (>5%)", "median_area"] == pytest.approx(16 / target[0].size)  # its 16 px


def test_object_iou_ignores_void():
    target = np.full((1, 4, 4), 2, np.uint8)
    target[0, :, 2:] = VOID
    pred = np.full_like(target, 5)
    pred[0, :, :2] = 2
    objects = failures.objects_from_masks(target)
    assert failures.object_ious(objects, pred, target)[0] == 1.0


def test_most_confused_pairs():
    cm = np.zeros((3, 3))
    cm[1, 1], cm[1, 2], cm[2, 2], cm[2, 0] = 60, 40, 90, 10
    pairs = failures.most_confused_pairs(cm, ["bg", "a", "b"], k=5)
    assert list(pairs["true class"]) == ["a", "b"] and pairs["rate"].iloc[0] == pytest.approx(0.4)


def test_teacher_dependency():
    teacher = np.array([0.1, 0.2, 0.9, 0.9, 0.9, 0.9])
    student = np.array([0.1, 0.3, 0.8, 0.2, 0.9, 0.9])
    d = failures.teacher_dependency(student, teacher)
    assert d["p_student_fails_given_teacher_fails"] == 1.0
    assert d["p_student_fails_given_teacher_succeeds"] == 0.25
    assert d["ratio"] == 4.0 and d["teacher_failures"] == 2


def test_the_dependency_ratio_interval_is_the_percentile_bootstrap_over_objects():
    rng = np.random.default_rng(7)
    teacher, student = rng.uniform(0, 1, 40), rng.uniform(0, 1, 40)
    student[:3] = np.nan  # objects without an IoU are left out before resampling
    low, high = failures.dependency_ratio_interval(student, teacher, n_boot=300, seed=5)
    # by hand: the 37 objects left, resampled 300 times by the same seeded draw, each resample's
    # ratio from the (separately tested) scalar function, then the 2.5 % and 97.5 % quantiles
    s, t = student[3:], teacher[3:]
    draws = np.random.default_rng(5).integers(0, 37, size=(300, 37))
    ratios = [failures.teacher_dependency(s[i], t[i])["ratio"] for i in draws]
    ratios = [r for r in ratios if not math.isnan(r)]
    assert (low, high) == pytest.approx(tuple(np.percentile(ratios, [2.5, 97.5])))
    assert low < failures.teacher_dependency(student, teacher)["ratio"] < high
    # a student that fails on every object fails as often either way: the ratio is 1 in every resample
    assert failures.dependency_ratio_interval(np.zeros(20), teacher[:20]) == (1.0, 1.0)
    # the teacher fails on no object: no ratio in any resample
    assert all(math.isnan(v) for v in failures.dependency_ratio_interval(student, np.ones(40)))


def test_the_dependency_difference_is_a_paired_bootstrap_over_the_same_objects():
    rng = np.random.default_rng(11)
    teacher, student, baseline = (rng.uniform(0, 1, 60) for _ in range(3))
    baseline[:4] = np.nan  # an object without all three IoUs is left out of every ratio
    diff, low, high = failures.dependency_ratio_difference(student, baseline, teacher, n_boot=200, seed=3)
    # by hand: the 56 objects left, one seeded draw of indices shared by both students' ratios
    s, b, t = student[4:], baseline[4:], teacher[4:]
    whole = failures.teacher_dependency(s, t)["ratio"] - failures.teacher_dependency(b, t)["ratio"]
    assert diff == pytest.approx(whole)
    draws = np.random.default_rng(3).integers(0, 56, size=(200, 56))
    diffs = [
        failures.teacher_dependency(s[i], t[i])["ratio"] - failures.teacher_dependency(b[i], t[i])["ratio"]
        for i in draws
    ]
    diffs = [d for d in diffs if not math.isnan(d)]
    assert (low, high) == pytest.approx(tuple(np.percentile(diffs, [2.5, 97.5])))
    # a student against itself differs by exactly 0 on every resample: the pairing cancels the objects
    assert failures.dependency_ratio_difference(s, s, t) == (0.0, 0.0, 0.0)
    # a student that fails nowhere the teacher succeeds has no ratio on most resamples: no interval, not a narrow one
    never = np.where(t < 0.5, 0.0, 1.0)  # fails exactly where the teacher fails
    diff, low, high = failures.dependency_ratio_difference(never, b, t)
    assert math.isnan(diff) and math.isnan(low) and math.isnan(high)


def test_resampling_by_image_draws_whole_images_with_all_their_objects():
    rng = np.random.default_rng(2)
    teacher, student, baseline = (rng.uniform(0, 1, 30) for _ in range(3))
    images = np.repeat(np.arange(10), 3)[::-1]  # 10 images of 3 objects each, labels in any order
    diff, low, high = failures.dependency_ratio_difference(
        student, baseline, teacher, n_boot=150, seed=4, groups=images
    )
    # by hand: the same seeded draw of 10 image indices (into the sorted labels) per resample, and each
    # resample's objects those of the images drawn, with repeats
    labels = np.unique(images)
    diffs = []
    for draw in np.random.default_rng(4).integers(0, 10, size=(150, 10)):
        idx = np.concatenate([np.flatnonzero(images == labels[g]) for g in draw])
        d = (failures.teacher_dependency(student[idx], teacher[idx])["ratio"]
             - failures.teacher_dependency(baseline[idx], teacher[idx])["ratio"])  # fmt: skip
        diffs.append(d)
    diffs = np.array(diffs)
    assert np.isfinite(diffs).mean() >= 0.95  # the interval is given
    assert (low, high) == pytest.approx(tuple(np.percentile(diffs[np.isfinite(diffs)], [2.5, 97.5])))
    # one object per image: resampling images is resampling objects
    one = failures.dependency_ratio_interval(student, teacher, n_boot=100, seed=1, groups=np.arange(30))
    assert one == pytest.approx(failures.dependency_ratio_interval(student, teacher, n_boot=100, seed=1))


def test_the_failure_tables_give_each_dependency_ratio_its_interval():
    target = np.zeros((2, 10, 10), np.uint8)
    target[0, :5, :5], target[0, 5:, 5:], target[1, :4, :4], target[1, 6:, 6:] = 1, 2, 3, 4
    teacher, student = target.copy(), target.copy()
    teacher[0, :5, :5] = 0  # the teacher misses one object of four
    student[0, :5, :5], student[1, :4, :4] = 0, 0  # the student that one and another
    objects = failures.objects_from_masks(target)
    tables = failures.failure_tables(objects, target, {"teacher": teacher, "none": student})
    row = tables["teacher_dependency"].iloc[0]
    ious = failures.object_ious(objects, student, target), failures.object_ious(objects, teacher, target)
    images = objects["image"].to_numpy()  # the table resamples whole images
    assert (row["ratio_ci95_low"], row["ratio_ci95_high"]) == failures.dependency_ratio_interval(*ious, groups=images)
    assert row["images"] == 2
    assert row["ratio"] == pytest.approx(1 / (1 / 3))  # fails 1 of 1 where the teacher fails, 1 of 3 elsewhere
    assert "ratio_minus_none" not in tables["teacher_dependency"]  # the no-KD student is not compared with itself
    kd = target.copy()
    kd[0, :5, :5], kd[0, 5:, 5:], kd[1, :4, :4] = 0, 0, 0  # fails 1 of 1 where the teacher fails, 2 of 3 elsewhere
    tables = failures.failure_tables(objects, target, {"teacher": teacher, "none": student, "response": kd})
    row = tables["teacher_dependency"].set_index("method").loc["response"]
    kd_ious = failures.object_ious(objects, kd, target)
    expected = failures.dependency_ratio_difference(kd_ious, ious[0], ious[1], groups=images)
    # (four objects leave most resamples without a ratio: no interval, NaN on both sides)
    np.testing.assert_equal(tuple(row[["ratio_minus_none", "ratio_minus_none_low", "ratio_minus_none_high"]]), expected)
    assert expected[0] == pytest.approx(1 / (2 / 3) - 3)


def test_a_bucket_table_for_reading_gives_the_median_area_in_percent():
    table = pd.DataFrame({"objects": [3, 2], "median_area": [0.00642, 0.0458], "none": [0.1, 0.3]})
    shown = failures.area_in_percent(table)
    assert list(shown.columns) == ["objects", "median area (% of image)", "none"]
    assert list(shown["median area (% of image)"]) == [0.6, 4.6]  # as the findings write 0.6% and 4.6%
    assert list(table["median_area"]) == [0.00642, 0.0458]  # the table itself is untouched


def test_the_bucket_figure_names_each_model_as_the_tables_do():
    import matplotlib

    matplotlib.use("Agg")
    from kdlib import plots

    table = pd.DataFrame(
        {"objects": [3, 4], "teacher": [0.9, 0.8], "none": [0.2, 0.3], "both": [0.25, 0.35]}, index=["small", "large"]
    )
    fig = plots.bucket_bars({"size": table})
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend == ["teacher", "No KD", "Feature & Response"]


def test_per_image_miou_and_pick_examples():
    target = np.array([[[0, 1], [1, 1]], [[0, 0], [0, 0]]], np.uint8)
    pred = np.array([[[0, 1], [1, 1]], [[1, 1], [0, 0]]], np.uint8)
    scores = failures.per_image_miou(pred, target)
    assert scores[0] == 1.0 and scores[1] == pytest.approx(0.25)
    assert failures.pick_examples(scores, k=1) == ([0], [1])


def test_paired_comparison_says_when_differences_exceed_seed_noise():
    runs = pd.DataFrame(
        {
            "run": ["none"] * 3 + ["response"] * 3 + ["feature"] * 3,
            "seed": [0, 1, 2] * 3,
            "miou": [0.30, 0.32, 0.31, 0.40, 0.42, 0.41, 0.30, 0.35, 0.27],
        }
    )
    table = stats.paired_comparison(runs).set_index("run")
    assert table.loc["response", "mean_diff"] == pytest.approx(0.10)
    assert table.loc["response", "verdict"] == "larger than seed noise"
    assert table.loc["feature", "verdict"] == "within seed noise"
    # by hand: d = (0, 0.03, -0.04), mean -0.01/3, sample sd 0.0351188 (n-1), t(0.975, df 2) = 4.303
    half = 4.303 * 0.0351188 / 3**0.5
    assert table.loc["feature", "mean_diff"] == pytest.approx(-0.01 / 3)
    assert table.loc["feature", "detectable"] == pytest.approx(half, rel=1e-4)
    assert table.loc["feature", "ci95_low"] == pytest.approx(-0.01 / 3 - half, rel=1e-4)
    assert table.loc["feature", "ci95_high"] == pytest.approx(-0.01 / 3 + half, rel=1e-4)
    one = stats.paired_comparison(runs[runs["seed"] == 0]).set_index("run")
    assert one.loc["response", "verdict"] == "one seed: no verdict"


def test_paired_comparison_says_which_pairs_crossed_classes_of_cpu_kernels():
    """Response's seed 2 ran on other kernels than no KD's; feature's seed 3, which no KD lacks,
    is not paired, so feature's pairs stay within one class."""
    runs = pd.DataFrame(
        {
            "run": ["none"] * 3 + ["response"] * 3 + ["feature"] * 4,
            "seed": [0, 1, 2] * 3 + [3],
            "miou": [0.30, 0.32, 0.31, 0.40, 0.42, 0.41, 0.30, 0.35, 0.27, 0.5],
            "kernels": ["pinned AVX2"] * 5 + ["unpinned, host b"] + ["pinned AVX2"] * 3 + ["unpinned, host b"],
        }
    )
    table = stats.paired_comparison(runs).set_index("run")
    assert not table.loc["response", "same_kernels"] and table.loc["feature", "same_kernels"]
    assert stats.paired_comparison(runs.drop(columns="kernels"))["same_kernels"].all()


def test_a_difference_that_does_not_survive_holm_says_so_in_its_verdict():
    base = [0.30, 0.32, 0.31, 0.29, 0.33, 0.30]
    diffs = {
        "strong": [0.10, 0.11, 0.10, 0.12, 0.10, 0.11],
        "weak": [0.01, 0.02, 0.01, 0.015, 0.03, -0.005],  # paired t-test p 0.038: x2 under Holm
        "null": [0.01, -0.01, 0.0, 0.02, -0.02, 0.0],
    }
    runs = pd.DataFrame(
        [{"run": "none", "seed": k, "miou": b} for k, b in enumerate(base)]
        + [{"run": m, "seed": k, "miou": b + x} for m, d in diffs.items() for k, (b, x) in enumerate(zip(base, d))]
    )
    table = stats.paired_comparison(runs).set_index("run")
    assert table.loc["weak", "p"] == pytest.approx(0.0383, abs=1e-4)
    assert table.loc["weak", "p_holm"] == pytest.approx(2 * table.loc["weak", "p"])
    assert table["verdict"].to_dict() == {
        "strong": "larger than seed noise",
        "weak": stats.NOT_AFTER_HOLM,
        "null": "within seed noise",
    }
    alone = stats.paired_comparison(runs[runs["run"].isin(["none", "weak"])])
    assert alone["verdict"].tolist() == ["larger than seed noise"]  # one test: nothing to correct for


def test_confusion_and_torchmetrics_agree():
    import torch

    rng = np.random.default_rng(0)
    target = rng.integers(0, 5, (3, 8, 8)).astype(np.uint8)
    target[0, 0] = VOID
    pred = rng.integers(0, 5, (3, 8, 8)).astype(np.uint8)
    cm = confusion_from_predictions(pred, target, 21).astype(float)  # rows: truth, columns: prediction
    tp, union = np.diag(cm), cm.sum(0) + cm.sum(1) - np.diag(cm)
    per_class = [t / u if u else math.nan for t, u in zip(tp, union)]
    miou = np.mean([v for v in per_class if not math.isnan(v)])
    m = SegmentationMetrics(21)
    m.update(torch.from_numpy(pred).long(), torch.from_numpy(target).long())
    result = m.compute()
    assert result["miou"] == pytest.approx(miou)
    assert all(
        math.isnan(a) and math.isnan(b) or a == pytest.approx(b) for a, b in zip(result["per_class_iou"], per_class)
    )


def test_metrics_accumulate_over_the_split_not_per_batch():
    import torch

    m = SegmentationMetrics(3)
    # batch 1: class 1 perfect on 1 px; batch 2: class 1 wrong on 3 px
    m.update(torch.tensor([[[1]]]), torch.tensor([[[1]]]))
    m.update(torch.tensor([[[0, 0, 0]]]), torch.tensor([[[1, 1, 1]]]))
    r = m.compute()
    assert r["per_class_iou"][1] == pytest.approx(0.25)  # 1 / (1 + 3), not mean(1, 0)
    assert r["pixel_accuracy"] == pytest.approx(0.25)


def test_output_stride_ceiling_loses_small_objects_at_coarse_strides():
    """Ground truth scored through a coarse logit map: exact at stride 1, a 3×3 object survives
    stride 2 but not stride 8, and the ceiling never rises with the stride."""
    masks = np.zeros((2, 64, 64), np.uint8)
    masks[:, 8:40, 8:40] = 1  # a large square
    masks[:, 50:53, 50:53] = 2  # a small one
    masks[1, 0, :] = VOID
    ceilings = [failures.output_stride_ceiling(masks, s, num_classes=3) for s in (1, 2, 4, 8)]
    assert ceilings[0] == pytest.approx(1.0)
    assert ceilings == sorted(ceilings, reverse=True) and ceilings[3] < 0.7 < ceilings[1]


def test_convergence_compares_the_last_quarter_with_the_epochs_before():
    rising = pd.DataFrame(
        {
            "epoch": range(1, 9),
            "val_miou": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75],
            "train_miou": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.9],
        }
    )
    c = stats.convergence(rising)
    assert c["last_quarter_gain"] == pytest.approx(0.15) and not c["converged"]  # .75 vs .6 before
    assert c["best_epoch"] == 8 and c["train_miou"] == 0.9 and c["val_miou"] == 0.75
    flat = rising.assign(val_miou=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.61, 0.59])
    c = stats.convergence(flat)
    assert c["last_quarter_gain"] == pytest.approx(0.01) and c["converged"] and c["best_epoch"] == 7
    assert stats.convergence(rising, early_stopped=True)["converged"]


def test_position_similarity_tells_a_collapsed_map_from_a_spatial_one():
    import torch

    torch.manual_seed(0)
    spatial = torch.randn(2, 16, 4, 4)
    collapsed = torch.randn(2, 16, 1, 1).expand(2, 16, 4, 4) * torch.rand(2, 1, 4, 4)  # one direction, any length
    one_position = torch.randn(2, 16, 1, 1)
    same, spread, single = failures.position_similarity([collapsed, spatial, one_position])
    assert same == pytest.approx(1.0, abs=1e-5) and abs(spread) < 0.2 and math.isnan(single)


def test_similarity_to_mean_draws_a_collapse_as_ones_and_keeps_a_layout():
    import torch

    # 2 channels, a 1×4 map: three positions along e1, one along e2 (lengths do not matter).
    # Mean of unit vectors (3/4, 1/4), unit: (3, 1)/sqrt(10); cosines 3/sqrt(10) and 1/sqrt(10).
    layout = torch.tensor([[[[2.0, 1.0, 5.0, 0.0]], [[0.0, 0.0, 0.0, 3.0]]]])
    collapsed = torch.tensor([[[[1.0, 2.0, 0.5, 4.0]], [[1.0, 2.0, 0.5, 4.0]]]])
    kept, flat = failures.similarity_to_mean([layout, collapsed])
    assert kept.shape == (1, 1, 4)
    expected = [3 / math.sqrt(10)] * 3 + [1 / math.sqrt(10)]
    assert kept.flatten().tolist() == pytest.approx(expected)
    assert flat.flatten().tolist() == pytest.approx([1.0] * 4)
    # chapter 3's claim: the map's mean is the length of the mean unit vector, whose square is the
    # mean cosine over all position pairs, self-pairs (cosine 1) included
    torch.manual_seed(0)
    f = torch.randn(2, 8, 3, 5)  # two images: each one's mean direction is its own
    p = 15
    (drawn,) = failures.similarity_to_mean([f])
    for n in range(2):
        pairs = failures.position_similarity([f[n : n + 1]])[0]  # without self-pairs
        assert float(drawn[n].mean()) == pytest.approx(math.sqrt((pairs * p * (p - 1) + p) / p**2), rel=1e-5)


def test_p_values_by_hand_and_holms_correction():
    # Holm: sorted p times (m - rank), kept non-decreasing: 0.01*3, max(0.03*2, 0.03), max(0.04*1, 0.06)
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert stats.holm([0.5, float("nan")])[0] == pytest.approx(0.5)
    runs = pd.DataFrame(
        {
            "run": ["none"] * 3 + ["feature"] * 3,
            "seed": [0, 1, 2] * 2,
            "miou": [0.30, 0.32, 0.31, 0.30, 0.35, 0.27],
        }
    )
    row = stats.paired_comparison(runs).iloc[0]
    # d = (0, 0.03, -0.04); with 2 degrees of freedom the t CDF is 1/2 + t / (2 sqrt(2 + t^2)), so the
    # two-sided p is 1 - |t| / sqrt(2 + t^2), t = mean / (sd / sqrt 3)
    t = (-0.01 / 3) / (0.0351188 / 3**0.5)
    assert row["p"] == pytest.approx(1 - abs(t) / (2 + t * t) ** 0.5, rel=1e-4)
    assert row["p_holm"] == pytest.approx(row["p"])  # one comparison: nothing to correct
    assert row["p_wilcoxon"] == pytest.approx(1.0)  # the zero is dropped; two ranks cannot reject


def test_a_verdict_that_does_not_survive_the_correction_says_so():
    from kdlib import report

    none = [0.20, 0.22, 0.18, 0.21]
    rows = {"none": none, "response": [v + d for v, d in zip(none, (0.01, 0.02, 0.015, 0.005))]}
    rows |= {"feature": [v + d for v, d in zip(none, (0.01, -0.02, 0.0, 0.012))], "both": none[::-1]}
    runs = pd.DataFrame([{"run": m, "seed": s, "miou": v} for m, values in rows.items() for s, v in enumerate(values)])
    paired = stats.paired_comparison(runs).set_index("run")
    assert paired.loc["response", "p"] < 0.05 < paired.loc["response", "p_holm"]
    line = next(v for v in report.verdicts(paired.reset_index()) if "**Response**" in v)
    assert "beats no KD, but not once the 3 comparisons are corrected for together (Holm)" in line


@pytest.mark.parametrize(
    "val_miou, gain, converged",
    [
        # 10 epochs: the last quarter is epochs 8-10 (ceil(10/4) = 3). A gain made at epoch 8, the
        # window's first epoch, is a gain of the last quarter...
        ([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.6, 0.65, 0.6, 0.6], 0.05, False),
        # ...and one made at epoch 7, just before it, is not
        ([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.65, 0.6, 0.6, 0.61], -0.04, True),
        # 5 epochs: ceil(5/4) = 2, so epochs 4-5 against 1-3
        ([0.1, 0.2, 0.3, 0.33, 0.31], 0.03, False),
        ([0.1, 0.2, 0.3, 0.31, 0.28], 0.01, True),
    ],
)
def test_convergence_window_is_the_last_ceil_quarter_of_epochs(val_miou, gain, converged):
    history = pd.DataFrame({"epoch": range(1, len(val_miou) + 1), "val_miou": val_miou})
    c = stats.convergence(history)
    assert c["last_quarter_gain"] == pytest.approx(gain) and c["converged"] == converged


def _exact_wilcoxon(d):
    """Two-sided exact signed-rank p with zeros dropped (Wilcoxon's own convention), by listing
    every sign assignment of the ranks (the test's differences have no tied magnitudes)."""
    import itertools

    d = [x for x in d if x != 0]
    if not d:
        return 1.0
    ranks = {x: r for r, x in enumerate(sorted(d, key=abs), 1)}
    observed = sum(ranks[x] for x in d if x > 0)
    sums = [
        sum(r for r, s in zip(range(1, len(d) + 1), signs) if s) for signs in itertools.product([0, 1], repeat=len(d))
    ]
    low = sum(s <= observed for s in sums) / len(sums)
    high = sum(s >= observed for s in sums) / len(sums)
    return min(1.0, 2 * min(low, high))


@pytest.mark.parametrize(
    "diffs",
    [
        [0.01, 0.02, -0.005, 0.03, 0.04, 0.015],  # six seeds, one loses: p = 4/64
        [0.0, 0.01, -0.02, 0.03, 0.04, 0.05],  # a tie with no KD on one seed: dropped, 5 ranks left
        [0.0, 0.0, 0.01, -0.02, 0.03, 0.04, 0.05, 0.06],
        [0.02, 0.03, 0.01, 0.04, 0.05, 0.06],  # every seed gains: the smallest p six seeds allow, 2/64
        [0.0, 0.0, 0.0],  # no difference at all: nothing to reject
    ],
)
def test_wilcoxon_p_is_the_exact_signed_rank_p_with_zeros_dropped(diffs):
    runs = pd.DataFrame(
        {
            "run": ["none"] * len(diffs) + ["cwd"] * len(diffs),
            "seed": list(range(len(diffs))) * 2,
            "miou": [0.3] * len(diffs) + [0.3 + x for x in diffs],
        }
    )
    row = stats.paired_comparison(runs).iloc[0]
    # the runs' differences are 0.3 + x - 0.3, which can differ from x in the last bit
    expected = _exact_wilcoxon([round(x, 9) for x in diffs])
    assert row["p_wilcoxon"] == pytest.approx(expected, rel=1e-9)


def test_a_bucket_gives_the_median_area_of_its_objects_not_the_mean():
    objects = pd.DataFrame({"size": ["large (>5%)"] * 3 + ["small (<1%)"], "area_fraction": [0.06, 0.07, 0.30, 0.005]})
    table = failures.iou_by_bucket(objects, {"m": np.array([0.1, 0.2, 0.9, 0.0])}, "size")
    assert table.loc["large (>5%)", "median_area"] == pytest.approx(0.07)  # the mean would be 0.1433
    assert table.loc["large (>5%)", "m"] == pytest.approx(0.4) and table.loc["small (<1%)", "objects"] == 1


def test_the_split_miou_pools_pixels_per_class_unlike_the_per_image_mean():
    target = np.zeros((2, 4, 4), np.uint8)
    target[0, :2, :2] = 1  # image 0: 4 pixels of class 1, 12 of background
    target[1, 0, 0] = 2  # image 1: 1 pixel of class 2, 15 of background
    target[1, 3, 3] = 255  # void, left out
    pred = target.copy()
    pred[1, 0, 0] = 0  # the one pixel of class 2 missed: predicted background
    pred[1, 3, 3] = 2  # a void pixel predicted as class 2 counts for nothing
    # by hand, pooled over both images: background 26 right of a union of 27 (26 in the truth, the missed
    # pixel predicted as it too), class 1 4 of 4, class 2 0 of 1: (26/27 + 1 + 0) / 3
    assert failures.split_miou(pred, target) == pytest.approx((26 / 27 + 1 + 0) / 3, rel=1e-6)
    # per image: image 0 (1 + 1) / 2, image 1 (14/15 + 0) / 2
    assert failures.per_image_miou(pred, target).tolist() == pytest.approx([1.0, 14 / 30])
