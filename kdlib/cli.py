"""``python -m kdlib <command>``: shapes, train, evaluate, bench, teacher, demo, methods, sweep,
draws, budget, report, smoke-notebooks.

Every training setting is a flag whose default is ``kdlib.config.Config``'s (the report's
Table 1); bad values are refused by argparse before any work starts.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

HELP = {
    "method": "KD method (kdlib.methods): none (plain CE), the report's feature, response or both, or pairwise, cwd, dist",
    "dataset": "voc (PASCAL VOC 2012 on disk) or shapes (the embedded benchmark)",
    "data_root": "data folder (VOC: VOC2012 or a folder above it; shapes: the generated folder)",
    "out": "run folder for config.json, history.csv, metrics.json, best.pt, last.pt (None: runs/<method>)",
    "model": "network to train: student, or a teacher architecture (lraspp_resnet18, fcn_resnet50)",
    "train_split": "split list used for training",
    "val_split": "split list used for validation",
    "image_size": "square input side, a multiple of 32 (default: 224 for VOC, the benchmark's size for shapes)",
    "augment": "training augmentation: table2 (the report's Table 2), geometric (no colour jitter) or none",
    "epochs": "maximum number of epochs",
    "train_repeats": "passes over the training split per epoch, each shuffled and augmented anew",
    "train_miou": "score the whole training split (eval mode, unaugmented) after each epoch",
    "batch_size": "images per step (per process under torchrun)",
    "lr": "Adam learning rate",
    "weight_decay": "Adam weight decay (L2)",
    "lr_schedule": "plateau (the report's ReduceLROnPlateau on val mIoU) or cosine (annealed to 0 at --epochs)",
    "lr_factor": "ReduceLROnPlateau factor (on val mIoU)",
    "lr_patience": "ReduceLROnPlateau patience, epochs",
    "min_lr": "ReduceLROnPlateau floor",
    "early_stop": "stop after this many epochs without a better val mIoU",
    "temperature": "KD temperature T (> 0; None: the method's, 4 for the report's methods)",
    "alpha": "weight of the cross entropy in KD methods (None: the method's, 0.7 for the report's)",
    "beta": "weight of the distillation terms in KD methods (None: the method's, 0.3 for the report's)",
    "pairwise_grid": "pairwise: the affinity's nodes per side (both feature maps max-pooled to it)",
    "unlabeled_split": "split of extra images whose masks are not read: only the distillation terms see them",
    "scale_by_t2": "multiply the response term by T^2 (Hinton); off in the report",
    "teacher": "teacher architecture (default: fcn_resnet50 for VOC, lraspp_resnet18 for shapes)",
    "teacher_weights": "teacher weights file (default: torch hub cache for VOC, the shipped checkpoint for shapes)",
    "teacher_cache": "folder for the teacher's cached logits: response KD offline, the teacher runs once per image",
    "seed": "random seed (weights, shuffling, augmentation)",
    "device": "auto, cpu, cuda or cuda:N",
    "workers": "DataLoader worker processes (default: 0 on <= 2 cores, else cores - 2, at most 4)",
    "amp": "bf16 autocast on CUDA",
    "channels_last": "channels_last memory format",
    "max_batches": "cap on training batches per epoch (smoke runs)",
    "progress": "auto (bar in a terminal, lines elsewhere), bar, lines or none",
    "resume": "continue the run in --out from its last.pt",
    "overwrite": "start over in an --out that already holds a run",
    "download": "let torchvision download VOC 2012 if it is missing",
    "skip_bad": "leave broken samples out with a warning (counted in metrics.json) instead of failing",
}


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _image_size(text: str) -> int:
    value = int(text)
    if value <= 0 or value % 32:
        raise argparse.ArgumentTypeError(f"must be a positive multiple of 32, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per ``Config`` field, its default and type the field's. Values are checked in one
    place, ``Config.validate`` (called by ``train`` before any work); argparse only parses them,
    and offers the choices of the settings that take one of a few values."""
    from .config import Config, choices

    allowed = choices()
    for f in dataclasses.fields(Config):
        flag = "--" + f.name.replace("_", "-")
        default = f.default
        kwargs = {"default": default, "help": f"{HELP[f.name]} (default: {default})"}
        if isinstance(default, bool):
            kwargs["action"] = argparse.BooleanOptionalAction
        elif f.name in allowed:
            kwargs["choices"] = allowed[f.name]
        elif f.type in (float, "float", "float | None") or isinstance(default, float):
            kwargs["type"] = float
        elif f.type in (int, "int", "int | None") or isinstance(default, int):
            kwargs["type"] = int
        parser.add_argument(flag, **kwargs)


