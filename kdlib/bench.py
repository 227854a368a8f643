"""``python -m kdlib bench``: what each KD method costs on this device, and where time goes.

Two settings by default, measured in one process, their rounds interleaved over the run
(``interleave``), so that every figure samples the whole run:

- ``report``: the report's 224² px and FCN-ResNet50 teacher (random weights: timing
  does not depend on them), images from the embedded benchmark resized to 224 (or VOC with
  ``--dataset voc``), batches of 16 on a GPU and of 2 on a CPU, where one FCN-ResNet50 batch
  costs seconds;
- ``shapes``: the embedded benchmark's defaults (64² px, batch 16, the shipped LR-ASPP teacher).

For each: parameters and GFLOPs (``torch.utils.flop_counter``: 2 FLOPs per multiply-add) of
student and teacher; inference latency (batch 1) and throughput (batch ``batch_size``);
training images/s per method *compute only* (one batch already in memory) and *end to end*
(the real DataLoader with the report's augmentation and the default worker count); and three
ratios:

- ``kd_overhead_ratio[method]`` = KD step ÷ (teacher forward + plain student step): what a KD
  step costs beyond the two computations it cannot avoid;
- ``input_pipeline_ratio[method]`` = end-to-end ÷ compute-only images/s, for the methods timed
  through the DataLoader (``loader_timed``: without loader workers the plain step and the cached
  variant; the other methods' end-to-end rates are their compute-only steps plus the plain
  step's input time, listed under ``end_to_end_derived``);
- ``cached_kd_epoch_ratio`` = a response-KD epoch with the teacher-output cache ÷ a no-KD
  epoch, both through the real DataLoader over the same images.

Every figure is the median of repeated measurements after a warm-up, with its interquartile
range and a 95 % interval for the median (``median_interval``) under ``spread``. Ratios are
taken per round; a KD step is timed right next to the teacher forward and plain step it is
divided by, so that a slow spell of the machine touches both sides alike. A fixed matmul timed
before every measurement says whether the machine held still (``steadiness``). Batch-1 latency
is measured as a deployment runs it (eval and inference mode, the faster memory format) and
printed next to a rough floor on this device: the model's FLOPs over the fp32 matmul throughput
measured once at the start (a drift of the machine's speed can put it above a latency).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
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
from .train import build_adapters, environment, kd_parameters, setup_runtime, train_loader, train_step

# Per device kind: `rounds` (every figure is measured once per round, and ratios are taken within
# the round; the interval of a median needs six rounds to reach 95 %); `steps` per method and round,
# compute-only and through the DataLoader; `passes` over the training split per timed epoch (long
# enough for the cached/plain epoch ratio to mean anything); `latency`: batch-1 calls per round
# (student, teacher); `batch`, unless --batch-size says otherwise. On a CPU the two settings'
# rounds are interleaved over make bench's 8 minutes; at 224 px one FCN-ResNet50 batch costs
# seconds there, so the report setting times batches of 2 (its ratios are per step): what buys
# the rounds.
SETTINGS = {
    "report": {
        "image_size": 224,
        "teacher": "fcn_resnet50",
        "cpu": {"rounds": 8, "steps": 1, "passes": 1, "images": 32, "latency": (4, 1), "batch": 2},
        "cuda": {"rounds": 20, "steps": 10, "passes": 4, "images": None, "latency": (10, 5), "batch": 16},
    },
    "shapes": {
        "image_size": 64,
        "teacher": "lraspp_resnet18",
        "cpu": {"rounds": 12, "steps": 3, "passes": 4, "images": None, "latency": (5, 4), "batch": 16},
        "cuda": {"rounds": 30, "steps": 20, "passes": 16, "images": None, "latency": (10, 10), "batch": 16},
    },
}
TARGETS = {
    "kd_overhead_ratio": ("<=", 1.10),
    "input_pipeline_ratio": (">=", 0.85),
    "cached_kd_epoch_ratio": ("<=", 1.2),
}
# The side of 1.0 each ratio cannot fall on, by what it measures: a KD step does all of the
# teacher's forward and the plain step and more, a DataLoader cannot feed a step faster than a
# batch already in memory, and a cached epoch does a plain epoch's work and more. A ratio whose
# interval lies wholly on that side is noise (or a measurement that does not compare like with
# like), never a speed-up.
BOUNDED = {"kd_overhead_ratio": "below", "input_pipeline_ratio": "above", "cached_kd_epoch_ratio": "below"}
LEVEL = 0.95  # confidence of every interval bench.json gives
# The machine is steady when a fixed matmul, timed before every measurement, varies by at most
# STEADY_SPREAD (interquartile range over median) and gets at least STEADY_CPU_SHARE of the cores
# its threads ask for (process CPU time over wall time × threads) in three probes of four (the
# share's lower quartile, so a spell of load counts, not only a constant one). On this project's
# 2-core machine, idle, the spread was 8-21 % and the share 0.99-1.00; with a busy loop beside it
# 75 % and 0.73, with a second torch process 28 % and 0.50 (docs/speed.md).
STEADY_SPREAD, STEADY_CPU_SHARE = 0.35, 0.85
VOC_TRAIN, VOC_VAL = 1464, 1449  # images per epoch in the report (train + val passes)
# Without loader workers (a CPU's default on 2 cores) loading and the step take turns, and the
# input time is the same for every method but the cached one: only these two are timed through
# the DataLoader, the others' end-to-end rates derived (end_to_end_rate; docs/speed.md says what
# that saves). With workers the loading overlaps the step, and every method is timed through it.
LOADER_TIMED = ("none", "response_cached")


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


def median_interval(values, level: float = LEVEL) -> dict:
    """A distribution-free confidence interval for the median of repeated measurements.

    With ``n`` values sorted, x(1) ≤ ... ≤ x(n), the interval [x(j), x(n+1-j)] holds the true
    median unless j-1 or fewer of the values fall on one side of it, so it covers it with
    probability 1 - 2·P(B ≤ j-1), B ~ Binomial(n, 1/2) (the sign-test interval; Conover,
    *Practical Nonparametric Statistics*, 3rd ed., §3.2). ``j`` is the largest whose coverage is
    at least ``level``; when even [x(1), x(n)] falls short (n ≤ 5 at 95 %) that is the interval
    and ``coverage`` says what it reaches. No shape is assumed: a slow spell of the machine
    makes a long tail on one side, which a t-interval would spread over both.
    """
    values = sorted(values)
    n = len(values)

    def coverage(j: int) -> float:
        return 1 - 2 * sum(math.comb(n, i) for i in range(j)) / 2**n

    j = 1
    while 2 * (j + 1) <= n + 1 and coverage(j + 1) >= level:
        j += 1
    return {"lo": values[j - 1], "hi": values[n - j], "coverage": coverage(j)}


def spread(values) -> dict:
    """Median, interquartile range and the median's confidence interval (``median_interval``)
    of repeated measurements (``n`` of them)."""
    values = sorted(values)
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else values * 3
    return {"median": statistics.median(values), "q1": q1, "q3": q3, "n": len(values)} | median_interval(values)


class SteadinessProbe:
    """A fixed workload timed again and again through a bench run: ``size``² fp32 matmuls,
    ``calls`` of them (50-60 ms on this project's 2-core CPU). Each call returns its wall seconds and the
    share of the cores its threads asked for that the process got (CPU time over wall time ×
    threads; ``None`` on a GPU, where the host waits). On a machine left to the bench both stay
    put; a second process on the cores makes the probe slower in some rounds than in others
    and lowers its share, which is how ``steadiness`` tells figures that cannot be trusted."""

    def __init__(self, device: torch.device, size: int = 512, calls: int = 32):
        self.device, self.calls = device, calls
        self.a, self.b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
        self()  # a warm-up call, not part of the run
        self.start = time.perf_counter()  # what the settings' series count their seconds from

    def __call__(self) -> tuple[float, float | None]:
        _sync(self.device)
        wall, cpu = time.perf_counter(), time.process_time()
        with torch.autocast(self.device.type, enabled=False):  # the same fp32 work wherever it is called
            for _ in range(self.calls):
                self.a @ self.b
        _sync(self.device)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        share = None if self.device.type == "cuda" else cpu / (wall * torch.get_num_threads())
        return wall, share


def steadiness(samples: list[tuple[float, float | None]]) -> dict:
    """Whether the machine held still while the figures were measured: the probe's spread
    (interquartile range over median; a slow spell of another process widens it) and the lower
    quartile of its CPU share (a process beside the bench lowers it), against ``STEADY_SPREAD`` and
    ``STEADY_CPU_SHARE``; ``warning`` says what failed and what to do."""
    probe = spread([1000 * wall for wall, _ in samples])
    shares = [share for _, share in samples if share is not None]
    variation = (probe["q3"] - probe["q1"]) / probe["median"]
    cpu_share = spread(shares)["q1"] if shares else None
    problems = []
    if variation > STEADY_SPREAD:
        problems.append(f"a fixed matmul's time varied by {variation:.0%} across the run (IQR over median)")
    if cpu_share is not None and cpu_share < STEADY_CPU_SHARE:
        problems.append(
            f"the bench got {cpu_share:.0%} or less of the cores its threads asked for in a quarter of its probes"
        )
    warning = None
    if problems:
        warning = (
            "the machine was not steady: " + " and ".join(problems) + "; another process probably shares the "
            "CPU, so these figures cannot be trusted: rerun make bench with nothing else running"
        )
    return {
        "probe_ms": probe,
        "variation": variation,
        "cpu_share": cpu_share,
        "steady": not problems,
        "warning": warning,
    }


def verdict(key: str, s: dict) -> str:
    """How the table reads one ratio from its median and interval: no measurable cost when the
    interval holds 1.0; noise when it lies wholly on the side ``BOUNDED`` rules out (a speed-up
    there would be a measurement that does not compare like with like); the ratio and its
    interval always, and the interval's coverage when too few rounds reach ``LEVEL``."""
    shown = f"{s['median']:.2f} [{s['lo']:.2f}-{s['hi']:.2f}]"
    if s.get("coverage", LEVEL) < LEVEL - 1e-9:  # too few rounds for the stated level
        shown += f" ({s['coverage']:.0%} interval)"
    if s["lo"] <= 1 <= s["hi"]:
        return f"no measurable cost: {shown}"
    if (s["hi"] < 1) if BOUNDED[key] == "below" else (s["lo"] > 1):
        return f"noise: {shown}, cannot be {BOUNDED[key]} 1"
    return shown


def _medians(tree, path=()):
    """Every (path, spread) in a bench report, the steadiness probe left out."""
    if isinstance(tree, dict):
        if {"median", "lo", "hi"} <= tree.keys():
            yield path, tree
            return
        for key, value in tree.items():
            if key != "steadiness":
                yield from _medians(value, (*path, key))


def compare(a: dict, b: dict, tolerance: float = 0.05) -> list[dict]:
    """Two bench reports figure by figure: for every median both give, how far apart they are
    (the larger over the smaller, minus one), whether that is within ``tolerance``, and whether
    each one's interval holds the other's median."""
    theirs = dict(_medians(b))
    derived = {  # end-to-end rates computed from other figures, not measured: nothing of their own to compare
        (setting, m)
        for report in (a, b)
        for setting, r in report.get("settings", {}).items()
        for m in r.get("end_to_end_derived", ())
    }
    rows = []
    for path, x in _medians(a):
        if path not in theirs:
            continue
        if path[2:4] == ("spread", "end_to_end_images_per_s") and (path[1], path[4]) in derived:
            continue
        y = theirs[path]
        low, high = sorted((x["median"], y["median"]))
        apart = high / low - 1 if low > 0 else math.inf
        rows.append(
            {
                "figure": ".".join(map(str, path)),
                "a": x["median"],
                "b": y["median"],
                "apart": apart,
                "agree": apart <= tolerance,
                "a_holds_b": x["lo"] <= y["median"] <= x["hi"],
                "b_holds_a": y["lo"] <= x["median"] <= y["hi"],
            }
        )
    return rows


def format_comparison(rows: list[dict], tolerance: float = 0.05) -> str:
    """The comparison in a few lines: how many medians agree, the farthest apart, and every
    figure that fails either test."""
    agree = sum(r["agree"] for r in rows)
    held = sum(r["a_holds_b"] and r["b_holds_a"] for r in rows)
    worst = max(rows, key=lambda r: r["apart"])
    kinds = {}  # a drift of the machine's speed moves absolute figures more than ratios taken within a round
    for r in rows:
        kind = "ratios" if "ratio" in r["figure"] else "absolute"
        kinds.setdefault(kind, []).append(r["agree"])
    lines = [
        f"{agree} of {len(rows)} medians within {tolerance:.0%}; farthest apart: {worst['figure']} "
        f"({worst['a']:.4g} vs {worst['b']:.4g}, {worst['apart']:.1%})",
        "by kind: " + ", ".join(f"{k} {sum(v)} of {len(v)}" for k, v in sorted(kinds.items())),
        f"{held} of {len(rows)} figures have each run's median inside the other's interval",
    ]
    for r in rows:
        if not (r["agree"] and r["a_holds_b"] and r["b_holds_a"]):
            miss = [] if r["agree"] else [f"{r['apart']:.1%} apart"]
            miss += [] if r["a_holds_b"] else ["outside a's interval"]
            miss += [] if r["b_holds_a"] else ["outside b's interval"]
            lines.append(f"  {r['figure']}: {r['a']:.4g} vs {r['b']:.4g} ({', '.join(miss)})")
    return "\n".join(lines)


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


def interleave(rounds: dict[str, int]) -> list[str]:
    """The order in which the settings' rounds run: each setting's k-th of n rounds at about
    (k + ½)/n of the run, so that every setting's figures sample the whole run. This machine's
    speed drifts over minutes (docs/speed.md); a setting measured in one stretch would carry
    that stretch's speed, and two runs would differ by the drift between their stretches."""
    slots = [((k + 0.5) / n, i, name) for i, (name, n) in enumerate(rounds.items()) for k in range(n)]
    return [name for *_, name in sorted(slots)]


MEMORY_FORMATS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}


