"""``asymfuse bench export``: query nets exported to every format x precision, gated and timed.

Protocol (fixed before looking at any result). For each query arch and input side ``res``:

1. Build the query net (``embed_dim`` 512). ImageNet weights where they are bundled
   (EfficientNet-Lite0); the torchvision archs (MobileNetV2, ShuffleNetV2, EfficientNet-B0) have
   no weights offline and run with random init: their rows measure speed and parity, but their
   mAP is not meaningful (the table marks them "random init").
2. The torch reference on the benchmark's test split (:mod:`.export_data`): gallery vectors and
   query vectors of the torch model; its mAP is the group's baseline. The gallery side is the
   torch query net itself (symmetric torch baseline; there is no trained mixer in this bench).
3. The torch eager fp32 row: batch-1 latency with each thread count (``torch.set_num_threads``).
4. Every supported format x precision (:data:`asymfuse.export.spec.SUPPORTED`): export
   (:data:`asymfuse.export.registry.EXPORTERS`; static int8 calibrated on ``calibration`` real
   train-split photos), then the parity gate (:func:`asymfuse.export.verify.verify_artifact`:
   the real runtime on the test queries, cosine vs torch, and mAP of the artifact's query vectors
   against the torch gallery), then batch-1 latency with a fresh runner per thread count. Core ML
   is converted and its MIL program checked; prediction needs macOS, so it has no parity or
   latency figures here.

A failing export is a ``❌`` row with its reason and the bench goes on. The report is rewritten
after every group, so a long run leaves a readable table. Output in ``out_dir``: ``benchmark/``
(unless ``bench_root`` is given), ``artifacts/<arch>-<res>/`` and the files of
:mod:`asymfuse.cloud.bench.export_report`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from asymfuse.cloud.bench.export_data import TorchReference, calibration_images, ensure_benchmark, make_map_fn
from asymfuse.cloud.bench.export_data import test_split as load_test_split
from asymfuse.cloud.bench.export_data import torch_reference
from asymfuse.cloud.bench.export_report import render_markdown, write_report
from asymfuse.cloud.bench.export_row import TORCH, ExportRow
from asymfuse.cloud.data.benchmark import BenchmarkConfig
from asymfuse.edge.errors import ConfigError, unknown_name
from asymfuse.edge.spec import ModelSpec
from asymfuse.export.bench import time_threads
from asymfuse.export.pipeline import crash_reason
from asymfuse.export.spec import FORMATS, PRECISIONS, SUPPORTED, uses_calibration

LOG = logging.getLogger("asymfuse.bench.export")

ARCHS = ("efficientnet_lite0", "mobilenet_v2", "shufflenet_v2_x1_0", "efficientnet_b0")
QUICK: dict[str, Any] = {"archs": ("efficientnet_lite0",), "sizes": (224,), "formats": FORMATS,
                         "precisions": ("fp32", "fp16", "int8")}
DEFAULT: dict[str, Any] = {"archs": ARCHS, "sizes": (224, 512), "formats": FORMATS, "precisions": PRECISIONS}
TIERS = {"default": DEFAULT, "quick": QUICK}


@dataclass(frozen=True)
class ExportBenchConfig:
    """One bench run. Build it with :meth:`preset` (``"default"`` or ``"quick"``).

    Attributes:
        tier: the preset it came from. archs, sizes, formats, precisions: the grid (unsupported
            format x precision pairs are left out, see :data:`SUPPORTED`).
        threads: thread counts of the latency columns. warmup, runs: untimed / timed batch-1 calls.
        calibration: real train-split photos that calibrate static int8.
        embed_dim: query net output dimension.
        bench_root: an existing/wanted benchmark folder ('' = ``out_dir/benchmark``).
        benchmark: the config used when the benchmark has to be built.
    """

    tier: str = "default"
    archs: tuple[str, ...] = ARCHS
    sizes: tuple[int, ...] = (224, 512)
    formats: tuple[str, ...] = FORMATS
    precisions: tuple[str, ...] = PRECISIONS
    threads: tuple[int, ...] = (1, 2)
    warmup: int = 5
    runs: int = 20
    calibration: int = 64
    embed_dim: int = 512
    bench_root: str = ""
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)

    def __post_init__(self) -> None:
        from asymfuse.cloud.models.query_net import QUERY_NETS

        for name in ("archs", "sizes", "formats", "precisions", "threads"):
            value = getattr(self, name)
            if isinstance(value, str):  # "--set sizes=224,512" arrives as one string
                value = tuple(_int_or_str(v.strip()) for v in value.split(",") if v.strip())
            object.__setattr__(self, name, (value,) if isinstance(value, int) else tuple(value))
            if not getattr(self, name):
                raise ConfigError(f"{name} must not be empty")
        if self.tier not in TIERS:
            raise unknown_name("bench tier", self.tier, list(TIERS))
        for arch in self.archs:
            QUERY_NETS.get(arch)  # UnknownNameError naming the registered nets
        for name, allowed in (("formats", FORMATS), ("precisions", PRECISIONS)):
            bad = [v for v in getattr(self, name) if v not in allowed]
            if bad:
                raise ConfigError(f"{name} {bad} are unknown; choose from {list(allowed)}")
        for name in ("sizes", "threads"):
            bad = [v for v in getattr(self, name) if isinstance(v, bool) or not isinstance(v, int) or v < 1]
            if bad:
                raise ConfigError(f"{name} must be positive ints, got {list(getattr(self, name))}")
        if any(s < 32 for s in self.sizes):
            raise ConfigError(f"sizes must be >= 32 pixels, got {list(self.sizes)}")
        for name in ("warmup", "runs", "calibration", "embed_dim"):
            value, low = getattr(self, name), 0 if name == "warmup" else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{name} must be an int >= {low}, got {value!r}")

    @classmethod
    def preset(cls, tier: str, **changes: Any) -> ExportBenchConfig:
        """The ``"default"`` or ``"quick"`` tier, with optional field ``changes``.

        Raises:
            UnknownNameError: an unknown tier. ConfigError: a bad change.
        """
        if tier not in TIERS:
            raise unknown_name("bench tier", tier, list(TIERS))
        return cls(**{"tier": tier, **TIERS[tier], **changes})

    def with_overrides(self, values: Mapping[str, Any]) -> ExportBenchConfig:
        """A copy with ``key=value`` overrides of the bench fields.

        Raises:
            ConfigError: an unknown key (the message lists the valid ones) or a bad value.
        """
        keys = {f.name for f in fields(self)} - {"tier", "benchmark"}
        unknown = sorted(set(values) - keys)
        if unknown:
            raise ConfigError(f"unknown bench setting(s) {unknown}; choose from {sorted(keys)}")
        return replace(self, **dict(values))

    def combos(self) -> list[tuple[str, str]]:
        """The (format, precision) pairs that run, in table order."""
        return [(f, p) for f in self.formats for p in self.precisions if p in SUPPORTED[f]]


def run_export_bench(cfg: ExportBenchConfig, *, out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Run the bench; write the report into ``out_dir``.

    Returns:
        ``{"rows": [ExportRow], "runtime_s", "timing_s", "paths", "markdown"}``.

    Raises:
        ConfigError, CorruptDataError: the benchmark could not be built or read; failures of
            single rows are reported in the table instead.
    """
    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    bench = ensure_benchmark(cfg.bench_root or out / "benchmark", config=None if cfg.bench_root else cfg.benchmark)
    test = load_test_split(bench)
    timing: dict[str, float] = {"benchmark": time.perf_counter() - t0}
    rows: list[ExportRow] = []
    title = f"asymfuse bench export ({cfg.tier} tier): query nets on ONNX, TFLite and Core ML"
    paths: dict[str, Path] = {}
    for arch in cfg.archs:
        for res in cfg.sizes:
            t1 = time.perf_counter()
            rows += run_group(cfg, arch=arch, res=res, bench=bench, test=test, out=out / "artifacts" / f"{arch}-{res}")
            timing[f"{arch}@{res}"] = time.perf_counter() - t1
            info = _info(cfg, test=test, timing={**timing, "total": time.perf_counter() - t0})
            paths = write_report(rows, out_dir=out, title=title, runtime_s=time.perf_counter() - t0, info=info)
    runtime = time.perf_counter() - t0
    timing["total"] = runtime
    info = _info(cfg, test=test, timing=timing)
    paths = write_report(rows, out_dir=out, title=title, runtime_s=runtime, info=info)
    return {"rows": rows, "runtime_s": runtime, "timing_s": timing, "paths": paths,
            "markdown": render_markdown(rows, title=title, runtime_s=runtime, info=info)}


