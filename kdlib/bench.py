"""``python -m kdlib bench``: what each KD method costs on this device, and where time goes.

Two settings by default, each measured in one process so that ratios compare like with like:

- ``report``: the report's 224² px, batch 16, FCN-ResNet50 teacher (random weights: timing
  does not depend on them), images from the embedded benchmark resized to 224 (or VOC with
  ``--dataset voc``);
- ``shapes``: the embedded benchmark's defaults (64² px, batch 16, the shipped LR-ASPP teacher).

For each: parameters and GFLOPs (``torch.utils.flop_counter``: 2 FLOPs per multiply-add) of
student and teacher; inference latency (batch 1) and throughput (batch ``batch_size``);
training images/s per method *compute only* (one batch already in memory) and *end to end*
(the real DataLoader with the report's augmentation and the default worker count); and three
ratios:

- ``kd_overhead_ratio[method]`` = KD step ÷ (teacher forward + plain student step): what a KD
  step costs beyond the two computations it cannot avoid;
- ``input_pipeline_ratio[method]`` = end-to-end ÷ compute-only images/s;
- ``cached_kd_epoch_ratio`` = a response-KD epoch with the teacher-output cache ÷ a no-KD
  epoch, both through the real DataLoader over the same images.

Times are medians over repeats after a warm-up.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from .augment import prepare_batch
from .checkpoints import load_model
from .config import SHAPES_TEACHER, Config
from .conventions import upsample_logits
from .data import build_dataset
from .files import atomic_write_text
from .losses import METHODS, needs_features, needs_teacher
from .models import TeacherWrapper, build_model, count_parameters
from .teacher_cache import WithTeacherMaps, ensure_cache, feature_bytes_per_image
from .train import environment, setup_runtime, train_loader, train_step

# repeats, end-to-end batches and the images of the timed epochs (None: the whole train split)
# are per device kind: a CPU pays seconds per FCN-ResNet50 batch; on a GPU a 32-image epoch is two
# batches, too short for an epoch ratio to mean anything
SETTINGS = {
    "report": {
        "image_size": 224,
        "teacher": "fcn_resnet50",
        "cpu": {"repeats": 2, "e2e_batches": 1, "images": 32},
        "cuda": {"repeats": 20, "e2e_batches": 20, "images": None},
    },
    "shapes": {
        "image_size": 64,
        "teacher": "lraspp_resnet18",
        "cpu": {"repeats": 5, "e2e_batches": 8, "images": None},
        "cuda": {"repeats": 50, "e2e_batches": 50, "images": None},
    },
}
TARGETS = {
    "kd_overhead_ratio": ("<=", 1.10),
    "input_pipeline_ratio": (">=", 0.85),
    "cached_kd_epoch_ratio": ("<=", 1.2),
}
VOC_TRAIN, VOC_VAL = 1464, 1449  # images per epoch in the report (train + val passes)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def gflops(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e9


def _teacher(setting: str, teacher_weights: str | None) -> TeacherWrapper:
    if SETTINGS[setting]["teacher"] == "fcn_resnet50":
        return TeacherWrapper(build_model("fcn_resnet50"))
    return TeacherWrapper(load_model(teacher_weights or SHAPES_TEACHER, expect="lraspp_resnet18"))


def bench_setting(
    setting: str,
    *,
    dataset: str,
    data_root: str,
    batch_size: int = 16,
    device: str = "auto",
    workers: int | None = None,
    teacher_weights: str | None = None,
    repeats: int | None = None,
    e2e_batches: int | None = None,
    cache_dir=None,
    log=print,
) -> dict:
    spec = SETTINGS[setting]
    runtime = setup_runtime(device)
    dev = runtime.device
    knobs = spec["cuda" if dev.type == "cuda" else "cpu"]
    repeats = repeats or knobs["repeats"]
    e2e_batches = e2e_batches or knobs["e2e_batches"]
    size = spec["image_size"]
    base = Config(
        dataset=dataset,
        data_root=data_root,
        image_size=size,
        batch_size=batch_size,
        device=device,
        amp=dev.type == "cuda",
        progress="none",
    )
    workers = base.resolved().workers if workers is None else workers
    log(f"[bench {setting}] {size}² px, batch {batch_size}, {spec['teacher']} teacher, {dev}, workers {workers}")
    cl = torch.channels_last
    student = build_model("student").to(dev, memory_format=cl)
    teacher = _teacher(setting, teacher_weights).to(dev, memory_format=cl)
    train_set = build_dataset(dataset, data_root, "train", train=True, image_size=size)
    if knobs["images"] is not None and knobs["images"] < len(train_set):
        train_set = train_set.subset(knobs["images"])
    train_set.preload()  # as the trainer does: steady state, images decoded once
    if len(train_set) < batch_size:
        raise ValueError(f"the {dataset} train split at {data_root} has fewer than {batch_size} images")
    first = next(iter(torch.utils.data.DataLoader(train_set.evaluation_view(), batch_size, shuffle=False)))
    x, y, _ = prepare_batch(first, dev, True)
    x1 = x[:1]
    result = {
        "image_size": size,
        "batch_size": batch_size,
        "device": str(dev),
        "workers": workers,
        "repeats": repeats,
        "teacher": spec["teacher"],
        "dataset": dataset,
    }

    # --- size and cost
    with torch.no_grad():
        result["student"] = {"parameters": count_parameters(student), "gflops": gflops(lambda: student.eval()(x1))}
        result["teacher_model"] = {
            "parameters": count_parameters(teacher.model),
            "gflops": gflops(lambda: teacher.teacher_forward(x1, False)),
        }

    # --- inference
    def infer(model_fn, batch):
        with torch.no_grad(), torch.autocast(dev.type, torch.bfloat16, enabled=base.amp):
            return model_fn(batch)

    def teacher_fn(b, with_features=False):
        return teacher.teacher_forward(b, with_features)

    inference = {}
    for name, fn in (("student", lambda b: student.eval()(b)), ("teacher", teacher_fn)):
        latency = timed(lambda fn=fn: infer(fn, x1), dev, repeats)
        inference[name] = {"latency_ms_batch1": 1000 * latency}
    inference["student"]["images_per_s"] = batch_size / timed(lambda: infer(student.eval(), x), dev, repeats)
    # a teacher batch costing seconds (FCN-ResNet50 on a CPU) is warmed up once, not per call
    heavy = timed(lambda: infer(teacher_fn, x), dev, 1, warmup=0) > 2.0

    # --- compute only: one batch in memory. Every timed call runs once per round, rounds
    # repeat: drift (clock, allocator, other load) touches all of them alike.
    native = teacher.native_logits(x)
    cached_logits = upsample_logits(native.float(), x.shape[-2:]).half().float()
    methods = [*METHODS, "response_cached"]
    calls, optimizers = {}, {}
    calls["teacher"] = functools.partial(infer, teacher_fn, x)
    calls["teacher_features"] = functools.partial(infer, functools.partial(teacher_fn, with_features=True), x)
    for method in methods:
        cfg = dataclasses.replace(base, method="response" if method == "response_cached" else method)
        params = list(student.parameters()) + (list(teacher.projections.parameters()) if needs_features(method) else [])
        optimizers[method] = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        cached = cached_logits if method == "response_cached" else None
        online = teacher if needs_teacher(method) else None
        calls[method] = functools.partial(train_step, cfg, student, online, optimizers[method], x, y, cached)
    student.train()
    teacher.train()
    times = {name: [] for name in calls}
    cheap = {"none", "response_cached"}
    for round_ in range(repeats + 1):  # round 0 warms up
        for name, call in calls.items():
            warming_up_a_heavy_call = heavy and round_ == 0 and name not in cheap
            feature_forward_again = heavy and round_ > 1 and name == "teacher_features"  # same convolutions
            if warming_up_a_heavy_call or feature_forward_again:
                continue
            seconds = timed(call, dev, 1, warmup=0)
            if round_:
                times[name].append(seconds)
    median = {name: statistics.median(t) for name, t in times.items()}
    teacher_s = {False: median["teacher"], True: median["teacher_features"]}
    inference["teacher"]["images_per_s"] = batch_size / teacher_s[False]
    result["inference"] = inference
    step_s = {m: median[m] for m in methods}
    log(f"[bench {setting}] compute-only steps (ms): " + ", ".join(f"{m} {1000 * v:.0f}" for m, v in median.items()))
    result["teacher_forward_ms"] = {"logits": 1000 * teacher_s[False], "logits_and_features": 1000 * teacher_s[True]}
    result["train_step_ms"] = {m: 1000 * s for m, s in step_s.items()}
    compute = {m: batch_size / s for m, s in step_s.items()}
    overhead = {m: step_s[m] / (teacher_s[needs_features(m)] + step_s["none"]) for m in ("response", "feature", "both")}

    # --- end to end: the real DataLoader, Table 2 augmentation, default workers
    e2e, epoch_s = {}, {}
    cache_dir = Path(cache_dir or tempfile.mkdtemp(prefix="kdlib-bench-cache-"))
    for method in methods:
        ds = train_set
        if method == "response_cached":
            maps, card = ensure_cache(teacher, ds, cache_dir, size, device=dev, batch_size=batch_size, log=log)
            ds = WithTeacherMaps(ds, maps)
            result["cache"] = {"bytes_per_image": card["bytes_per_image"], "build_seconds": card["seconds"]}
        cfg = dataclasses.replace(base, method="response" if method == "response_cached" else method, workers=workers)
        loader, sampler = train_loader(cfg, runtime, ds)  # the trainer's own wiring
        online = teacher if needs_teacher(method) else None
        whole_epoch = method in ("none", "response_cached")  # the cached-vs-plain epoch ratio
        limit = None if whole_epoch else e2e_batches
        # one warm-up batch starts the workers and fills the caches; a KD batch costing seconds
        # (FCN-ResNet50 on a CPU) has been warmed up above and is not run again for it
        warmup_batches = 0 if heavy and online is not None else 1
        for epoch in (0, 1):
            sampler.set_epoch(epoch)
            budget = warmup_batches if epoch == 0 else limit  # None: the whole epoch
            seen, start = 0, time.perf_counter()
            for i, batch in enumerate(loader):
                if budget is not None and i >= budget:
                    break
                xb, yb, cb = prepare_batch(batch, dev, True)
                train_step(cfg, student, online, optimizers[method], xb, yb, cb)
                seen += len(xb)
            _sync(dev)
        seconds = time.perf_counter() - start
        e2e[method] = seen / seconds
        if whole_epoch:
            epoch_s[method] = seconds
        del loader
        log(f"[bench {setting}] end to end {method}: {e2e[method]:.1f} img/s")

    result["train_images_per_s"] = {m: {"compute_only": compute[m], "end_to_end": e2e[m]} for m in methods}
    result["epoch_seconds"] = {"images": len(train_set), **epoch_s}
    result["kd_overhead_ratio"] = overhead
    result["input_pipeline_ratio"] = {m: e2e[m] / compute[m] for m in methods}
    result["cached_kd_epoch_ratio"] = epoch_s["response_cached"] / epoch_s["none"]
    if setting == "report":  # the report's epoch: 1,464 training + 1,449 validation images
        val_s = VOC_VAL / inference["student"]["images_per_s"]
        result["projected_voc_epoch_seconds"] = {m: VOC_TRAIN / e2e[m] + val_s for m in methods}
        result["teacher_cache_feature_bytes_per_image"] = feature_bytes_per_image(teacher, size)
    return result


def run_bench(
    settings=("report", "shapes"),
    *,
    dataset: str = "shapes",
    data_root: str = "data/shapes",
    out="bench.json",
    log=print,
    **kwargs,
) -> dict:
    """Measure every setting, print the table, write ``out`` (bench.json)."""
    start = time.perf_counter()
    if dataset == "shapes" and not (Path(data_root) / "benchmark.json").is_file():
        from .shapes import generate

        generate(data_root, progress=False)  # the default benchmark, when absent
    results = {s: bench_setting(s, dataset=dataset, data_root=data_root, log=log, **kwargs) for s in settings}
    report = {
        "machine": environment() | {"processor": platform.processor() or platform.machine()},
        "settings": results,
        **{key: {s: r[key] for s, r in results.items()} for key in TARGETS},
        "targets": {k: f"{op} {v}" for k, (op, v) in TARGETS.items()},
        "seconds": round(time.perf_counter() - start, 1),
    }
    atomic_write_text(json.dumps(report, indent=2) + "\n", out)
    log(format_table(report))
    log(f"wrote {out} ({report['seconds']:.0f}s)")
    return report


def _meets(key: str, value: float) -> str:
    op, target = TARGETS[key]
    ok = value <= target if op == "<=" else value >= target
    return "ok" if ok else "MISSED"


def format_table(report: dict) -> str:
    lines = []
    for setting, r in report["settings"].items():
        lines += [
            f"\n== {setting}: {r['image_size']}² px, batch {r['batch_size']}, {r['device']}, "
            f"workers {r['workers']}, teacher {r['teacher']} ==",
            f"{'':24}{'params':>12}{'GFLOPs':>9}{'lat. b1 ms':>12}{'infer img/s':>13}",
        ]
        for name, size in (("student", r["student"]), ("teacher", r["teacher_model"])):
            inf = r["inference"][name]
            lines.append(
                f"{name:24}{size['parameters']:>12,}{size['gflops']:>9.2f}"
                f"{inf['latency_ms_batch1']:>12.1f}{inf['images_per_s']:>13.1f}"
            )
        lines.append(f"{'train img/s':24}{'compute':>12}{'end-to-end':>12}{'pipeline':>10}{'KD overhead':>13}")
        for m, v in r["train_images_per_s"].items():
            over = r["kd_overhead_ratio"].get(m)
            pipe = r["input_pipeline_ratio"][m]
            lines.append(
                f"{m:24}{v['compute_only']:>12.1f}{v['end_to_end']:>12.1f}"
                f"{pipe:>7.2f} {_meets('input_pipeline_ratio', pipe):<3}"
                + (f"{over:>10.3f} {_meets('kd_overhead_ratio', over)}" if over else "")
            )
        ratio = r["cached_kd_epoch_ratio"]
        lines.append(
            f"cached response-KD epoch / no-KD epoch ({r['epoch_seconds']['images']} images): "
            f"{ratio:.3f} {_meets('cached_kd_epoch_ratio', ratio)}"
        )
    return "\n".join(lines)
