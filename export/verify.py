"""The parity gate: run each artifact with its real runtime on real images and compare with torch.

The runtime runners are the edge SDK's (:mod:`asymfuse.edge.runtimes`, through
:data:`asymfuse.export.registry.RUNNERS`), so the gate runs a file exactly as the phone does.

An artifact passes when

- its embedded ModelSpec reads back equal to the one it was exported with,
- its outputs have shape ``(N, embed_dim)`` and are finite,
- the row-wise cosine with torch is >= :data:`THRESHOLDS` [precision] for every image, and
- when a ``map_fn`` is given, its retrieval mAP (percent) is at most :data:`MAX_MAP_DROP` points
  below torch's.

An artifact that fails is moved under ``failed/`` (:func:`~asymfuse.export.artifact.failed_name`)
with status ``"failed"`` and a reason; it is never shippable. Core ML cannot predict on Linux: its
MIL program is loaded back and checked (op types, I/O), and the status is ``"skipped"`` with the
reason ``"skipped: needs macOS"``; no parity number is ever reported that was not measured.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import numpy as np

from asymfuse.edge.errors import AsymfuseError, ConfigError, ShapeError
from asymfuse.edge.runtimes import Runner, create_runner
from asymfuse.export.artifact import Artifact, move_to_failed
from asymfuse.export.quantize import cosine_rows
from asymfuse.export.registry import FORMAT_RUNTIMES, RUNNERS, _call, read_model_spec
from asymfuse.export.spec import DYNAMIC_BATCH_FORMATS

__all__ = ["MAX_MAP_DROP", "THRESHOLDS", "cosine_rows", "torch_outputs", "verify_artifact"]

THRESHOLDS: dict[str, float] = {"fp32": 0.999, "fp16": 0.999, "int8": 0.99, "int8_dynamic": 0.99}
"""Minimum row-wise cosine with torch, per precision."""
MAX_MAP_DROP = 1.0
"""Maximum retrieval mAP drop against torch, in points (mAP in percent)."""
CHUNK = 32
MACOS_REASON = "skipped: needs macOS"


def torch_outputs(model: Any, images: np.ndarray, *, chunk: int = CHUNK) -> np.ndarray:
    """``(N, 3, H, W)`` float32 -> ``(N, D)`` float32 torch reference outputs (eval mode, no grad)."""
    import torch

    params = list(model.parameters())
    device = params[0].device if params else torch.device("cpu")
    was_training = model.training
    model.eval()
    try:
        outs = []
        with torch.no_grad():
            for start in range(0, len(images), chunk):
                x = torch.from_numpy(np.ascontiguousarray(images[start:start + chunk], dtype=np.float32))
                outs.append(model(x.to(device)).float().cpu().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(outs)


def runner_outputs(runner: Runner, images: np.ndarray, *, batch: int) -> np.ndarray:
    """Run ``images`` through ``runner`` ``batch`` at a time -> ``(N, D)`` float32."""
    outs = [np.asarray(runner.run(images[s:s + batch]), dtype=np.float32) for s in range(0, len(images), batch)]
    return np.concatenate(outs)


def _check_images(images: np.ndarray, artifact: Artifact) -> np.ndarray:
    arr = np.asarray(images)
    h, w = artifact.spec.input_size
    if arr.ndim != 4 or arr.shape[1:] != (3, h, w) or len(arr) == 0:
        raise ShapeError(f"verify needs (N, 3, {h}, {w}) preprocessed images for {artifact.path.name}, got "
                         f"{arr.shape}; preprocess real images with the artifact's ModelSpec")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.all(np.isfinite(arr)):
        raise ShapeError("verify images contain NaN or inf")
    return arr


def runtime_errors() -> tuple[type[BaseException], ...]:
    """The exception types a runtime raises for a file it cannot load or run.

    onnxruntime's own types (``Fail``, ``InvalidGraph``, ``InvalidArgument``, ...; they derive
    from ``Exception`` only), and the ``RuntimeError`` / ``ValueError`` of the LiteRT interpreter,
    plus ``OSError`` for unreadable files. A ``TypeError``, ``AttributeError`` or ``KeyError`` is a
    bug in the caller, not a verdict on the file, and is not among them.
    """
    errors: list[type[BaseException]] = [RuntimeError, ValueError, OSError]
    try:
        from onnxruntime.capi import onnxruntime_pybind11_state as ort_state
    except ImportError:  # pragma: no cover - without the onnxruntime extra
        return tuple(errors)
    names = ("Fail", "InvalidArgument", "NoSuchFile", "NoModel", "EngineError", "RuntimeException",
             "InvalidProtobuf", "ModelLoaded", "NotImplemented", "InvalidGraph", "EPFail")
    errors += [getattr(ort_state, n) for n in names if isinstance(getattr(ort_state, n, None), type)]
    return tuple(errors)


def verify_artifact(artifact: Artifact, *, model: Any, images: np.ndarray,
                    map_fn: Callable[[np.ndarray], float] | None = None, torch_map: float | None = None,
                    num_threads: int | None = None, move_failed: bool = True) -> Artifact:
    """Gate one artifact.

    Args:
        artifact: as returned by an exporter.
        model: the torch module it was exported from.
        images: ``(N, 3, H, W)`` float32 real images preprocessed with ``artifact.spec``. When
            ``map_fn`` is given these are the benchmark's test queries, in the order ``map_fn`` expects.
        map_fn: ``(N, D)`` query vectors -> mAP in percent (the caller searches its torch gallery).
        torch_map: torch's mAP for the same queries; computed with ``map_fn`` when None.
        num_threads: runtime threads (None: the runtime's default).
        move_failed: move a failed artifact under ``failed/``.

    Returns:
        A copy with status ``"passed"`` / ``"failed"`` / ``"skipped"`` (Core ML off macOS), parity
        figures (``cosine_min``, ``cosine_mean``, ``n_images``, ``threshold``, and ``map``,
        ``torch_map``, ``map_drop`` when ``map_fn`` is given) and a reason when not passed.

    Raises:
        ShapeError: ``images`` of the wrong shape.
        ConfigError: unknown precision.
    """
    if artifact.precision not in THRESHOLDS:
        raise ConfigError(f"no parity threshold for precision {artifact.precision!r}; known: {sorted(THRESHOLDS)}")
    x = _check_images(images, artifact)
    if artifact.format not in RUNNERS:
        return _verify_unrunnable(artifact, model=model, images=x, move_failed=move_failed, num_threads=num_threads)
    try:
        runner = RUNNERS[artifact.format](artifact.path, num_threads)
        try:
            batch = CHUNK if getattr(runner, "dynamic_batch", artifact.format in DYNAMIC_BATCH_FORMATS) else 1
            out = runner_outputs(runner, x, batch=batch)
            embedded = runner.model_spec
        finally:
            runner.close()
    except AsymfuseError as exc:
        return _fail(artifact, f"the runtime cannot run it: {exc}", {}, move_failed)
    except runtime_errors() as exc:  # what a runtime raises for a file it cannot run; bugs propagate
        return _fail(artifact, f"the runtime cannot run it: {type(exc).__name__}: {exc}", {}, move_failed)
    return _judge(artifact, out=out, ref=torch_outputs(model, x), embedded=embedded, map_fn=map_fn,
                  torch_map=torch_map, move_failed=move_failed)


def _judge(artifact: Artifact, *, out: np.ndarray, ref: np.ndarray, embedded: Any,
           map_fn: Callable[[np.ndarray], float] | None, torch_map: float | None, move_failed: bool) -> Artifact:
    problems: list[str] = []
    parity: dict[str, Any] = {**artifact.parity, "n_images": len(ref), "threshold": THRESHOLDS[artifact.precision]}
    if embedded != artifact.spec:
        problems.append("the embedded ModelSpec differs from the exported one")
    if out.shape != ref.shape:
        return _fail(artifact, f"output shape {out.shape} differs from torch's {ref.shape}", parity, move_failed)
    if not np.all(np.isfinite(out)):
        return _fail(artifact, "outputs contain NaN or inf", parity, move_failed)
    cos = cosine_rows(out, ref)
    parity["cosine_min"] = float(cos.min())
    parity["cosine_mean"] = float(cos.mean())
    parity["max_abs_diff"] = float(np.abs(out - ref).max())
    if parity["cosine_min"] < THRESHOLDS[artifact.precision]:
        problems.append(f"cosine vs torch {parity['cosine_min']:.5f} < {THRESHOLDS[artifact.precision]} "
                        f"({artifact.precision})")
    if map_fn is not None:
        art_map = float(map_fn(out))
        ref_map = float(map_fn(ref)) if torch_map is None else float(torch_map)
        parity.update({"map": art_map, "torch_map": ref_map, "map_drop": ref_map - art_map})
        if ref_map - art_map > MAX_MAP_DROP:
            problems.append(f"mAP drop {ref_map - art_map:.2f} points > {MAX_MAP_DROP}")
    if problems:
        return _fail(artifact, "; ".join(problems), parity, move_failed)
    return artifact.with_status("passed", parity=parity)


def _fail(artifact: Artifact, reason: str, parity: dict[str, Any], move_failed: bool) -> Artifact:
    path = move_to_failed(artifact.path) if move_failed and artifact.path.exists() else artifact.path
    return artifact.with_status("failed", reason=f"failed the parity gate: {reason}", parity=parity, path=path)


def _verify_unrunnable(artifact: Artifact, *, model: Any, images: np.ndarray, move_failed: bool,
                       num_threads: int | None) -> Artifact:
    """Core ML: a real structural check everywhere, prediction parity only on macOS."""
    try:
        mil = _call(artifact.format, "check_mil", artifact.path)
        embedded = read_model_spec(artifact.path)
    except AsymfuseError as exc:
        if isinstance(exc, ImportError):  # missing toolchain: say so, do not fail the artifact
            raise
        return _fail(artifact, f"the saved program does not load back: {exc}", {}, move_failed)
    except runtime_errors() as exc:  # coremltools raises the built-in types for a broken program
        return _fail(artifact, f"the saved program does not load back: {type(exc).__name__}: {exc}", {}, move_failed)
    parity: dict[str, Any] = {"mil": mil}
    if embedded != artifact.spec:
        return _fail(artifact, "the embedded ModelSpec differs from the exported one", parity, move_failed)
    if sys.platform == "darwin":
        try:
            runner: Runner | None = create_runner(FORMAT_RUNTIMES[artifact.format], artifact.path,
                                                  num_threads=num_threads)
        except ConfigError:
            runner = None
        if runner is not None:
            try:
                out = runner_outputs(runner, images, batch=1)
            finally:
                runner.close()
            judged = _judge(artifact, out=out, ref=torch_outputs(model, images), embedded=runner.model_spec,
                            map_fn=None, torch_map=None, move_failed=move_failed)
            return judged.with_status(judged.status, reason=judged.reason, parity={**parity, **judged.parity},
                                      path=judged.path)
    return artifact.with_status("skipped", reason=f"{MACOS_REASON} (MIL program checked: {_mil_summary(mil)})",
                                parity=parity)


def _mil_summary(mil: Any) -> str:
    if isinstance(mil, dict) and isinstance(mil.get("ops"), dict):
        return f"{sum(int(v) for v in mil['ops'].values())} ops of {len(mil['ops'])} types"
    return "ok"