def build_net(arch: str, *, res: int, embed_dim: int) -> tuple[torch.nn.Module, bool]:
    """``(eval-mode query net, pretrained)``: ImageNet weights when bundled, else random init."""
    from asymfuse.cloud.models.query_net import create_query_net

    try:
        net = create_query_net(arch, embed_dim=embed_dim, pretrained=True, input_size=res)
        pretrained = True
    except ConfigError:  # no weights offline (torchvision archs)
        net = create_query_net(arch, embed_dim=embed_dim, pretrained=False, input_size=res)
        pretrained = False
    return net.eval(), pretrained


def recalibrate_batchnorm(net: torch.nn.Module, images: np.ndarray, *, batch_size: int = 16) -> torch.nn.Module:
    """Re-estimate every BatchNorm's running statistics on real ``images`` ``(N, 3, H, W)``, in place.

    A random-init net keeps BN's initial statistics (mean 0, var 1); its activations then blow up
    through the layers and every image gets almost the same embedding (pairwise cosine ~0.9999999
    on the test queries), which makes both parity and mAP meaningless. Only the BN layers run in
    train mode (cumulative averages); the weights are not touched. The net ends in eval mode with
    an embedding-space id of its new state.
    """
    from asymfuse.cloud.models.query_net import default_space_id

    bns = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in bns]
    net.eval()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    try:
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                net(torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size])))
    finally:
        for m, momentum in zip(bns, momenta, strict=True):
            m.momentum = momentum
        net.eval()
    spec = getattr(net, "spec", None)
    if isinstance(spec, ModelSpec):
        net.spec = spec.with_embedding_space(default_space_id(net))  # type: ignore[arg-type]
    return net