def config_from_args(args: argparse.Namespace):
    from .config import Config

    return Config(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Config)})


# --------------------------------------------------------------------------- commands


def cmd_shapes(args) -> int:
    from .shapes import generate

    start = time.perf_counter()
    out = generate(
        args.out,
        teacher_train=args.teacher_train,
        train=args.train,
        val=args.val,
        size=args.size,
        seed=args.seed,
        progress=True,
    )
    print(f"shapes benchmark in {out} ({time.perf_counter() - start:.1f}s)")
    return 0


def _sigterm_as_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def cmd_train(args, parser) -> int:
    import signal

    from .checkpoints import CheckpointError
    from .data import DataError
    from .files import DiskWriteError
    from .train import NonFiniteLossError, RunFolderError, fit

    cfg = config_from_args(args)
    try:
        cfg.validate()  # every setting's check, before any work
    except ValueError as exc:
        parser.error(str(exc))
    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)  # SIGTERM ends a run like Ctrl-C
    try:
        cfg = cfg.resolved()  # --out defaults to runs/<method>; fit checks every setting
        metrics = fit(cfg)
    except KeyboardInterrupt:
        print(
            f"python -m kdlib train: interrupted; {cfg.out}/last.pt holds the last finished epoch. "
            "Continue with the same command plus --resume.",
            file=sys.stderr,
        )
        return 130
    except (DataError, NonFiniteLossError, DiskWriteError, CheckpointError, FileNotFoundError) as exc:
        print(f"python -m kdlib train: error: {exc}", file=sys.stderr)
        return 1
    except (ValueError, RunFolderError) as exc:
        parser.error(str(exc))
    print(json.dumps({k: metrics[k] for k in ("best_epoch", "best_miou", "epochs_run", "total_seconds")}))
    import torch.distributed as dist

    if dist.is_initialized():  # under torchrun: gloo's threads can abort a process that exits with them alive
        dist.destroy_process_group()
    return 0


def cmd_evaluate(args, parser) -> int:
    from .evaluate import evaluate_checkpoint, format_table

    try:
        result = evaluate_checkpoint(
            args.checkpoint,
            dataset=args.dataset,
            data_root=args.data_root,
            split=args.split,
            image_size=args.image_size,
            device=args.device,
            batch_size=args.batch_size,
            teacher=args.teacher,
        )
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        parser.error(str(exc))
    print(format_table(result))
    if args.json:
        from .files import atomic_write_text

        atomic_write_text(json.dumps(result, indent=2) + "\n", Path(args.json))
    return 0


def cmd_teacher(args) -> int:
    from .teacher import train_shapes_teacher

    train_shapes_teacher(args.data_root, out=args.out, epochs=args.epochs, device=args.device)
    return 0


def cmd_bench(args) -> int:
    from .bench import SETTINGS, compare, format_comparison, run_bench

    if args.compare:
        first, second = (json.loads(Path(f).read_text()) for f in args.compare)
        rows = compare(first, second)
        if not rows:
            raise SystemExit(f"{args.compare[0]} and {args.compare[1]} share no figure: are both bench.json files?")
        print(format_comparison(rows))
        return 0

    settings = tuple(SETTINGS) if args.setting == "all" else (args.setting,)
    run_bench(
        settings,
        dataset=args.dataset,
        data_root=args.data_root,
        out=args.out,
        batch_size=args.batch_size,
        device=args.device,
        workers=args.workers,
        repeats=args.repeats,
        steps=args.steps,
        teacher_weights=args.teacher_weights,
    )
    return 0


def _assignment(text: str) -> tuple[str, object]:
    import ast

    name, sep, value = text.partition("=")
    if not sep or not name.isidentifier():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    try:
        return name, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return name, value  # a plain string


def cmd_demo(args) -> int:
    from .notebooks import run_demo

    return run_demo(
        args.dataset,
        args.data_root,
        args.device,
        args.profile,
        args.notebooks or None,
        dict(args.set or []),
        args.cell_timeout or None,
    )


