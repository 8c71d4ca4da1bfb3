"""Training-state checkpoints: everything needed to continue a run bit-for-bit, written atomically.

A state file holds the model, optimiser, scheduler and grad-scaler states, the RNG states of
Python, NumPy and torch, the epoch/step counters, the history so far, and the run's config. A
resume refuses a state written under a different config (except fields in ``safe_fields``).
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from asymfuse.cloud.models.checkpoint import atomic_torch_save, read_torch_file
from asymfuse.edge.errors import ConfigError, CorruptDataError


def rng_state() -> dict[str, Any]:
    """The global RNG states (Python, NumPy, torch CPU and CUDA if present)."""
    name, key, pos, has_gauss, cached = np.random.get_state()
    numpy_state = {"name": name, "key": torch.from_numpy(np.asarray(key, dtype=np.int64)), "pos": int(pos),
                   "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state`'s output."""
    random.setstate(state["python"])
    s = state["numpy"]
    np.random.set_state((s["name"], s["key"].numpy().astype(np.uint32), s["pos"], s["has_gauss"],
                         s["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_state(path: str | os.PathLike[str], payload: dict[str, Any]) -> Path:
    """Write ``payload`` (plus the RNG states) atomically: temp file, fsync, rename."""
    return atomic_torch_save({**payload, "rng": rng_state()}, path)


def load_state(path: str | os.PathLike[str], *, fmt: str) -> dict[str, Any]:
    """Read a state file of format ``fmt``.

    Raises:
        ConfigError: no file at ``path`` (say how to start fresh).
        CorruptDataError: unreadable, or another format.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"cannot resume: {str(p)!r} does not exist; run without --resume to start fresh")
    payload = read_torch_file(p, what="training state", fix="delete it and restart the run")
    if not isinstance(payload, dict) or payload.get("format") != fmt:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CorruptDataError(f"{str(p)!r} has format {found!r}, expected {fmt!r}; point --resume at "
                               "the run folder of the same kind of training")
    return payload


def check_resume_config(saved: dict[str, Any], current: dict[str, Any], *, safe_fields: tuple[str, ...]) -> None:
    """Refuse to continue a run under a different config.

    Raises:
        ConfigError: a field other than ``safe_fields`` differs (listed with both values).
    """
    diff = {k: (saved.get(k), current.get(k)) for k in sorted(set(saved) | set(current))
            if k not in safe_fields and saved.get(k) != current.get(k)}
    if diff:
        lines = ", ".join(f"{k}: checkpoint={a!r} now={b!r}" for k, (a, b) in diff.items())
        raise ConfigError(f"cannot resume: the config differs from the checkpoint's ({lines}); use the "
                          "original config, or start a new run in another --out folder")