def run_group(cfg: ExportBenchConfig, *, arch: str, res: int, bench: Any, test: Any, out: Path) -> list[ExportRow]:
    """The baseline row and every format x precision row of one ``(arch, res)``."""
    from asymfuse.cloud.models.flops import count_flops, count_params

    LOG.info("bench export group %s@%d", arch, res)
    try:
        net, pretrained = build_net(arch, res=res, embed_dim=cfg.embed_dim)
        common = {"arch": arch, "res": res, "pretrained": pretrained, "params_m": count_params(net) / 1e6,
                  "gflops": count_flops(net, input_size=res) / 1e9}
        need_calib = any(uses_calibration(f, p) for f, p in cfg.combos())
        calib = calibration_images(bench, net.spec, count=cfg.calibration) if need_calib or not pretrained else None
        if not pretrained and calib is not None:
            recalibrate_batchnorm(net, calib)
        ref = torch_reference(net, test)
    except Exception as exc:  # the whole group fails as one row
        LOG.exception("bench export group %s@%d failed", arch, res)
        return [ExportRow(arch=arch, format=TORCH, precision="fp32", res=res, status="export_failed",
                          reason=crash_reason(exc))]
    x1 = ref.images[:1]
    t0 = time.perf_counter()
    latency = time_threads(lambda n: net, x1, threads=cfg.threads, warmup=cfg.warmup, runs=cfg.runs,
                           torch_threads=True)
    rows = [ExportRow(format=TORCH, precision="fp32", latency={str(k): v for k, v in latency.items()},
                      cosine_min=1.0, cosine_mean=1.0, map=ref.map, map_drop=0.0, status="baseline",
                      verify_s=time.perf_counter() - t0, details={"metrics": ref.metrics}, **common)]
    for fmt, precision in cfg.combos():
        rows.append(export_row(cfg, net=net, fmt=fmt, precision=precision, ref=ref, test=test, calib=calib, out=out,
                               common=common))
    return rows