def _choose_format(module: torch.nn.Module, model_fn, x1: torch.Tensor, device, calls: int) -> dict[str, float]:
    """The median batch-1 seconds in each memory format, from ``calls`` timed calls in each after
    3 warm-up calls: the faster is the format every round's latency is measured in (the two
    differ by far more than the machine drifts in a few seconds)."""
    medians = {}
    for name, fmt in MEMORY_FORMATS.items():
        module.to(memory_format=fmt)  # outside inference mode: the weights stay ordinary tensors
        x = x1.contiguous(memory_format=fmt)
        with torch.inference_mode():
            for _ in range(3):
                model_fn(x)
            medians[name] = statistics.median(seconds_of(functools.partial(model_fn, x), device) for _ in range(calls))
    module.to(memory_format=torch.channels_last)
    return medians


class SettingBench:
    """One setting's figures (see the module docstring), measured round by round.

    The constructor builds everything and warms it up (models, data, teacher cache, FLOPs, the
    faster memory format for batch-1 inference); each call of :meth:`round` measures every figure
    once: batch-1 latency of student and teacher and the student's batch inference (eval and
    inference mode), the teacher's forward, every method's training step next to what it is
    compared with, the loader-timed steps and the cached and plain epochs, with the steadiness
    probe before each measurement. :meth:`result` gathers the rounds into the setting's part of
    bench.json. ``run_bench`` interleaves the rounds of several settings."""

    def __init__(
        self,
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
        probe: SteadinessProbe | None = None,
        log=print,
    ):
        started = time.perf_counter()
        spec = SETTINGS[setting]
        self.setting, self.log = setting, log
        self.runtime = setup_runtime(device)
        dev = self.dev = self.runtime.device
        knobs = dict(spec["cuda" if dev.type == "cuda" else "cpu"])
        knobs["rounds"] = repeats or knobs["rounds"]
        knobs["steps"] = steps or knobs["steps"]
        batch_size = batch_size or knobs["batch"]
        size = spec["image_size"]
        base = Config(dataset=dataset, data_root=data_root, image_size=size, batch_size=batch_size, device=device)
        base = dataclasses.replace(base, amp=dev.type == "cuda", progress="none")
        workers = base.resolved().workers if workers is None else workers
        self.base = base = dataclasses.replace(base, workers=workers)
        knobs["loader_timed"] = LOADER_TIMED if workers == 0 else None  # None: every method
        self.knobs = knobs
        log(f"[bench {setting}] {size}² px, batch {batch_size}, {spec['teacher']} teacher, {dev}, workers {workers}")
        self.student = build_model("student").to(dev, memory_format=torch.channels_last)
        self.teacher = _teacher(setting, teacher_weights).to(dev, memory_format=torch.channels_last)
        train_set = build_dataset(dataset, data_root, "train", train=True, image_size=size)
        if knobs["images"] is not None and knobs["images"] < len(train_set):
            train_set = train_set.subset(knobs["images"])
        train_set.preload()  # as the trainer does: steady state, images decoded once
        if len(train_set) < batch_size:
            raise ValueError(f"the {dataset} train split at {data_root} has fewer than {batch_size} images")
        first = next(iter(torch.utils.data.DataLoader(train_set.evaluation_view(), batch_size, shuffle=False)))
        self.x, self.y, _ = prepare_batch(first, dev, True)
        self.info = {
            "image_size": size,
            "batch_size": batch_size,
            "device": str(dev),
            "workers": workers,
            "rounds": knobs["rounds"],
            "teacher": spec["teacher"],
            "dataset": dataset,
        }
        self._sizes()
        self._build_methods(train_set, cache_dir)
        self._warm_up()
        self.probe = probe or SteadinessProbe(dev)
        self.samples = []  # (seconds since the probe's start, wall s, CPU share) of this setting's probes
        self.timed = [*methods.names(), "response_cached"]
        self.kd = set(methods.kd_names())
        self.times = {name: [] for name in ("teacher", "teacher_features", *self.timed)}
        self.latency = {"student": [], "teacher": []}
        self.batch_inference = []
        self.rates, self.pipeline = {m: [] for m in self.timed}, {m: [] for m in self.timed}
        self.ratios, self.epoch_ratio, self.derived = {m: [] for m in self.kd}, [], set()
        self.done = 0
        self.seconds = time.perf_counter() - started

    # --- building and warming up -------------------------------------------------------------

    def _sizes(self) -> None:
        """Parameters and GFLOPs of both networks, the device's matmul throughput (the latency
        floor's denominator) and the faster memory format of each for batch-1 inference."""
        student, teacher, x1, dev = self.student, self.teacher, self.x[:1], self.dev
        student.eval()
        with torch.no_grad():
            self.sizes = {
                "student": {"parameters": count_parameters(student), "gflops": gflops(lambda: student(x1))},
                "teacher_model": {
                    "parameters": count_parameters(teacher.model),
                    "gflops": gflops(lambda: teacher.teacher_forward(x1, False)),
                },
            }
        self.throughput = matmul_gflops_per_s(dev)
        self.teacher_call = functools.partial(teacher.teacher_forward, with_features=False)
        calls = [max(n, 5) for n in self.knobs["latency"]]  # one call per round may be all a round takes
        with torch.autocast(dev.type, torch.bfloat16, enabled=self.base.amp):
            self.by_format = {
                "student": _choose_format(student, student, x1, dev, calls[0]),
                "teacher": _choose_format(teacher.model, self.teacher_call, x1, dev, calls[1]),
            }
        self.formats = {who: min(m, key=m.get) for who, m in self.by_format.items()}
        student.train()

    def _build_methods(self, train_set, cache_dir) -> None:
        """Every method's config, loader, optimizer and adapters, and the teacher-output cache
        the cached variant reads."""
        base, dev, teacher = self.base, self.dev, self.teacher
        cache_dir = Path(cache_dir or tempfile.mkdtemp(prefix="kdlib-bench-cache-"))
        maps, card = ensure_cache(
            teacher, train_set, cache_dir, base.image_size, device=dev, batch_size=base.batch_size, log=self.log
        )
        self.cache = {"bytes_per_image": card["bytes_per_image"], "build_seconds": card["seconds"]}
        self.cached_logits = upsample_logits(teacher.native_logits(self.x).float(), self.x.shape[-2:]).half().float()
        self.epoch_images = len(train_set) * self.knobs["passes"]
        if methods.names()[0] != "none":
            raise RuntimeError(
                "bench: the plain step must be timed first in a round: the derived rates read its input time"
            )
        self.runs = {}
        for method in [*methods.names(), "response_cached"]:
            trained = "response" if method == "response_cached" else method
            cfg = dataclasses.replace(base, method=trained, train_repeats=self.knobs["passes"]).resolved()
            data = WithTeacherMaps(train_set, maps) if method == "response_cached" else train_set
            loader, sampler = train_loader(cfg, self.runtime, data)
            declared = methods.get(cfg.method)
            adapters = build_adapters(declared, self.student, teacher, dev)
            if adapters is not None:
                adapters.to(memory_format=torch.channels_last)  # as the student's and the teacher's
            params = list(self.student.parameters()) + kd_parameters(declared, teacher, adapters)
            optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
            online = teacher if declared.needs_teacher else None
            self.runs[method] = (cfg, loader, sampler, online, optimizer, adapters)

    def _warm_up(self) -> None:
        self.student.train()
        self.teacher.train()
        self._teacher_forward(True)
        for method in self.runs:  # every step once, the loaders' workers started
            self._through_loader(method, 0, 1)

    # --- the measurements ----------------------------------------------------------------------

    def _probe(self) -> None:
        wall, share = self.probe()
        self.samples.append((time.perf_counter() - self.probe.start, wall, share))

    def _in_memory(self, method: str) -> float:
        cfg, _, _, online, optimizer, adapters = self.runs[method]
        cached = self.cached_logits if method == "response_cached" else None
        k = self.knobs["steps"]

        def steps():
            for _ in range(k):
                train_step(cfg, self.student, online, optimizer, self.x, self.y, cached=cached, adapters=adapters)

        return seconds_of(steps, self.dev) / k

    def _through_loader(self, method: str, epoch: int, batches: int | None) -> tuple[int, float]:
        cfg, loader, sampler, online, optimizer, adapters = self.runs[method]
        sampler.set_epoch(epoch)
        seen, start = 0, time.perf_counter()
        for i, batch in enumerate(loader):
            if batches is not None and i >= batches:
                break
            xb, yb, cb = prepare_batch(batch, self.dev, True)
            train_step(cfg, self.student, online, optimizer, xb, yb, cached=cb, adapters=adapters)
            seen += len(xb)
        _sync(self.dev)
        return seen, time.perf_counter() - start

    def _teacher_forward(self, with_features: bool) -> float:
        with torch.no_grad(), torch.autocast(self.dev.type, torch.bfloat16, enabled=self.base.amp):
            return seconds_of(lambda: self.teacher.teacher_forward(self.x, with_features), self.dev)

    def _inference(self) -> None:
        """Batch-1 latency of both networks in their faster memory format (one warm-up call after
        the switch, then the knobs' calls per round), and the student's batch inference."""
        x1, dev = self.x[:1], self.dev
        calls = self.knobs["latency"]
        with torch.autocast(dev.type, torch.bfloat16, enabled=self.base.amp):
            for (who, module, fn), n in zip(
                (("student", self.student, self.student), ("teacher", self.teacher.model, self.teacher_call)), calls
            ):
                fmt, was_training = MEMORY_FORMATS[self.formats[who]], module.training
                module.eval()
                module.to(memory_format=fmt)
                x = x1.contiguous(memory_format=fmt)
                with torch.inference_mode():
                    fn(x)
                    self.latency[who] += [seconds_of(functools.partial(fn, x), dev) for _ in range(n)]
                module.to(memory_format=torch.channels_last)
                module.train(was_training)
            self.student.eval()
            with torch.inference_mode():
                self.student(self.x)
                self.batch_inference.append(seconds_of(lambda: self.student(self.x), dev))
            self.student.train()

    def round(self) -> None:
        """Every figure once. A KD step and what it is compared with (the teacher's forward and a
        plain step) run back to back, in alternating order from one round to the next, and the
        ratio is taken within the round: a drift of the machine touches both sides alike."""
        start = time.perf_counter()
        self.done += 1
        r = self.done
        self._probe()
        self._inference()
        self._probe()
        self.times["teacher"].append(self._teacher_forward(False))
        self.times["teacher_features"].append(self._teacher_forward(True))
        for method in self.timed:
            self._probe()  # between every two measurements: a spell of load shows in it
            if method in self.kd:
                features = methods.get(method).reads_features
                if r % 2:
                    unavoidable = self._teacher_forward(features) + self._in_memory("none")
                    step = self._in_memory(method)
                else:
                    step = self._in_memory(method)
                    unavoidable = self._teacher_forward(features) + self._in_memory("none")
                self.ratios[method].append(step / unavoidable)
            else:
                step = self._in_memory(method)
            self.times[method].append(step)
            loader_timed = self.knobs["loader_timed"]
            if loader_timed is None or method in loader_timed:
                seen, seconds = self._through_loader(method, r, self.knobs["steps"])
                self.rates[method].append(seen / seconds)
                self.pipeline[method].append(seen / seconds / (len(self.x) / step))
            else:
                self.rates[method].append(
                    end_to_end_rate(step, len(self.x), self.rates["none"][-1], self.times["none"][-1])
                )
                self.derived.add(method)
        self._probe()
        plain = self._through_loader("none", r, None)[1]
        self._probe()
        self.epoch_ratio.append(self._through_loader("response_cached", r, None)[1] / plain)
        self.seconds += time.perf_counter() - start

    # --- the result ------------------------------------------------------------------------------

    def result(self) -> dict:
        """The setting's part of bench.json, from the rounds run so far."""
        batch = self.info["batch_size"]
        teacher_s = {False: spread(self.times["teacher"]), True: spread(self.times["teacher_features"])}
        step_s = {m: spread(self.times[m]) for m in self.timed}
        images_per_s = {m: spread(r) for m, r in self.rates.items()}
        overhead = {m: spread(self.ratios[m]) for m in methods.kd_names()}
        pipeline = {m: spread(r) for m, r in self.pipeline.items() if r}
        epoch_ratio = spread(self.epoch_ratio)
        latency = {
            who: _ms(spread(v))
            | {
                "memory_format": self.formats[who],
                "by_format_ms": {f: 1000 * sec for f, sec in self.by_format[who].items()},  # the choice, at the start
            }
            for who, v in self.latency.items()
        }
        inference = {
            name: {
                "latency_ms_batch1": latency[name]["median"],
                "latency_batch1": latency[name],
                "floor_ms_batch1": 1000 * self.sizes[key]["gflops"] / self.throughput,
            }
            for name, key in (("student", "student"), ("teacher", "teacher_model"))
        }
        inference["student"]["images_per_s"] = batch / statistics.median(self.batch_inference)
        inference["student"]["batch_ms"] = _ms(spread(self.batch_inference))
        inference["teacher"]["images_per_s"] = batch / teacher_s[False]["median"]
        result = self.info | self.sizes | {"inference": inference, "matmul_gflops_per_s": self.throughput}
        result |= {
            "cache": self.cache,
            "steadiness": steadiness([(wall, share) for _, wall, share in self.samples])
            | {"series": [[round(t, 2), round(1000 * wall, 3)] for t, wall, _ in self.samples]},
            "seconds": round(self.seconds, 1),
            "teacher_forward_ms": {"logits": _ms(teacher_s[False]), "logits_and_features": _ms(teacher_s[True])},
            "train_step_ms": {m: _ms(t) for m, t in step_s.items()},
            "train_images_per_s": {
                m: {"compute_only": batch / step_s[m]["median"], "end_to_end": images_per_s[m]["median"]}
                for m in step_s
            },
            "kd_overhead_ratio": {m: r["median"] for m, r in overhead.items()},
            "input_pipeline_ratio": {m: r["median"] for m, r in pipeline.items()},
            "end_to_end_derived": sorted(self.derived),  # compute-only step + the plain step's input time
            "loader_timed": "every method" if self.knobs["loader_timed"] is None else list(self.knobs["loader_timed"]),
            "cached_kd_epoch_ratio": epoch_ratio["median"],
            "epoch_seconds": {"images": self.epoch_images},
            "spread": {
                "kd_overhead_ratio": overhead,
                "input_pipeline_ratio": pipeline,
                "cached_kd_epoch_ratio": epoch_ratio,
                "end_to_end_images_per_s": images_per_s,
            },
        }
        if self.setting == "report":  # the report's epoch: 1,464 training + 1,449 validation images
            val_s = VOC_VAL / inference["student"]["images_per_s"]
            result["projected_voc_epoch_seconds"] = {
                m: VOC_TRAIN / v["end_to_end"] + val_s for m, v in result["train_images_per_s"].items()
            }
            result["teacher_cache_feature_bytes_per_image"] = feature_bytes_per_image(
                self.teacher, self.info["image_size"]
            )
        return result


