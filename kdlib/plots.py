"""Figures: each function returns a matplotlib ``Figure`` with an explicit size;
:func:`save_figure` writes it as a deterministic PNG (no software or date metadata)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Patch

from . import methods
from .augment import prepare_sample
from .conventions import VOID, voc_palette
from .data import denormalize
from .files import save_figure_bytes

VOID_COLOUR = (1.0, 1.0, 1.0)


def class_colours(num_classes: int = 21) -> np.ndarray:
    """num_classes×3 colours in [0, 1]: the VOC palette, as in the masks' PNGs."""
    return np.asarray(voc_palette()[: 3 * num_classes], dtype=np.float32).reshape(-1, 3) / 255.0


def colorize(mask, num_classes: int = 21) -> np.ndarray:
    """H×W class indices (255 void) → H×W×3 RGB in [0, 1]; void is white."""
    mask = np.asarray(mask)
    lut = np.concatenate([class_colours(num_classes), np.zeros((256 - num_classes, 3), np.float32)])
    lut[VOID] = VOID_COLOUR
    return lut[mask.astype(np.int64)]


def to_rgb(image) -> np.ndarray:
    """A normalised 3×H×W tensor (or H×W×3 uint8 array) → H×W×3 floats in [0, 1]."""
    if hasattr(image, "detach"):
        return denormalize(image.detach().cpu()).permute(1, 2, 0).numpy()
    image = np.asarray(image)
    return image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else image


def class_legend(fig, class_names, present=None, ncol: int = 7) -> None:
    colours = class_colours(len(class_names))
    idx = range(len(class_names)) if present is None else sorted(present)
    handles = [Patch(facecolor=colours[i], edgecolor="0.5", label=class_names[i]) for i in idx]
    handles.append(Patch(facecolor=VOID_COLOUR, edgecolor="0.5", label="void"))
    fig.legend(handles=handles, loc="lower center", ncol=ncol, fontsize=7, frameon=False)