def cmd_rows(args) -> int:
    """`make methods` and `make sweep`: train the rows, then chapters 8 or 9 and 7 show them
    (reusing every run) and rebuild the report."""
    from .notebooks import demo_parameters, run_demo
    from .profiles import prepare_data

    params = demo_parameters(args.dataset, args.data_root, args.device, args.profile)
    committed = Path(params["report_dir"]) / "runs"
    root = prepare_data(args.dataset, params["data_root"], args.profile)
    kw = dict(dataset=args.dataset, data_root=str(root), runs_dir=params["runs_dir"], profile=args.profile)
    start = time.perf_counter()
    if args.command == "methods":
        from .experiment import train_extra_rows

        train_extra_rows(committed_dir=committed, device=args.device, **kw)
        # chapter 3 measures feature_student's maps beside the report's feature KD
        chapters = ["03_train_feature.ipynb", "08_beyond_the_report.ipynb", "07_results.ipynb"]
    else:
        from .sweep import sweep_table

        sweep_table(committed_dir=committed, table_path=Path(params["report_dir"]) / "tables" / "sweep.csv",
                    device=args.device, **kw)  # fmt: skip
        chapters = ["09_sweep.ipynb", "07_results.ipynb"]
    print(f"make {args.command}: runs trained in {(time.perf_counter() - start) / 60:.0f} min; now the chapters")
    return run_demo(args.dataset, args.data_root, args.device, args.profile, chapters, None, None)


