"""Pieces every bench report shares: reading ``report.json`` back, row checks, the Markdown frame, figures.

Used by :mod:`.aff_report`, :mod:`.ames_report`, :mod:`.export_report` and :mod:`.export_plot`;
each keeps its own rows, tables and plots.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from asymfuse.cloud.eval.report import markdown_table
from asymfuse.edge.errors import ConfigError, CorruptDataError, missing_dependency
from asymfuse.edge.fileio import atomic_path

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

R = TypeVar("R", bound="DataclassInstance")

CLAIM_COLUMNS = ("claim", "paper (mAP M)", "ours (mAP M)", "rows", "verdict")


# ---- rows -------------------------------------------------------------------------------------

def check_status(kind: str, status: str) -> None:
    """Accept ``"ok"`` or ``"failed: <reason>"``.

    Raises:
        ConfigError: any other status of a ``kind`` row.
    """
    if status != "ok" and not status.startswith("failed"):
        raise ConfigError(f"{kind} status must be 'ok' or 'failed: <reason>', got {status!r}")


def freeze_history(row: Any) -> None:
    """Store a frozen row's ``history`` as a tuple of plain dicts (call from ``__post_init__``)."""
    object.__setattr__(row, "history", tuple(dict(h) for h in row.history))


class HistoryRow:
    """``ok`` and ``to_dict`` for frozen row dataclasses with ``status`` and ``history`` fields.

    A plain mixin (not a dataclass): the subclass declares the fields and calls :func:`check_status`
    and :func:`freeze_history` in its ``__post_init__``.
    """

    status: str
    history: tuple[dict[str, Any], ...]

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        """The row as JSON-ready data (the history as a list)."""
        d = asdict(self)  # type: ignore[call-overload]
        d["history"] = [dict(h) for h in self.history]
        return d


def parse_rows(data: Mapping[str, Any], row_type: type[R], *, report: str, bench: str) -> list[R]:
    """The ``row_type`` rows of a ``report.json`` dict (keys the type does not know are dropped).

    Raises:
        CorruptDataError: the dict is not a ``report`` (names ``asymfuse bench <bench>`` as the fix).
    """
    known = {f.name for f in fields(row_type)}
    try:
        return [row_type(**{k: v for k, v in r.items() if k in known}) for r in data["rows"]]
    except (KeyError, TypeError, ConfigError) as exc:
        raise CorruptDataError(f"not an asymfuse {report} ({exc}); re-run `asymfuse bench {bench}`") from exc


def load_report(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a ``report.json``.

    Raises:
        CorruptDataError: the file is missing or not JSON.
    """
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CorruptDataError(f"cannot read bench report {os.fspath(path)!r} ({exc}); re-run the bench") from exc


# ---- report files -----------------------------------------------------------------------------

def report_head(rows: Sequence[Any], *, title: str, runtime_s: float,
                info: Mapping[str, Any] | None) -> dict[str, Any]:
    """The first keys of every ``report.json``: ``title``, ``runtime_s``, ``info``, ``rows``."""
    return {"title": title, "runtime_s": round(float(runtime_s), 1), "info": dict(info or {}),
            "rows": [r.to_dict() for r in rows]}


def markdown_head(title: str, info: Mapping[str, Any]) -> list[str]:
    """The title line and, when ``info`` has one, the description paragraph."""
    lines = [f"# {title}", ""]
    if info.get("description"):
        lines += [str(info["description"]), ""]
    return lines


def timing_lines(info: Mapping[str, Any]) -> list[str]:
    """``Timing (s): step t, ...`` from ``info["timing_s"]``, or nothing."""
    timing = info.get("timing_s") or {}
    return ["Timing (s): " + ", ".join(f"{k} {float(v):.1f}" for k, v in timing.items()) + "."] if timing else []


def claims_table(claims: Sequence[Mapping[str, Any]]) -> str:
    """The Markdown table of checked paper claims (dicts with ``claim``, ``paper``, ``ours``, ``rows``, ``verdict``)."""
    cells = [{"claim": c["claim"], "paper (mAP M)": c["paper"],
              "ours (mAP M)": "" if c["ours"] is None else f"{c['ours'][0]:.2f} vs {c['ours'][1]:.2f}",
              "rows": c["rows"] or "", "verdict": c["verdict"]} for c in claims]
    return markdown_table(cells, CLAIM_COLUMNS)


def claim_verdict(ours: tuple[float, float] | None, *, margin: float, noise: str) -> tuple[bool | None, str]:
    """``(held, verdict)`` of the claim "a beats b" on our pair ``ours = (a, b)`` (None: a row is missing).

    ``held`` is ``a > b`` (None without a pair); the verdict is "n/a", ``noise`` when ``|a - b| < margin``,
    else "held" or "did not hold".
    """
    if ours is None:
        return None, "n/a"
    held = bool(ours[0] > ours[1])
    if abs(ours[0] - ours[1]) < margin:
        return held, noise
    return held, "held" if held else "did not hold"


def report_paths(out_dir: str | os.PathLike[str], files: Mapping[str, str]) -> dict[str, Path]:
    """``{key: out_dir / name}`` for ``files``, creating ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return {key: out / name for key, name in files.items()}


# ---- figures ----------------------------------------------------------------------------------

def pyplot() -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend.

    Raises:
        MissingDependencyError: matplotlib is not installed.
    """
    try:
        import matplotlib
    except ImportError as exc:
        raise missing_dependency("matplotlib", "cloud") from exc
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_png(fig: Any, path: str | os.PathLike[str]) -> Path:
    """Write ``fig`` to ``path`` as PNG (atomically) and close it."""
    plt = pyplot()
    try:
        with atomic_path(Path(path)) as tmp:
            fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)
    return Path(path)
