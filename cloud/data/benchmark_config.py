"""The build configuration of the embedded benchmark (read by the builder and by each split)."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, fields

from asymfuse.edge.errors import ConfigError

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class BenchmarkConfig:
    """Everything that determines a benchmark build; same config -> byte-identical files.

    - ``source``: ``"skimage"`` or a folder of photos; ``photos``: optional subset of photo names.
    - ``n_views``: gallery views per instance; ``image_max_side``: long side of every image (px).
    - ``split_fractions``: target instance shares of train / val / test (positive, sum 1).
    - ``distractor_fraction``: share of each split's regions kept as distractor regions;
      ``distractors_per_split``: distractor images added to each split's gallery.
    - ``tile_side``, ``min_region_side``, ``max_grid``: photo tiling (see ``tile_photo``).
    - ``include_multiview``: also write the genuine multi-view set with ``multiview_distractors``.
    """

    seed: int = 0
    source: str = "skimage"
    name: str = "asymfuse-skimage"
    photos: tuple[str, ...] | None = None
    n_views: int = 8
    image_max_side: int = 352
    jpeg_quality: int = 90
    split_fractions: tuple[float, float, float] = (0.5, 0.2, 0.3)
    distractor_fraction: float = 0.15
    distractors_per_split: int = 16
    tile_side: int = 192
    min_region_side: int = 150
    max_grid: int = 4
    include_multiview: bool = True
    multiview_distractors: int = 12

    def __post_init__(self) -> None:
        for key in ("photos", "split_fractions"):  # JSON and YAML give lists; store tuples
            if isinstance(getattr(self, key), list):
                object.__setattr__(self, key, tuple(getattr(self, key)))
        ints = {"seed": (0, 2**32 - 1), "n_views": (1, 64), "image_max_side": (64, 2048),
                "jpeg_quality": (50, 100), "distractors_per_split": (0, 10_000),
                "tile_side": (32, 100_000), "min_region_side": (32, 100_000), "max_grid": (1, 8),
                "multiview_distractors": (0, 10_000)}
        for key, (lo, hi) in ints.items():
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise ConfigError(f"BenchmarkConfig.{key} must be an int in [{lo}, {hi}], got {value!r}")
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise ConfigError(f"BenchmarkConfig.name {self.name!r} must be letters, digits, '_', '-' or '.'")
        if not isinstance(self.source, str) or not self.source:
            raise ConfigError("BenchmarkConfig.source must be 'skimage' or a folder path (a str)")
        if self.photos is not None and (not self.photos or len(set(self.photos)) != len(self.photos)
                                        or not all(isinstance(p, str) for p in self.photos)):
            raise ConfigError(f"BenchmarkConfig.photos must be None or distinct names, got {self.photos!r}")
        fr = self.split_fractions
        if len(fr) != 3 or min(fr) <= 0 or abs(sum(fr) - 1) > 1e-6:
            raise ConfigError(f"split_fractions must be 3 positive shares summing to 1, got {fr!r}")
        if not 0 <= self.distractor_fraction < 1:
            raise ConfigError(f"distractor_fraction must be in [0, 1), got {self.distractor_fraction}")
        if self.min_region_side > self.tile_side:
            raise ConfigError(f"min_region_side ({self.min_region_side}) must not exceed tile_side "
                              f"({self.tile_side})")

    def to_dict(self) -> dict:
        """JSON-ready dict (tuples become lists)."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, data: dict) -> BenchmarkConfig:
        """Inverse of :meth:`to_dict`.

        Raises:
            ConfigError: unknown keys or invalid values.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown BenchmarkConfig keys {unknown}; valid keys: {sorted(known)}")
        return cls(**data)