def cmd_conditions(args) -> int:
    from . import conditions
    from .notebooks import demo_parameters

    params = demo_parameters("shapes", args.data_root, args.device, args.profile)
    kw = dict(data_root=params["data_root"], runs_dir=params["runs_dir"], profile=args.profile, device=args.device)
    unplanned = sorted(set(args.draws or []) - set(conditions.DRAWS)) if args.command == "draws" else []
    unplanned += sorted(set(args.budgets or []) - {1, *conditions.BUDGETS}) if args.command == "budget" else []
    if unplanned:  # docs/regime.md fixed the conditions before their runs; no other is read
        planned = conditions.DRAWS if args.command == "draws" else (1, *conditions.BUDGETS)
        print(f"python -m kdlib {args.command}: {unplanned} not planned; choose from {list(planned)}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    if args.command == "draws":
        conditions.train_draws(**kw, draws=args.draws or conditions.DRAWS)
    else:
        conditions.train_budgets(**kw, budgets=args.budgets or None)
    print(
        f"make {args.command} finished in {(time.perf_counter() - start) / 60:.0f} min; runs under {params['runs_dir']}"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m kdlib", description=" ".join(__doc__.split("\n\n")[0].split()))
    sub = parser.add_subparsers(dest="command", required=True)
    parser.subcommands = sub.choices

    from .shapes import DEFAULTS

    p = sub.add_parser("shapes", help="generate the embedded benchmark in the VOC layout")
    p.add_argument("--out", required=True, help="output folder")
    for split in ("teacher_train", "train", "val"):
        p.add_argument(
            "--" + split.replace("_", "-"),
            type=_positive_int,
            default=DEFAULTS[split],
            help=f"images in the {split} split (default: {DEFAULTS[split]})",
        )
    p.add_argument("--size", type=_image_size, default=DEFAULTS["size"], help="image side (default: %(default)s)")
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"], help="benchmark seed (default: %(default)s)")

    p = sub.add_parser("train", help="train a student (or a teacher) by the report's recipe")
    add_config_arguments(p)

    p = sub.add_parser("evaluate", help="mIoU, per-class IoU and pixel accuracy of a checkpoint")
    p.add_argument("--checkpoint", help="a kdlib checkpoint (best.pt, last.pt, a shipped teacher)")
    p.add_argument(
        "--teacher", choices=("fcn_resnet50",), help="evaluate torchvision's FCN-ResNet50 (weights as for training)"
    )
    p.add_argument("--dataset", choices=("voc", "shapes"), default="shapes")
    p.add_argument("--data-root", default="data/shapes")
    p.add_argument("--split", default="val")
    p.add_argument("--image-size", type=_image_size, default=None)
    p.add_argument("--batch-size", type=_positive_int, default=16)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", help="also write the result to this JSON file")

    p = sub.add_parser("teacher", help="train the embedded benchmark's teacher (make teacher)")
    p.add_argument("--data-root", default="data/shapes")
    p.add_argument("--out", default="runs/teacher")
    p.add_argument("--epochs", type=_positive_int, default=None)
    p.add_argument("--device", default="auto")

    p = sub.add_parser(
        "smoke-notebooks", help="copies of the notebooks set to the smoke profile, for nbval (make test)"
    )
    p.add_argument("--out", default="runs/nbval", help="folder for the copies and everything they write")

    p = sub.add_parser(
        "report", help="rebuild figures/, tables and report/ from finished runs (no notebook, no training)"
    )
    p.add_argument("--dataset", default="shapes", choices=("voc", "shapes"))
    p.add_argument("--data-root", default="data/shapes")
    p.add_argument("--device", default="cpu")
    p.add_argument("--profile", default="demo")

    p = sub.add_parser("bench", help="time each KD method on this device and write bench.json (make bench)")
    p.add_argument(
        "--setting",
        choices=("all", "report", "shapes"),
        default="all",
        help="report (224 px, FCN-ResNet50), shapes (the embedded benchmark) or all (default)",
    )
    p.add_argument("--dataset", choices=("voc", "shapes"), default="shapes", help="images for the end-to-end timings")
    p.add_argument("--data-root", default="data/shapes")
    p.add_argument(
        "--batch-size", type=_positive_int, default=None, help="default: per setting and device (kdlib/bench.py)"
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: the trainer's)")
    p.add_argument("--repeats", type=_positive_int, default=None, help="timed rounds (default: per device and setting)")
    p.add_argument("--steps", type=_positive_int, default=None, help="steps per method and round (default: per device)")
    p.add_argument("--teacher-weights", default=None, help="the shapes teacher (default: the shipped one)")
    p.add_argument("--out", default="bench.json")
    p.add_argument(
        "--compare",
        nargs=2,
        metavar=("A", "B"),
        help="measure nothing: say how far two bench.json files lie apart, median by median",
    )

    for name, what in (
        ("methods", "the rows beyond the report (chapter 8), then chapters 3, 8 and 7 (make methods)"),
        ("sweep", "the T x beta map of response KD and the best new method (chapter 9), then chapters 9 and 7"),
    ):
        p = sub.add_parser(name, help=what)
        p.add_argument("--dataset", default="shapes", choices=("voc", "shapes"))
        p.add_argument("--data-root", default="data/shapes")
        p.add_argument("--device", default="cpu")
        p.add_argument("--profile", default="demo")

    for name, what in (
        ("draws", "the verdicts' methods on other draws of the benchmark (make draws; docs/regime.md)"),
        ("budget", "the verdicts' methods at longer budgets on the demo's draw (make budget; docs/regime.md)"),
    ):
        p = sub.add_parser(name, help=what)
        p.add_argument("--data-root", default="data/shapes", help="the demo's benchmark (draws go beside it)")
        p.add_argument("--device", default="cpu")
        p.add_argument("--profile", default="demo")
        if name == "draws":
            p.add_argument("--draws", type=int, nargs="+", help="benchmark seeds (default: kdlib.conditions.DRAWS)")
        else:
            p.add_argument(
                "--budgets",
                type=int,
                nargs="+",
                help="factors, 1 the demo's runs (default: 1 and kdlib.conditions.BUDGETS)",
            )

    p = sub.add_parser("demo", help="train the demo's runs, then run every chapter in order (make demo)")
    p.add_argument("--dataset", default="shapes", choices=("voc", "shapes"))
    p.add_argument("--data-root", default="data/shapes")
    p.add_argument("--device", default="cpu")
    p.add_argument("--profile", default="demo")
    p.add_argument("--notebooks", nargs="+", help="these notebooks only, in this order (names in notebooks/)")
    p.add_argument(
        "--set",
        type=_assignment,
        action="append",
        metavar="NAME=VALUE",
        help="a notebook parameter (a Python literal), e.g. train_extra=True (make methods)",
    )
    p.add_argument(
        "--cell-timeout",
        type=int,
        default=3600,
        help="seconds a notebook cell may run, 0 for no limit (make methods / make sweep train for longer)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    sub = parser.subcommands[args.command]  # so errors name the subcommand
    if args.command == "shapes":
        return cmd_shapes(args)
    if args.command == "train":
        return cmd_train(args, sub)
    if args.command == "evaluate":
        return cmd_evaluate(args, sub)
    if args.command == "teacher":
        return cmd_teacher(args)
    if args.command == "demo":
        return cmd_demo(args)
    if args.command in ("methods", "sweep"):
        return cmd_rows(args)
    if args.command in ("draws", "budget"):
        return cmd_conditions(args)
    if args.command == "bench":
        return cmd_bench(args)
    if args.command == "smoke-notebooks":
        import shutil

        from .notebooks import write_smoke_copies

        shutil.rmtree(args.out, ignore_errors=True)  # a fresh smoke run each time
        for path in write_smoke_copies(args.out):
            print(path)
        return 0
    if args.command == "report":
        from .notebooks import run_report

        return run_report(args.dataset, args.data_root, args.device, args.profile)
    return 2


if __name__ == "__main__":
    sys.exit(main())