def export_row(cfg: ExportBenchConfig, *, net: torch.nn.Module, fmt: str, precision: str, ref: TorchReference,
               test: Any, calib: np.ndarray | None, out: Path, common: dict[str, Any]) -> ExportRow:
    """Export, gate (:func:`export_and_gate`, its crash policy) and time one format x precision."""
    from asymfuse.export.pipeline import GateInputs, export_and_gate
    from asymfuse.export.registry import RUNNERS
    from asymfuse.export.spec import ExportSpec

    LOG.info("bench export row %s@%d %s %s", common["arch"], common["res"], fmt, precision)
    spec = ExportSpec(format=fmt, precision=precision, input_size=common["res"],
                      calibration_images=cfg.calibration, min_calibration=min(8, cfg.calibration))
    gate = GateInputs(images=ref.images, map_fn=make_map_fn(test, ref.gallery), torch_map=ref.map, calibration=calib)
    done = export_and_gate(net, model_spec=net.spec, export_spec=spec, out=out, gate=gate)
    checked = done.artifact
    if checked.status == "export_failed":
        return ExportRow(format=fmt, precision=precision, status="export_failed", reason=checked.reason,
                         export_s=done.export_s, **common)
    t1 = time.perf_counter()
    latency: dict[str, Any] = {}
    if fmt in RUNNERS and checked.path.exists():
        timed = time_threads(lambda n: RUNNERS[fmt](checked.path, n), ref.images[:1], threads=cfg.threads,
                             warmup=cfg.warmup, runs=cfg.runs)
        latency = {str(k): v for k, v in timed.items()}
    parity = dict(checked.parity)
    status = {"passed": "passed", "failed": "failed", "skipped": "skipped"}.get(checked.status, "export_failed")
    reason = _strip(checked.reason, ("failed the parity gate: ", "skipped: ")) or (
        "" if status == "passed" else f"status {checked.status}")
    return ExportRow(format=fmt, precision=precision, file_mb=checked.size_bytes / 1e6, latency=latency,
                     cosine_min=_num(parity.get("cosine_min")), cosine_mean=_num(parity.get("cosine_mean")),
                     map=_num(parity.get("map")), map_drop=_num(parity.get("map_drop")), status=status, reason=reason,
                     path=str(checked.path), export_s=done.export_s, verify_s=done.verify_s + time.perf_counter() - t1,
                     details={k: v for k, v in parity.items()
                              if k not in ("cosine_min", "cosine_mean", "map", "map_drop")}, **common)


def _int_or_str(text: str) -> int | str:
    return int(text) if text.lstrip("-").isdigit() else text


def _strip(reason: str, prefixes: tuple[str, ...]) -> str:
    """The reason without a prefix that repeats the status cell's own words."""
    for prefix in prefixes:
        if reason.startswith(prefix):
            return reason[len(prefix):]
    return reason


def _num(v: Any) -> float | None:
    return None if v is None else float(v)


def _info(cfg: ExportBenchConfig, *, test: Any, timing: Mapping[str, float]) -> dict[str, Any]:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    left_out = [f"{f} {p}" for f in cfg.formats for p in cfg.precisions if p not in SUPPORTED[f]]
    description = (
        f"Embedded benchmark `{test.name}`, test split: {test.nq} queries (bbx crops) / {test.nb} gallery images. "
        f"mAP = revisitop mAP Medium (%) of each artifact's query vectors against the **torch model's own gallery "
        f"vectors** (symmetric torch baseline: the query net embeds both sides, no trained mixer); Δ mAP = artifact "
        f"- torch. Cosine = per-query cosine between artifact and torch vectors (min shown). Gate: cosine ≥ 0.999 "
        f"(fp32/fp16), ≥ 0.99 (int8), mAP drop ≤ 1.0 point. Latency: batch 1, p50/p90 ms over {cfg.runs} runs after "
        f"{cfg.warmup} warm-up runs, per thread count (torch: set_num_threads; artifacts: a runner per count); "
        f"speed-up = torch eager fp32 p50 / row p50. Static int8 calibrated on {cfg.calibration} real train-split "
        f"photos (half of them random query-like crops); the int8 exporters keep the fewest leading convs in float "
        f"that bring their worst cosine on those photos to 0.995 (ONNX dynamic int8 checks the same way). "
        f"EfficientNet-Lite0 has bundled ImageNet weights; archs marked \"random init\" have no weights "
        f"offline: random init with BatchNorm statistics re-estimated on the calibration photos (else every image "
        f"gets nearly the same vector), so their mAP is not meaningful; parity and latency are. Core ML: converted "
        f"and its MIL program loaded back and checked on Linux; prediction needs macOS, so it has no parity or "
        f"latency figures."
        + (f" Not supported, left out: {', '.join(left_out)}." if left_out else "")
        + f" CPU: {os.cpu_count()} cores, 1-min load average {load:.1f} at the end of the run (this run included)"
        + (": above the core count, other processes shared the CPU, so latencies are noisy (torch eager with 2 "
           "threads most of all)." if load > (os.cpu_count() or 1) else "."))
    return {"tier": cfg.tier, "description": description,
            "dataset": {"name": test.name, "test_queries": test.nq, "test_gallery": test.nb},
            "config": {f.name: getattr(cfg, f.name) for f in fields(cfg) if f.name != "benchmark"},
            "benchmark": cfg.benchmark.to_dict(), "cpu_count": os.cpu_count(),
            "load_average": round(load, 2), "torch_threads": torch.get_num_threads(),
            "timing_s": {k: round(float(v), 1) for k, v in timing.items()}}