SECONDS_KEYS = ("median", "q1", "q3", "lo", "hi")  # of a spread: the ones with a unit


def _ms(timing: dict) -> dict:
    return {k: 1000 * v if k in SECONDS_KEYS else v for k, v in timing.items()}


def end_to_end_rate(step_s: float, batch: int, plain_images_per_s: float, plain_step_s: float) -> float:
    """Images/s of a training step of ``step_s`` seconds per ``batch`` fed by the input pipeline
    the plain step was timed through: the plain step's input time per image (its end-to-end
    seconds per image, 1 / ``plain_images_per_s``, less its compute-only ``plain_step_s`` /
    ``batch``) added to this step's compute time per image. Exact where loading and compute take
    turns (no loader workers), as on a CPU by default. An input time below 0 (the loader path
    timed faster than the batch in memory: noise, which the plain step's pipeline ratio shows)
    counts as none."""
    input_s = max(0.0, 1 / plain_images_per_s - plain_step_s / batch)
    return 1 / (step_s / batch + input_s)


def run_bench(
    settings=("report", "shapes"),
    *,
    dataset: str = "shapes",
    data_root: str = "data/shapes",
    out="bench.json",
    log=print,
    **kwargs,
) -> dict:
    """Measure every setting, their rounds interleaved over the whole run (:func:`interleave`),
    print the table, write ``out`` (bench.json) and the same figures as Markdown beside it
    (bench.md, which docs/speed.md links to)."""
    start, load = time.perf_counter(), os.getloadavg()[0]
    if dataset == "shapes" and not (Path(data_root) / "benchmark.json").is_file():
        from .shapes import generate

        generate(data_root, progress=False)  # the default benchmark, when absent
    probe = None
    benches = {}
    for s in settings:
        benches[s] = SettingBench(s, dataset=dataset, data_root=data_root, log=log, probe=probe, **kwargs)
        probe = benches[s].probe  # one probe for the whole run: the settings' series share its clock
    order = interleave({s: b.knobs["rounds"] for s, b in benches.items()})
    for i, s in enumerate(order, 1):
        benches[s].round()
        log(f"[bench] round {i} of {len(order)} ({s}), {time.perf_counter() - start:.0f} s so far")
    results = {s: b.result() for s, b in benches.items()}
    for s, r in results.items():
        if r["steadiness"]["warning"]:
            log(f"[bench {s}] WARNING: {r['steadiness']['warning']}")
    report = {
        "machine": environment()
        | {"processor": platform.processor() or platform.machine(), "load_average_1min_at_start": load},
        "steady": all(r["steadiness"]["steady"] for r in results.values()),
        "level": LEVEL,
        "settings": results,
        **{key: {s: r[key] for s, r in results.items()} for key in TARGETS},
        "targets": {k: f"{op} {v}" for k, (op, v) in TARGETS.items()},
        "seconds": round(time.perf_counter() - start, 1),
    }
    atomic_write_text(json.dumps(report, indent=2) + "\n", out)
    atomic_write_text(format_markdown(report), Path(out).with_suffix(".md"))
    log(format_table(report))
    log(f"wrote {out} ({report['seconds']:.0f}s)")
    if not report["steady"]:
        log("WARNING: the machine was not steady while it measured (see above): do not commit these figures")
    return report


