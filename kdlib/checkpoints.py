"""Checkpoints and random-number state: reading a kdlib checkpoint with errors that name the
file, building the network it holds, and saving/restoring every RNG for exact resumes."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .conventions import NUM_CLASSES
from .models import ARCHITECTURES, build_model


class CheckpointError(RuntimeError):
    """A checkpoint that cannot serve: unreadable, not a kdlib file, or another network."""


def load_checkpoint(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"checkpoint {path} cannot be read (truncated or not a torch file?): {exc}") from exc
    missing = [k for k in ("model", "config") if k not in ckpt] if isinstance(ckpt, dict) else ["model"]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks the key(s) {missing}: not a kdlib checkpoint")
    return ckpt


def load_weights(module: nn.Module, state: dict, path, what: str) -> None:
    """``load_state_dict`` with a message that names the file instead of a page of size
    mismatches."""
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).split("\n\t")[1:2] or [str(exc)[:200]]
        raise CheckpointError(
            f"checkpoint {path} does not fit the {what} (another architecture or class count?): {first[0].strip()}"
        ) from None


def load_model(path, expect: str | None = None) -> nn.Module:
    """A model (student or teacher architecture) from a kdlib checkpoint, in eval mode."""
    if path is None:
        raise CheckpointError(f"no weights given for the {expect} teacher (--teacher-weights)")
    ckpt = load_checkpoint(path)
    arch = ckpt["config"].get("model", "student")
    if expect is not None and arch != expect:
        raise CheckpointError(f"checkpoint {path} holds a {arch!r}, not the expected {expect!r}")
    classes = ckpt["config"].get("num_classes", NUM_CLASSES)
    if classes != NUM_CLASSES:
        raise CheckpointError(f"checkpoint {path} predicts {classes} classes; this project uses {NUM_CLASSES}")
    if arch not in ARCHITECTURES:
        raise CheckpointError(f"checkpoint {path} holds an unknown architecture {arch!r}")
    model = build_model(arch, NUM_CLASSES)
    load_weights(model, {k: v.float() for k, v in ckpt["model"].items()}, path, f"{arch!r} with {NUM_CLASSES} classes")
    return model.eval()


def _numpy_state() -> list:
    _, keys, pos, has_gauss, cached = np.random.get_state()
    return [torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)]


def rng_state() -> dict:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": _numpy_state(),
        "python": json.dumps(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    py = json.loads(state["python"])
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
