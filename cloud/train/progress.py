"""Progress bar and JSONL metrics log for the trainers (rank 0 only; disabled ones do nothing)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from asymfuse.edge.errors import missing_dependency


class JsonlLog:
    """Append-only ``metrics.jsonl``: one JSON object per line, flushed per record."""

    def __init__(self, path: Path, *, enabled: bool = True) -> None:
        self.path, self.enabled = Path(path), enabled

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(clean, sort_keys=True) + "\n")
            fh.flush()


class _Bar:
    def __init__(self, bar: Any) -> None:
        self.bar = bar

    def update(self, n: int, **postfix: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def progress_bar(*, total: int, desc: str, enabled: bool) -> _Bar:
    """A tqdm bar showing loss and lr (a no-op object when disabled).

    Raises:
        MissingDependencyError: enabled and tqdm is not installed.
    """
    if not enabled:
        return _Bar(None)
    try:
        from tqdm.auto import tqdm
    except ImportError as exc:
        raise missing_dependency("tqdm", "cloud") from exc
    return _Bar(tqdm(total=total, desc=desc, unit="step", leave=False))
