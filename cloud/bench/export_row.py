"""One row of the export bench table (:class:`ExportRow`), shared by the report and the plot."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from asymfuse.edge.errors import ConfigError

STATUSES = ("baseline", "passed", "failed", "export_failed", "skipped")
TORCH = "torch"  # the format name of the eager baseline rows


@dataclass(frozen=True)
class ExportRow:
    """One line of the export table.

    Attributes:
        arch, res: the query net and its square input side. format: ``"torch"`` (the eager
            baseline) or an export format. precision: ``fp32`` / ``fp16`` / ``int8`` / ``int8_dynamic``.
        params_m, gflops: of the torch graph (same for every row of a group).
        file_mb: artifact size in MB (10^6 bytes; a folder for Core ML).
        latency: ``{str(threads): {"p50_ms", "p90_ms", ...}}`` at batch 1 after warm-up.
        cosine_min, cosine_mean: per-image cosine between artifact and torch vectors.
        map, map_drop: test-split revisitop mAP Medium (%) of the artifact's query vectors against
            the torch gallery, and ``torch mAP - map`` (positive = the artifact is worse).
        status: one of :data:`STATUSES`. reason: why it is not ``passed``.
        pretrained: the trunk has ImageNet weights (else random init: mAP not meaningful).
        path: the artifact (under ``failed/`` when the gate refused it).
        export_s, verify_s: wall seconds of the export and of verification + timing.
        details: anything else (e.g. the Core ML MIL check).
    """

    arch: str
    format: str
    precision: str
    res: int
    params_m: float | None = None
    gflops: float | None = None
    file_mb: float | None = None
    latency: dict[str, dict[str, float]] = field(default_factory=dict)
    cosine_min: float | None = None
    cosine_mean: float | None = None
    map: float | None = None
    map_drop: float | None = None
    status: str = "passed"
    reason: str = ""
    pretrained: bool = True
    path: str = ""
    export_s: float | None = None
    verify_s: float | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ConfigError(f"ExportRow status {self.status!r} is unknown; choose one of {list(STATUSES)}")
        object.__setattr__(self, "latency", {str(k): dict(v) for k, v in dict(self.latency).items()})

    @property
    def ok(self) -> bool:
        """The row ran as designed (a gate failure or a macOS-only skip is a result, not an error)."""
        return self.status != "export_failed"

    def p50(self, threads: int | str) -> float | None:
        entry = self.latency.get(str(threads))
        return None if not entry else entry.get("p50_ms")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