def save_figure(fig, path, dpi: int = 100) -> Path:
    """Write a PNG whose bytes depend only on the figure (no Software/date metadata), atomically:
    a full or read-only disk raises DiskWriteError and leaves the previous PNG as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_figure_bytes(fig, path, dpi=dpi, metadata={"Software": None})


def augmentation_grid(eval_set, train_set, indices, views: int = 3, class_names=None, seed: int = 0):
    """Rows: samples. Columns: image, its mask, then ``views`` augmented (image, mask) pairs
    drawn from Table 2's transforms with fixed seeds."""
    cols = 2 + 2 * views
    fig, axes = plt.subplots(len(indices), cols, figsize=(1.6 * cols, 1.6 * len(indices) + 0.9), squeeze=False)
    for row, index in enumerate(indices):
        image, mask = prepare_sample(eval_set[index])
        panels = [(to_rgb(image), "image"), (colorize(mask.numpy()), "mask")]
        for v in range(views):
            aug_image, aug_mask = prepare_sample(train_set[(index, seed * 1000 + index * 10 + v)])
            panels += [(to_rgb(aug_image), f"aug {v + 1}"), (colorize(aug_mask.numpy()), f"mask {v + 1}")]
        for col, (panel, title) in enumerate(panels):
            ax = axes[row, col]
            ax.imshow(panel, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(title, fontsize=8)
    if class_names is not None:
        class_legend(fig, class_names)
        fig.subplots_adjust(bottom=0.2)
    return fig


def loss_curves(history, title: str = ""):
    """Train and validation curves of every loss component in ``history`` (a DataFrame of
    history.csv): the total, the cross entropy and each distillation term the run's method
    has (every registered method's, :mod:`kdlib.methods`), plus validation mIoU: the report's
    Figures 3-6. A dotted line marks the best validation epoch, the checkpoint kept."""
    names = {"total": "total loss", "ce": "cross entropy"}
    names |= {t: f"{t} KD term" for t in methods.term_names()}
    components = [c for c in names if f"train_{c}" in history and history[f"train_{c}"].notna().any()]
    panels = len(components) + 1
    best = int(history.loc[history["val_miou"].idxmax(), "epoch"])
    fig, axes = plt.subplots(1, panels, figsize=(3.2 * panels, 3.2), squeeze=False)
    axes = axes[0]
    for ax, comp in zip(axes, components):
        ax.plot(history["epoch"], history[f"train_{comp}"], label="train", color="C0")
        ax.plot(history["epoch"], history[f"val_{comp}"], label="val", color="C1")
        ax.set_title(names[comp], fontsize=10)
        ax.set_ylabel("loss (mean per pixel)", fontsize=8)
    axes[-1].plot(history["epoch"], history["val_miou"], color="C2", label="val")
    if "train_miou" in history and history["train_miou"].notna().any():
        axes[-1].plot(history["epoch"], history["train_miou"], color="C2", ls="--", label="train (unaugmented)")
    axes[-1].set_title("mIoU", fontsize=10)
    axes[-1].set_ylabel("mIoU", fontsize=8)
    for ax in axes:
        ax.axvline(best, color="0.4", ls=":", lw=1, label=f"best epoch ({best})")
        ax.set_xlabel("epoch")
        ax.tick_params(labelsize=8)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def qualitative_grid(images, columns: dict, class_names, row_labels=None, scores: dict | None = None, title=""):
    """One row per example: the image, then one mask per entry of ``columns`` (e.g. ground
    truth, teacher, each method), with per-image mIoU under each prediction when ``scores``
    (same keys, one value per row) is given, and a legend of the classes shown."""
    names = list(columns)
    cols = 1 + len(names)
    rows = len(images)
    fig, axes = plt.subplots(rows, cols, figsize=(1.7 * cols, 1.75 * rows + 1.0), squeeze=False)
    present = set()
    for r in range(rows):
        axes[r, 0].imshow(to_rgb(images[r]), interpolation="nearest")
        if row_labels is not None:
            axes[r, 0].set_ylabel(row_labels[r], fontsize=8)
        for c, name in enumerate(names, 1):
            mask = np.asarray(columns[name][r])
            present |= set(np.unique(mask).tolist()) - {VOID}
            axes[r, c].imshow(colorize(mask, len(class_names)), interpolation="nearest")
            if scores is not None and name in scores:
                axes[r, c].set_xlabel(f"mIoU {scores[name][r]:.2f}", fontsize=7)
        for c in range(cols):
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
    axes[0, 0].set_title("image", fontsize=9)
    for c, name in enumerate(names, 1):
        axes[0, c].set_title(name, fontsize=9)
    class_legend(fig, class_names, present=present, ncol=4)
    if title:  # the VOC palette keeps look-alike classes (one colour family on shapes) apart on the page
        fig.suptitle(
            title + "\nmasks: one colour per class (VOC palette, legend below; a mask's colour names its class, "
            "not the object's own colour), white = void",
            fontsize=9,
        )
    fig.subplots_adjust(bottom=0.08 + 0.025 * (len(present) // 4 + 1), top=0.9, wspace=0.05, hspace=0.35)
    return fig


def per_class_heatmap(table, title: str = "per-class IoU"):
    """Classes × models heatmap of IoU (a DataFrame indexed by class name)."""
    import seaborn as sns

    fig, ax = plt.subplots(figsize=(1.1 * table.shape[1] + 4.2, 0.32 * table.shape[0] + 2.2))
    sns.heatmap(
        table,
        annot=True,
        fmt=".2f",
        vmin=0,
        vmax=1,
        cmap="viridis",
        cbar_kws={"label": "IoU", "shrink": 0.6},
        annot_kws={"fontsize": 7},
        ax=ax,
    )
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("")
    ax.set_ylabel("")
    ax.tick_params(labelsize=8)
    ax.set_xticklabels(ax.get_xticklabels(), rotation=30, ha="right")
    fig.tight_layout()
    return fig


def bucket_bars(tables: dict, title: str = "object IoU by condition"):
    """One panel per bucket table (from ``failures.iou_by_bucket``): mean object IoU per
    bucket, one bar per model."""
    fig, axes = plt.subplots(1, len(tables), figsize=(4.2 * len(tables), 3.2), squeeze=False)
    for ax, (by, table) in zip(axes[0], tables.items()):
        data = table.drop(columns=["objects", "median_area"], errors="ignore").rename(columns=methods.display_name)
        data.index = [f"{i}\n(n={n})" for i, n in zip(table.index, table["objects"])]
        data.plot.bar(ax=ax, rot=0, width=0.8, legend=ax is axes[0, 0])
        ax.set_title(by, fontsize=10)
        ax.set_ylim(0, 1)
        ax.tick_params(labelsize=7)
        if ax is axes[0, 0]:
            ax.set_ylabel("mean object IoU")
            ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def architecture_figure(student_rows, teacher_rows, student_name="student", teacher_name="teacher"):
    """The student as a diagram (the report's Figures 1-2): the encoder down the middle, the
    decoder up the right, each block with its output shape (C×H×W at 224 px) and parameters,
    the skips that add an encoder level to each decoder step, and on the left the four teacher
    levels feature KD aligns with the encoder's stages, each through a trainable 1×1 projection."""
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    by = {r["stage"]: r for r in student_rows}
    taps = [r for r in teacher_rows if r["stage"].startswith("layer")]
    fig, ax = plt.subplots(figsize=(12, 5.6))
    ax.set_xlim(0, 12)
    ax.set_ylim(0.6, 7.8)
    ax.axis("off")
    x_teacher, x_enc, x_dec, width = 1.7, 5.2, 9.2, 2.4

    def count(n: int) -> str:
        return f"{n:,}" if n < 1000 else f"{n / 1e3:,.0f}k"

    def box(x, y, title, detail, colour):
        ax.add_patch(
            FancyBboxPatch((x - width / 2, y - 0.32), width, 0.64, boxstyle="round,pad=0.03", fc=colour, ec="0.3")
        )
        ax.text(x, y + 0.1, title, ha="center", va="center", fontsize=9, weight="bold")
        ax.text(x, y - 0.16, detail, ha="center", va="center", fontsize=7.5)

    def block(x, y, stage, colour):
        r = by[stage]
        box(x, y, stage, f"{'×'.join(map(str, r['output']))}  ·  {count(r['parameters'])} parameters", colour)

    def arrow(a, b, **kw):
        ax.add_patch(FancyArrowPatch(a, b, arrowstyle="-|>", mutation_scale=11, color=kw.pop("color", "0.3"), **kw))

    enc = {"stem": 6.7, "pool": 5.85, "stage1": 5.0, "stage2": 3.9, "stage3": 2.8, "stage4": 1.7}
    dec = {"up1": 2.8, "up2": 3.9, "up3": 5.0, "up4": 6.1, "classifier": 7.0}
    ax.text(x_enc, 7.55, "input 3×224×224", ha="center", fontsize=8)
    arrow((x_enc, 7.45), (x_enc, enc["stem"] + 0.34))
    for stage, y in enc.items():
        block(x_enc, y, stage, "#dbe9f6")
    for a, b in zip(list(enc)[:-1], list(enc)[1:]):
        arrow((x_enc, enc[a] - 0.34), (x_enc, enc[b] + 0.34))
    for stage, y in dec.items():
        block(x_dec, y, stage, "#fde3c8" if stage != "classifier" else "#e4f2dc")
    arrow((x_enc + width / 2, enc["stage4"]), (x_dec, dec["up1"] - 0.34), connectionstyle="arc3,rad=0.2")
    for a, b in zip(list(dec)[:-1], list(dec)[1:]):
        arrow((x_dec, dec[a] + 0.34), (x_dec, dec[b] - 0.34))
    ax.text(x_dec, 7.55, "logits 21×112×112 → bilinear → 21×224×224", ha="center", fontsize=8)
    for skip, up in (("stage3", "up1"), ("stage2", "up2"), ("stage1", "up3"), ("stem", "up4")):
        arrow((x_enc + width / 2, enc[skip]), (x_dec - width / 2, dec[up]), linestyle="--", color="C0")
    for stage, tap in zip(("stage1", "stage2", "stage3", "stage4"), taps):
        channels = by[stage]["output"][0]
        shape = "×".join(map(str, tap["output"]))
        box(x_teacher, enc[stage], f"teacher {tap['stage']}", f"{shape} → 1×1 conv → {channels} ch", "#eeeeee")
        arrow((x_teacher + width / 2, enc[stage]), (x_enc - width / 2, enc[stage]), linestyle=":", color="C3")
    ax.text(x_teacher, 6.3, f"{teacher_name}\n(frozen; its 1×1\nprojections train)", ha="center", fontsize=8.5)
    ax.text(
        6.0, 0.75,
        "dashed blue: a skip, added to the decoder step  ·  dotted red: feature KD, 1 − cosine per pixel "
        "between the projected teacher level and the stage's output",
        ha="center", fontsize=8,
    )  # fmt: skip
    total = sum(r["parameters"] for r in student_rows)
    ax.set_title(f"{student_name}: {total / 1e6:.2f}M parameters (shapes at a 224×224 input)", fontsize=11)
    return fig


def soft_targets(distributions: dict, class_names, marked=(), title: str = ""):
    """One pixel's class distribution under several temperatures: ``distributions`` maps a
    label (e.g. "T = 1") to C probabilities; the classes in ``marked`` (e.g. the true class
    and its look-alike) are named in bold."""
    labels = list(distributions)
    x = np.arange(len(class_names))
    width = 0.8 / len(labels)
    fig, ax = plt.subplots(figsize=(10, 3.4))
    for i, label in enumerate(labels):
        ax.bar(x + (i - (len(labels) - 1) / 2) * width, np.asarray(distributions[label]), width, label=label)
    ax.axhline(1 / len(class_names), color="0.5", lw=0.8, ls="--", label="uniform")
    ax.set_xticks(x, class_names, rotation=60, ha="right", fontsize=7)
    for i in marked:
        ax.get_xticklabels()[i].set_fontweight("bold")
    ax.set_ylabel("probability")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def cosine_maps(
    maps, titles, image=None, suptitle: str = "", label: str = "cos(teacher, student)", rows=None, low: float = -1
):
    """Cosine maps (one per feature level) on one colour scale from ``low`` to 1 (below ``low``
    drawn as ``low``; diverging red-blue over [-1, 1], sequential otherwise, so that a scale
    narrowed to where the values lie still reads), after the input ``image`` when given.
    ``maps`` is one row of maps, or, with ``rows`` (a name per row), a list of such rows, each
    name written at the left of its row; ``titles`` name the columns."""
    grid = [list(maps)] if rows is None else [list(r) for r in maps]
    names = [None] * len(grid) if rows is None else list(rows)
    offset = image is not None
    cols = max(len(r) for r in grid) + offset
    fig, axes = plt.subplots(len(grid), cols, figsize=(2.6 * cols, 0.4 + 2.5 * len(grid)), squeeze=False)
    for i, (row, name) in enumerate(zip(grid, names)):
        if offset:
            axes[i][0].imshow(to_rgb(image), interpolation="nearest")
            axes[i][0].set_title("image" if i == 0 else "", fontsize=9)
        for j, cos in enumerate(row):
            ax = axes[i][j + offset]
            cmap = "RdBu" if low == -1 else "viridis"
            shown = ax.imshow(np.asarray(cos), vmin=low, vmax=1, cmap=cmap, interpolation="nearest")
            if i == 0:
                ax.set_title(titles[j], fontsize=9)
        if name:
            axes[i][0].set_ylabel(name, fontsize=8)
    for ax in fig.axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(shown, ax=fig.axes, shrink=0.8, label=label, extend="neither" if low == -1 else "min")
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    return fig


def sweep_heatmap(means, temperatures, betas, baseline: float, title: str = "", marked=None):
    """One panel per method: mean val mIoU of every (T, β) cell, coloured against the no-KD
    level ``baseline`` (white; red above it, blue below), each cell annotated with its mean
    and its difference to no KD. ``means``: {method: T×β array}; ``marked``: a (T, β) cell to
    outline (the report's setting)."""
    from matplotlib.colors import TwoSlopeNorm

    values = np.concatenate([np.ravel(m) for m in means.values()])
    spread = max(float(np.nanmax(np.abs(values - baseline))), 1e-4)
    norm = TwoSlopeNorm(vcenter=baseline, vmin=baseline - spread, vmax=baseline + spread)
    fig, axes = plt.subplots(1, len(means), figsize=(4.6 * len(means) + 1.0, 4.2), squeeze=False)
    for ax, (method, grid) in zip(axes[0], means.items()):
        image = ax.imshow(grid, cmap="RdBu_r", norm=norm, origin="lower")
        for i in range(len(temperatures)):
            for j in range(len(betas)):
                label = "not run" if np.isnan(grid[i, j]) else f"{grid[i, j]:.3f}\n{grid[i, j] - baseline:+.3f}"
                dark = abs(grid[i, j] - baseline) > 0.6 * spread  # the colour map's ends: black text is unreadable
                ax.text(j, i, label, ha="center", va="center", fontsize=8, color="white" if dark else "black")
        if marked is not None and marked[0] in temperatures and marked[1] in betas:
            i, j = list(temperatures).index(marked[0]), list(betas).index(marked[1])
            ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, lw=2.5, ec="black"))
        ax.set_xticks(range(len(betas)), [f"{b:g}" for b in betas])
        ax.set_yticks(range(len(temperatures)), [f"{t:g}" for t in temperatures])
        ax.set_xlabel("β (weight of the distillation term)")
        ax.set_ylabel("temperature T")
        ax.set_title(method)
    fig.colorbar(image, ax=axes[0].tolist(), label=f"mean val mIoU (white: no KD, {baseline:.4f})")
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def budget_curves(points, steps_per_factor: int, title: str = ""):
    """Val mIoU against training steps, one line per run name (no KD in black, thicker), each
    point the mean over its seeds with the standard error as a bar. ``points``: rows of
    ``budget`` (factor), ``run``, ``miou`` (one per seed)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    names = [n for n in methods.run_names() if n in set(points["run"])]
    for k, name in enumerate(names):
        of = points[points["run"] == name].groupby("budget")["miou"]
        mean, sem = of.mean(), of.std(ddof=1) / np.sqrt(of.size())
        steps = mean.index.to_numpy() * steps_per_factor
        style = {"color": "black", "lw": 2.5, "zorder": 3} if name == "none" else {"color": f"C{k}", "lw": 1.5}
        ax.errorbar(steps, mean.to_numpy(), yerr=sem.fillna(0).to_numpy(), marker="o", capsize=3,
                    label=methods.display_name(name), **style)  # fmt: skip
    ax.set_xscale("log", base=2)
    factors = sorted(points["budget"].unique())
    seeds = points.groupby("budget")["seed"].nunique() if "seed" in points else None
    ax.set_xticks(
        [f * steps_per_factor for f in factors],
        [f"{f * steps_per_factor:,}\n({f}×" + (f", {seeds[f]} seeds)" if seeds is not None else ")") for f in factors],
    )
    ax.set_xlabel("training steps (the demo's budget ×)")
    ax.set_ylabel("best val mIoU (mean ± s.e. over seeds)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig
