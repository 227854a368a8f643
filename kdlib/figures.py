"""Every figure and table of the report that comes from runs, data or models, each built by one
function: it writes its file under ``figures/`` or ``report/tables/`` and returns the figure or
table, so a chapter shows exactly what ``make report`` writes (chapters call these too).

The chapters' own illustrations of a mechanism (cosine maps, soft targets, CWD's
distributions) stay in their chapters: they explain, they are not results.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from . import methods, plots
from .config import resolve_image_size
from .data import build_dataset, class_names
from .results import load_history, per_class_table


def _save(fig, folder, name: str):
    """Write ``fig`` to ``folder/name`` and close it: a chapter shows it where it returns it (a
    figure as a cell's value), not wherever pyplot happened to create it."""
    import matplotlib.pyplot as plt

    plots.save_figure(fig, Path(folder) / name)
    plt.close(fig)
    return fig


def _write(table: pd.DataFrame, folder, name: str, index: bool = False) -> pd.DataFrame:
    Path(folder).mkdir(parents=True, exist_ok=True)
    table.to_csv(Path(folder) / name, index=index)
    return table


def augmentation(dataset: str, root, figures_dir, image_size=None):
    """``data_augmentation.png`` (chapter 0): four training images, each unaugmented and in three
    of Table 2's random views, their masks beside them."""
    size = resolve_image_size(dataset, root, image_size)
    train_set = build_dataset(dataset, root, "train", train=True, image_size=size)
    eval_set = build_dataset(dataset, root, "train", train=False, image_size=size)
    fig = plots.augmentation_grid(eval_set, train_set, indices=[0, 1, 2, 3], views=3, class_names=class_names(dataset))
    return _save(fig, figures_dir, "data_augmentation.png")


def architecture(dataset: str, figures_dir):
    """``architecture.png`` (chapter 1): the student's and the teacher backbone's stages."""
    import torch

    from .models import CustomSegmentationModel, TeacherWrapper, build_model, describe
    from .teacher import teacher_arch

    student_rows = describe(CustomSegmentationModel(num_classes=21), image_size=224)
    torch.manual_seed(0)  # the projections' initialisation: their shapes are what is drawn
    teacher_rows = describe(TeacherWrapper(build_model(teacher_arch(dataset))), image_size=224)
    name = f"teacher backbone ({teacher_arch(dataset)})"
    return _save(
        plots.architecture_figure(student_rows, teacher_rows, "student", name), figures_dir, "architecture.png"
    )


LOSS_TITLES = {
    "none": "No knowledge distillation",
    "feature": "Feature-based KD",
    "response": "Response-based KD",
    "both": "Feature and response KD",
}


def loss_curves(runs: pd.DataFrame, name: str, figures_dir):
    """``loss_<name>.png`` (chapters 2-5): every loss term of the first seed's run of ``name``."""
    first = runs[runs["run"] == name].sort_values("seed").iloc[0]
    title = f"{LOSS_TITLES.get(name, methods.display_name(name))} (seed {first['seed']})"
    return _save(plots.loss_curves(load_history(first["folder"]), title), figures_dir, f"loss_{name}.png")


def feature_similarity(dataset: str, root, runs_dir, tables_dir, image_size=None, figures_dir=None) -> pd.DataFrame:
    """``feature_position_similarity.csv`` (chapter 3): per level, the mean cosine between two
    positions of the same image (:func:`kdlib.failures.position_similarity`) on the first 8
    validation images, for the raw teacher, the teacher through the feature-KD run's trained
    projections, that run's student, (when they exist) the no-KD student of the same seed and
    the student trained with the adapters on its own side (``feature_student``, same seed):
    its own maps and its maps through its trained adapters, what the loss compares with the raw
    teacher. With ``figures_dir``, also ``feature_position_maps.png``: each of those maps for the
    first image, every position's cosine with the image's mean direction
    (:func:`kdlib.failures.similarity_to_mean`), so that a collapse shows as a map of ones
    where the raw teacher keeps the image's layout."""
    import torch

    from .checkpoints import load_checkpoint, load_model, load_weights
    from .evaluate import sample_batch
    from .failures import position_similarity, similarity_to_mean
    from .models import TeacherWrapper
    from .results import collect_runs, run_dir
    from .teacher import load_teacher

    feature = collect_runs(runs_dir, ["feature"]).sort_values("seed").iloc[0]
    best = Path(feature["folder"]) / "best.pt"
    torch.manual_seed(0)
    teacher = TeacherWrapper(load_teacher(dataset))
    teacher.projections.load_state_dict(load_checkpoint(best)["projections"])
    x, _ = sample_batch(dataset, root, n=8, image_size=image_size)
    no_kd = run_dir(runs_dir, "none", feature["seed"]) / "best.pt"
    with torch.no_grad():
        raw = teacher.teacher_forward(x)["features"]
        maps = {
            "teacher (raw)": raw,
            "teacher, projected": teacher.project(raw),
            "feature-KD student": load_model(best)(x)["features"],
        }
        if no_kd.is_file():
            maps["no-KD student"] = load_model(no_kd)(x)["features"]
        student_side = run_dir(runs_dir, "feature_student", feature["seed"]) / "best.pt"
        if student_side.is_file():
            student = load_model(student_side)
            adapters = methods.get("feature_student").adapters(student.feature_channels, teacher.teacher_channels)
            load_weights(
                adapters, load_checkpoint(student_side)["adapters"], student_side, "feature_student's adapters"
            )
            own = student(x)["features"]
            maps["student-side adapters: student"] = own
            maps["student-side adapters: student, adapted"] = adapters.eval()(own)
    table = pd.DataFrame({k: position_similarity(f) for k, f in maps.items()}, index=list(teacher.feature_layers))
    table = table.round(3).rename_axis("level").reset_index()
    if figures_dir is not None:
        drawn = {k: similarity_to_mean(f) for k, f in maps.items()}
        fig = plots.cosine_maps(
            [[level[0] for level in levels] for levels in drawn.values()],
            [f"{name} ({m.shape[-2]}×{m.shape[-1]})" for name, m in zip(teacher.feature_layers, maps["teacher (raw)"])],
            image=x[0],
            rows=[name.replace(": ", ":\n").replace(", adapted", ",\nadapted") for name in drawn],
            label="cos(position, the image's mean direction)",
            suptitle="Does each map still say where things are? (first val image; 1 everywhere: collapsed)",
            low=0,
        )
        _save(fig, figures_dir, "feature_position_maps.png")
    return _write(table, tables_dir, "feature_position_similarity.csv")


def failure_analysis(dataset: str, root, runs_dir, figures_dir, tables_dir, image_size=None, device: str = "cpu"):
    """The report's Section 5 (chapter 6), from the best-val checkpoint of each report method's
    first seed and the teacher on the whole val split: ``qualitative_<method>.png`` (each
    method's two best and two worst images, every model's prediction beside them),
    ``iou_by_{size,light,occlusion}.csv`` and ``failure_buckets.png``, ``confused_pairs.csv``
    (the most confused classes of the last report method) and ``teacher_dependency.csv``.
    Returns ``{"scores": per-image mIoU per model, "split_miou": the whole split's mIoU per model
    (pixels pooled per class, as training measures it), "tables": {name: table}, "figures": {file
    stem: figure}, "confused_by": the run whose confused pairs the table holds}``."""
    from . import failures
    from .evaluate import confusion_from_predictions

    size = resolve_image_size(dataset, root, image_size)
    names = class_names(dataset)
    shown = {}
    images, targets, preds = failures.predict_all(dataset, root, runs_dir, size, device)
    scores = {name: failures.per_image_miou(p, targets) for name, p in preds.items()}
    shown_as = {name: methods.display_name(name) for name in preds}  # column titles a reader knows
    for method in [m for m in methods.names("report") if m in preds]:
        best, worst = failures.pick_examples(scores[method], k=2)
        rows = best + worst
        columns = {"ground truth": targets[rows]} | {shown_as[name]: p[rows] for name, p in preds.items()}
        labels = [f"success #{i}" for i in best] + [f"failure #{i}" for i in worst]
        title = f"{methods.display_name(method)}: its two best and two worst val images (per-image mIoU under each)"
        under = {shown_as[name]: s[rows] for name, s in scores.items()}
        fig = plots.qualitative_grid(images[rows], columns, names, labels, scores=under, title=title)
        shown[f"qualitative_{method}"] = _save(fig, figures_dir, f"qualitative_{method}.png")
    if dataset == "shapes":
        from .shapes import load_metadata

        objects = failures.objects_from_metadata(load_metadata(root, "val"))
    else:
        objects = failures.objects_from_masks(targets)
    tables = failures.failure_tables(objects, targets, preds)
    buckets = [by for by in ("size", "light", "occlusion") if by in tables]
    for by in buckets:
        _write(tables[by].round(4).reset_index(), tables_dir, f"iou_by_{by}.csv")
    shown["failure_buckets"] = _save(
        plots.bucket_bars({by: tables[by] for by in buckets}), figures_dir, "failure_buckets.png"
    )
    student = [m for m in methods.names("report") if m in preds][-1]
    pairs = failures.most_confused_pairs(confusion_from_predictions(preds[student], targets), names, k=8)
    tables["confused_pairs"] = _write(pairs.round(4), tables_dir, "confused_pairs.csv")
    _write(tables["teacher_dependency"].round(4), tables_dir, "teacher_dependency.csv")
    tables["teacher_confused_pairs"] = failures.most_confused_pairs(
        confusion_from_predictions(preds["teacher"], targets), names, k=8
    )
    split = {name: failures.split_miou(p, targets) for name, p in preds.items()}
    return {"scores": scores, "split_miou": split, "tables": tables, "figures": shown, "confused_by": student}


def per_class(runs_dir, committed_dir, dataset: str, teacher: dict | None, figures_dir):
    """``per_class_iou.png`` (chapter 7): per-class IoU, mean over seeds, of the teacher and
    every row of the results table."""
    table = per_class_table(runs_dir, class_names(dataset), teacher, committed_dir)
    table = table.rename(columns=lambda n: n if n == "teacher" else methods.display_name(n))
    return _save(plots.per_class_heatmap(table, "per-class IoU (mean over seeds)"), figures_dir, "per_class_iou.png")


def sweep_map(table: pd.DataFrame, figures_dir):
    """``sweep.png`` (chapter 9): mean val mIoU of every (T, β) cell of each swept method, from
    ``sweep.csv``, against no KD on the same seeds, the report's cell marked."""
    from .sweep import report_cell

    cells = table[table["method"] != "none"]
    none = table[table["method"] == "none"]["miou"].mean()
    temps, betas = sorted(cells["temperature"].unique()), sorted(cells["beta"].unique())
    means = {
        methods.display_name(m): g.pivot_table(index="temperature", columns="beta", values="miou")
        .reindex(index=temps, columns=betas)
        .to_numpy()
        for m, g in cells.groupby("method", sort=False)
    }
    title = (
        f"each cell: mean val mIoU over seeds {', '.join(map(str, sorted(cells['seed'].unique())))} and, below, "
        f"its difference to no KD on those seeds ({none:.3f}); outlined: the report's cell"
    )
    return _save(
        plots.sweep_heatmap(means, temps, betas, none, marked=report_cell(), title=title), figures_dir, "sweep.png"
    )


def budget_curves(runs_dir, committed_dir, figures_dir):
    """``budget_curves.png`` (the report's Section 6): each method's best val mIoU against its
    training steps on the demo's draw, 1x and the longer budgets of :mod:`kdlib.conditions`;
    None when no longer budget has finished runs."""
    import json

    from .conditions import budget_runs

    tables = budget_runs(runs_dir, committed_dir)
    if all(tables[f].empty for f in tables if f != 1) or tables[1].empty:
        return None
    points = pd.concat([t.assign(budget=f) for f, t in tables.items()], ignore_index=True)
    config = json.loads((Path(tables[1]["folder"].iloc[0]) / "config.json").read_text())
    images = config["split_sizes"][config["train_split"]]
    steps = config["epochs"] * config["train_repeats"] * -(-images // config["batch_size"])
    fig = plots.budget_curves(points, steps, "best val mIoU against the training budget (the demo's draw)")
    return _save(fig, figures_dir, "budget_curves.png")
