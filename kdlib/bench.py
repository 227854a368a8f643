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

Every figure is the median of repeated measurements after a warm-up, with its interquartile
range under ``spread`` (ratios are taken per round, inside which every call runs once, so a
slow spell of the machine touches both sides of a ratio alike). Batch-1 latency is measured as
a deployment runs it (eval and inference mode, the faster memory format) and printed next to
its floor on this device: the model's FLOPs over the measured fp32 matmul throughput.
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

from . import methods
from .augment import prepare_batch
from .checkpoints import load_model
from .config import SHAPES_TEACHER, Config
from .conventions import upsample_logits
from .data import build_dataset
from .files import atomic_write_text
from .models import TeacherWrapper, build_model, count_parameters
from .teacher_cache import WithTeacherMaps, ensure_cache, feature_bytes_per_image
from .train import environment, setup_runtime, train_loader, train_step

# Per device kind: `rounds` (every measurement runs once per round, so a slow spell of the machine
# touches both sides of a ratio alike; ratios are taken per round); `steps` per method and round,
# compute-only and through the DataLoader; `passes` over the training split per timed epoch (long
# enough for the cached/plain epoch ratio to mean anything); `latency` calls at batch 1 (student,
# teacher); `batch`, unless --batch-size says otherwise. A CPU pays seconds per FCN-ResNet50 batch
# at 224 px, so there the report setting times batches of 8 (its ratios are per step).
SETTINGS = {
    "report": {
        "image_size": 224,
        "teacher": "fcn_resnet50",
        "cpu": {"rounds": 5, "steps": 1, "passes": 1, "images": 32, "latency": (30, 10), "batch": 8},
        "cuda": {"rounds": 20, "steps": 10, "passes": 4, "images": None, "latency": (100, 50), "batch": 16},
    },
    "shapes": {
        "image_size": 64,
        "teacher": "lraspp_resnet18",
        "cpu": {"rounds": 9, "steps": 6, "passes": 8, "images": None, "latency": (50, 50), "batch": 16},
        "cuda": {"rounds": 30, "steps": 20, "passes": 16, "images": None, "latency": (100, 100), "batch": 16},
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


def seconds_of(fn, device) -> float:
    """Wall time of one call of ``fn``, the device's queue drained before and after."""
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def spread(values) -> dict:
    """Median and interquartile range of repeated measurements (``n`` of them)."""
    values = sorted(values)
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else values * 3
    return {"median": statistics.median(values), "q1": q1, "q3": q3, "n": len(values)}


def gflops(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e9


def matmul_gflops_per_s(device, size: int = 1024, repeats: int = 10) -> float:
    """This device's fp32 matrix-multiply throughput, the best of ``repeats``: the ceiling a
    convolution network's FLOPs are measured against."""
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    a @ b
    best = min(seconds_of(lambda: a @ b, device) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def _teacher(setting: str, teacher_weights: str | None) -> TeacherWrapper:
    if SETTINGS[setting]["teacher"] == "fcn_resnet50":
        return TeacherWrapper(build_model("fcn_resnet50"))
    return TeacherWrapper(load_model(teacher_weights or SHAPES_TEACHER, expect="lraspp_resnet18"))


def latency_ms(model_fn, module: torch.nn.Module, x1: torch.Tensor, device, repeats: int) -> dict:
    """Batch-1 latency as a deployment runs it: eval mode, inference mode, 5 warm-up calls,
    ``repeats`` timed calls, in each memory format; the faster one is the result."""
    by_format = {}
    was_training = module.training
    module.eval()
    for name, fmt in (("channels_last", torch.channels_last), ("contiguous", torch.contiguous_format)):
        module.to(memory_format=fmt)  # outside inference mode: the weights stay ordinary tensors
        x = x1.contiguous(memory_format=fmt)
        with torch.inference_mode():
            for _ in range(5):
                model_fn(x)
            by_format[name] = spread(
                [1000 * seconds_of(functools.partial(model_fn, x), device) for _ in range(repeats)]
            )
    module.train(was_training)
    module.to(memory_format=torch.channels_last)
    best = min(by_format, key=lambda k: by_format[k]["median"])
    return by_format[best] | {"memory_format": best, "by_format": by_format}


def bench_setting(
    setting: str,
    *,
    dataset: str,
    data_root: str,
    batch_size: int | None = None,
    device: str = "auto",
    workers: int | None = None,
    teacher_weights: str | None = None,
    repeats: int | None = None,
    steps: int | None = None,
    cache_dir=None,
    log=print,
) -> dict:
    """Every figure of one setting (see the module docstring), each with its spread."""
    spec = SETTINGS[setting]
    runtime = setup_runtime(device)
    dev = runtime.device
    knobs = dict(spec["cuda" if dev.type == "cuda" else "cpu"])
    knobs["rounds"] = repeats or knobs["rounds"]
    knobs["steps"] = steps or knobs["steps"]
    batch_size = batch_size or knobs["batch"]
    size = spec["image_size"]
    base = Config(dataset=dataset, data_root=data_root, image_size=size, batch_size=batch_size, device=device)
    base = dataclasses.replace(base, amp=dev.type == "cuda", progress="none")
    workers = base.resolved().workers if workers is None else workers
    base = dataclasses.replace(base, workers=workers)
    log(f"[bench {setting}] {size}² px, batch {batch_size}, {spec['teacher']} teacher, {dev}, workers {workers}")
    student = build_model("student").to(dev, memory_format=torch.channels_last)
    teacher = _teacher(setting, teacher_weights).to(dev, memory_format=torch.channels_last)
    train_set = build_dataset(dataset, data_root, "train", train=True, image_size=size)
    if knobs["images"] is not None and knobs["images"] < len(train_set):
        train_set = train_set.subset(knobs["images"])
    train_set.preload()  # as the trainer does: steady state, images decoded once
    if len(train_set) < batch_size:
        raise ValueError(f"the {dataset} train split at {data_root} has fewer than {batch_size} images")
    first = next(iter(torch.utils.data.DataLoader(train_set.evaluation_view(), batch_size, shuffle=False)))
    x, y, _ = prepare_batch(first, dev, True)
    result = {
        "image_size": size,
        "batch_size": batch_size,
        "device": str(dev),
        "workers": workers,
        "rounds": knobs["rounds"],
        "teacher": spec["teacher"],
        "dataset": dataset,
    }
    result |= _size_and_latency(student, teacher, x, dev, base.amp, knobs)
    rounds = _training_rounds(base, runtime, student, teacher, x, y, train_set, knobs, cache_dir, log, setting, result)
    step_s = rounds["step_s"]
    result["inference"]["teacher"]["images_per_s"] = batch_size / rounds["teacher_s"][False]["median"]
    result["teacher_forward_ms"] = {
        "logits": _ms(rounds["teacher_s"][False]),
        "logits_and_features": _ms(rounds["teacher_s"][True]),
    }
    result["train_step_ms"] = {m: _ms(t) for m, t in step_s.items()}
    result["train_images_per_s"] = {
        m: {"compute_only": batch_size / step_s[m]["median"], "end_to_end": rounds["images_per_s"][m]["median"]}
        for m in step_s
    }
    result["kd_overhead_ratio"] = {m: r["median"] for m, r in rounds["overhead"].items()}
    result["input_pipeline_ratio"] = {m: r["median"] for m, r in rounds["pipeline"].items()}
    result["cached_kd_epoch_ratio"] = rounds["epoch_ratio"]["median"]
    result["spread"] = {
        "kd_overhead_ratio": rounds["overhead"],
        "input_pipeline_ratio": rounds["pipeline"],
        "cached_kd_epoch_ratio": rounds["epoch_ratio"],
        "end_to_end_images_per_s": rounds["images_per_s"],
    }
    if setting == "report":  # the report's epoch: 1,464 training + 1,449 validation images
        val_s = VOC_VAL / result["inference"]["student"]["images_per_s"]
        result["projected_voc_epoch_seconds"] = {
            m: VOC_TRAIN / v["end_to_end"] + val_s for m, v in result["train_images_per_s"].items()
        }
        result["teacher_cache_feature_bytes_per_image"] = feature_bytes_per_image(teacher, size)
    return result


def _ms(timing: dict) -> dict:
    return {k: 1000 * v if k != "n" else v for k, v in timing.items()}


def _size_and_latency(student, teacher, x, dev, amp: bool, knobs: dict) -> dict:
    """Parameters, GFLOPs, batch-1 latency next to the floor the device's matmul throughput
    allows (GFLOPs ÷ GFLOP/s), and the student's batch throughput."""
    x1 = x[:1]
    student.eval()
    with torch.no_grad():
        sizes = {
            "student": {"parameters": count_parameters(student), "gflops": gflops(lambda: student(x1))},
            "teacher_model": {
                "parameters": count_parameters(teacher.model),
                "gflops": gflops(lambda: teacher.teacher_forward(x1, False)),
            },
        }
    throughput = matmul_gflops_per_s(dev)
    student_repeats, teacher_repeats = knobs["latency"]
    with torch.autocast(dev.type, torch.bfloat16, enabled=amp):
        latency = {
            "student": latency_ms(student, student, x1, dev, student_repeats),
            "teacher": latency_ms(
                functools.partial(teacher.teacher_forward, with_features=False), teacher.model, x1, dev, teacher_repeats
            ),
        }
        with torch.inference_mode():
            batch = [seconds_of(lambda: student(x), dev) for _ in range(knobs["rounds"] + 1)][1:]
    inference = {
        name: {
            "latency_ms_batch1": lat["median"],
            "latency_batch1": lat,
            "floor_ms_batch1": 1000 * sizes[key]["gflops"] / throughput,
        }
        for (name, lat), key in zip(latency.items(), ("student", "teacher_model"))
    }
    inference["student"]["images_per_s"] = len(x) / statistics.median(batch)
    return sizes | {"inference": inference, "matmul_gflops_per_s": throughput}


def _training_rounds(base, runtime, student, teacher, x, y, train_set, knobs, cache_dir, log, setting, result):
    """The training figures, in rounds. Each round: the teacher's forward with and without
    features on a batch in memory; for every method, ``steps`` training steps on that batch
    (compute only) and then ``steps`` through the real DataLoader (the trainer's own wiring,
    Table 2 augmentation, the default workers); then an epoch of ``passes`` over the split
    without KD and one with the cached teacher. Per round: KD overhead = KD step ÷ (teacher
    forward + plain step), input-pipeline ratio = DataLoader images/s ÷ compute-only images/s
    of the same method, and the cached/plain epoch ratio."""
    dev, k = runtime.device, knobs["steps"]
    cache_dir = Path(cache_dir or tempfile.mkdtemp(prefix="kdlib-bench-cache-"))
    maps, card = ensure_cache(
        teacher, train_set, cache_dir, base.image_size, device=dev, batch_size=base.batch_size, log=log
    )
    result["cache"] = {"bytes_per_image": card["bytes_per_image"], "build_seconds": card["seconds"]}
    cached_logits = upsample_logits(teacher.native_logits(x).float(), x.shape[-2:]).half().float()
    timed = [*methods.names(), "response_cached"]
    runs = {}
    for method in timed:
        trained = "response" if method == "response_cached" else method
        cfg = dataclasses.replace(base, method=trained, train_repeats=knobs["passes"]).resolved()  # its α, β, T
        data = WithTeacherMaps(train_set, maps) if method == "response_cached" else train_set
        loader, sampler = train_loader(cfg, runtime, data)
        declared = methods.get(cfg.method)
        params = list(student.parameters()) + (
            list(teacher.projections.parameters()) if declared.trains_projections else []
        )
        optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        online = teacher if declared.needs_teacher else None
        runs[method] = (cfg, loader, sampler, online, optimizer)

    def in_memory(method: str) -> float:
        cfg, _, _, online, optimizer = runs[method]
        cached = cached_logits if method == "response_cached" else None
        return (
            seconds_of(
                lambda: [train_step(cfg, student, online, optimizer, x, y, cached=cached) for _ in range(k)], dev
            )
            / k
        )

    def through_loader(method: str, epoch: int, batches: int | None) -> tuple[int, float]:
        cfg, loader, sampler, online, optimizer = runs[method]
        sampler.set_epoch(epoch)
        seen, start = 0, time.perf_counter()
        for i, batch in enumerate(loader):
            if batches is not None and i >= batches:
                break
            xb, yb, cb = prepare_batch(batch, dev, True)
            train_step(cfg, student, online, optimizer, xb, yb, cached=cb)
            seen += len(xb)
        _sync(dev)
        return seen, time.perf_counter() - start

    def teacher_forward(with_features: bool) -> float:
        with torch.no_grad(), torch.autocast(dev.type, torch.bfloat16, enabled=base.amp):
            return seconds_of(lambda: teacher.teacher_forward(x, with_features), dev)

    student.train()
    teacher.train()
    teacher_forward(True)
    for method in timed:  # warm-up: every step once, the loaders' workers started
        through_loader(method, 0, 1)
    times = {name: [] for name in ("teacher", "teacher_features", *timed)}
    rates, pipeline, epoch_ratio = {m: [] for m in timed}, {m: [] for m in timed}, []
    for round_ in range(1, knobs["rounds"] + 1):
        times["teacher"].append(teacher_forward(False))
        times["teacher_features"].append(teacher_forward(True))
        for method in timed:
            step = in_memory(method)
            seen, seconds = through_loader(method, round_, k)
            times[method].append(step)
            rates[method].append(seen / seconds)
            pipeline[method].append(seen / seconds / (len(x) / step))
        plain = through_loader("none", round_, None)[1]
        epoch_ratio.append(through_loader("response_cached", round_, None)[1] / plain)
    overhead = {
        m: spread(
            s / (times["teacher_features" if methods.get(m).reads_features else "teacher"][r] + times["none"][r])
            for r, s in enumerate(times[m])
        )
        for m in methods.kd_names()
    }
    log(
        f"[bench {setting}] medians: step (ms) "
        + ", ".join(f"{m} {1000 * statistics.median(t):.0f}" for m, t in times.items())
        + "; through the loader (img/s) "
        + ", ".join(f"{m} {statistics.median(r):.1f}" for m, r in rates.items())
    )
    result["epoch_seconds"] = {"images": len(train_set) * knobs["passes"]}
    return {
        "teacher_s": {False: spread(times["teacher"]), True: spread(times["teacher_features"])},
        "step_s": {m: spread(times[m]) for m in timed},
        "overhead": overhead,
        "images_per_s": {m: spread(r) for m, r in rates.items()},
        "pipeline": {m: spread(r) for m, r in pipeline.items()},
        "epoch_ratio": spread(epoch_ratio),
    }


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


def _iqr(r: dict, key: str, method: str | None = None) -> str:
    d = r["spread"][key] if method is None else r["spread"][key][method]
    return f"[{d['q1']:.2f}-{d['q3']:.2f}]"


def format_table(report: dict) -> str:
    lines = []
    for setting, r in report["settings"].items():
        lines += [
            f"\n== {setting}: {r['image_size']}² px, batch {r['batch_size']}, {r['device']}, "
            f"workers {r['workers']}, teacher {r['teacher']}, {r['rounds']} rounds; "
            f"matmul {r['matmul_gflops_per_s']:.0f} GFLOP/s ==",
            f"{'':18}{'params':>12}{'GFLOPs':>9}{'lat. b1 ms [IQR]':>22}{'floor ms':>10}{'infer img/s':>13}",
        ]
        for name, size in (("student", r["student"]), ("teacher", r["teacher_model"])):
            inf = r["inference"][name]
            lat = inf["latency_batch1"]
            lines.append(
                f"{name:18}{size['parameters']:>12,}{size['gflops']:>9.2f}"
                f"{lat['median']:>9.1f} [{lat['q1']:.1f}-{lat['q3']:.1f}]".ljust(61)
                + f"{inf['floor_ms_batch1']:>8.1f}{inf['images_per_s']:>13.1f}"
            )
        lines.append(
            f"{'train img/s':18}{'compute':>9}{'end-to-end':>12}{'pipeline [IQR]':>22}{'KD overhead [IQR]':>24}"
        )
        for m, v in r["train_images_per_s"].items():
            over = r["kd_overhead_ratio"].get(m)
            pipe = r["input_pipeline_ratio"][m]
            row = (
                f"{m:18}{v['compute_only']:>9.1f}{v['end_to_end']:>12.1f}"
                f"{pipe:>7.2f} {_iqr(r, 'input_pipeline_ratio', m)} {_meets('input_pipeline_ratio', pipe):<6}"
            )
            if over is not None:
                row += f"{over:>8.3f} {_iqr(r, 'kd_overhead_ratio', m)} {_meets('kd_overhead_ratio', over)}"
            lines.append(row)
        ratio = r["cached_kd_epoch_ratio"]
        lines.append(
            f"cached response-KD epoch / no-KD epoch ({r['epoch_seconds']['images']} images): "
            f"{ratio:.3f} {_iqr(r, 'cached_kd_epoch_ratio')} {_meets('cached_kd_epoch_ratio', ratio)}"
        )
    return "\n".join(lines)