# The pipeline cell of a method not timed through the loader (SETTINGS' `loader`)
DERIVED = "derived: step + plain step's input"


def _meets(key: str, value: float) -> str:
    op, target = TARGETS[key]
    ok = value <= target if op == "<=" else value >= target
    return "ok" if ok else "MISSED"


def _ratio(r: dict, key: str, method: str | None = None) -> str:
    """A ratio's cell: its verdict (``verdict``), then whether its median meets ``TARGETS``."""
    s = r["spread"][key] if method is None else r["spread"][key][method]
    return f"{verdict(key, s):<46} {_meets(key, s['median'])}"


def format_table(report: dict) -> str:
    lines = []
    for setting, r in report["settings"].items():
        steady = r.get("steadiness")
        lines += [
            f"\n== {setting}: {r['image_size']}² px, batch {r['batch_size']}, {r['device']}, "
            f"workers {r['workers']}, teacher {r['teacher']}, {r['rounds']} rounds; "
            f"matmul {r['matmul_gflops_per_s']:.0f} GFLOP/s ==",
        ]
        if steady:
            share = "" if steady["cpu_share"] is None else f", CPU share {steady['cpu_share']:.0%}"
            lines.append(
                f"machine: {'steady' if steady['steady'] else 'NOT STEADY'} (probe {steady['probe_ms']['median']:.1f} ms, "
                f"IQR {steady['variation']:.1%} of it{share})"
            )
            if steady["warning"]:
                lines.append(f"WARNING: {steady['warning']}")
        lines.append(
            f"{'':18}{'params':>12}{'GFLOPs':>9}{'lat. b1 ms [95% CI]':>22}{'floor ms':>10}{'infer img/s':>13}"
        )
        for name, size in (("student", r["student"]), ("teacher", r["teacher_model"])):
            inf = r["inference"][name]
            lat = inf["latency_batch1"]
            lines.append(
                f"{name:18}{size['parameters']:>12,}{size['gflops']:>9.2f}"
                f"{lat['median']:>9.1f} [{lat['lo']:.1f}-{lat['hi']:.1f}]".ljust(61)
                + f"{inf['floor_ms_batch1']:>8.1f}{inf['images_per_s']:>13.1f}"
            )
        level = f"{LEVEL:.0%}"
        lines.append(
            f"{'train img/s':18}{'compute':>9}{'end-to-end':>12}   {'pipeline ratio [' + level + ' CI]':<54}"
            f"KD overhead ratio [{level} CI]"
        )
        for m, v in r["train_images_per_s"].items():
            pipe = _ratio(r, "input_pipeline_ratio", m) if m in r["input_pipeline_ratio"] else DERIVED
            row = f"{m:18}{v['compute_only']:>9.1f}{v['end_to_end']:>12.1f}   {pipe:<54}"
            if m in r["kd_overhead_ratio"]:
                row += _ratio(r, "kd_overhead_ratio", m)
            lines.append(row.rstrip())
        lines.append(
            f"cached response-KD epoch / no-KD epoch ({r['epoch_seconds']['images']} images): "
            + _ratio(r, "cached_kd_epoch_ratio")
        )
    return "\n".join(lines)


def format_markdown(report: dict) -> str:
    """bench.json as the page a reader opens: per setting, whether the machine held still, the
    two networks' size and latency, and each method's throughput with its ratios' verdicts."""
    level = f"{report.get('level', LEVEL):.0%}"
    lines = [
        "# make bench: what each KD method costs on this device",
        "",
        f"Written by `python -m kdlib bench` ({report['seconds']:.0f} s) on {report['machine']['processor']}, "
        f"torch {report['machine']['torch']}; regenerated by every run, never edited. Each ratio is the median over "
        f"its rounds with the {level} interval of that median (order statistics, `kdlib.bench.median_interval`); "
        'its verdict reads "no measurable cost" when the interval holds 1 and "noise" when it lies wholly on '
        "the side the ratio cannot fall on.",
    ]
    for setting, r in report["settings"].items():
        steady = r["steadiness"]
        share = "" if steady["cpu_share"] is None else f", CPU share {steady['cpu_share']:.0%}"
        lines += [
            "",
            f"## {setting}: {r['image_size']}² px, batch {r['batch_size']}, {r['device']}, teacher {r['teacher']}, "
            f"{r['rounds']} rounds",
            "",
            f"Machine {'steady' if steady['steady'] else '**not steady**'}: a fixed matmul's IQR was "
            f"{steady['variation']:.1%} of its median{share}."
            + (f" **{steady['warning']}**" if steady["warning"] else ""),
            "",
            f"| network | parameters | GFLOPs | batch-1 latency, ms [{level} CI] | floor, ms | inference img/s |",
            "|---|---|---|---|---|---|",
        ]
        for name, size in (("student", r["student"]), ("teacher", r["teacher_model"])):
            inf = r["inference"][name]
            lat = inf["latency_batch1"]
            lines.append(
                f"| {name} | {size['parameters']:,} | {size['gflops']:.2f} | {lat['median']:.1f} "
                f"[{lat['lo']:.1f}-{lat['hi']:.1f}] | {inf['floor_ms_batch1']:.1f} | {inf['images_per_s']:.1f} |"
            )
        lines += [
            "",
            "| method | train img/s, compute only | end to end | input-pipeline ratio | KD overhead ratio |",
            "|---|---|---|---|---|",
        ]
        for m, v in r["train_images_per_s"].items():
            over = (
                verdict("kd_overhead_ratio", r["spread"]["kd_overhead_ratio"][m])
                if m in r["kd_overhead_ratio"]
                else "—"
            )
            pipe = (
                verdict("input_pipeline_ratio", r["spread"]["input_pipeline_ratio"][m])
                if m in r["input_pipeline_ratio"]
                else DERIVED
            )
            lines.append(f"| {m} | {v['compute_only']:.1f} | {v['end_to_end']:.1f} | {pipe} | {over} |")
        lines += [
            "",
            f"A response-KD epoch from the teacher-output cache against a no-KD epoch "
            f"({r['epoch_seconds']['images']} images): "
            f"{verdict('cached_kd_epoch_ratio', r['spread']['cached_kd_epoch_ratio'])}.",
        ]
    return "\n".join(lines) + "\n"
