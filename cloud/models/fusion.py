"""What a gallery-side fusion model eats: the schema of its K global and M local inputs, and a batch.

The gallery models are frozen and extracted once into feature stores; a mixer only ever sees
their outputs. :class:`GallerySchema` names those inputs (one :class:`FeatureSlot` per stored
feature, in a fixed order), and :class:`FusionInputs` carries one batch of them as tensors.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from asymfuse.edge.errors import ConfigError, ShapeError

SlotKind = Literal["global", "local"]


@dataclass(frozen=True)
class FeatureSlot:
    """One frozen gallery feature.

    Attributes:
        name: extractor name, e.g. ``"gem_lite2"``; unique within a schema.
        kind: ``"global"`` (one ``(D,)`` vector per image) or ``"local"`` (a set of ``(L, d)``).
        dim: D for a global slot, d for a local slot.
        max_local: for a local slot, the number of descriptors the mixer sees per image (the
            store's top-weighted ones); None for a global slot.
        extractor_id: the store's ``extractor_id`` (config + weights digest); part of the
            embedding-space identity. Empty when unknown (tests, synthetic data).
    """

    name: str
    kind: SlotKind
    dim: int
    max_local: int | None = None
    extractor_id: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("a FeatureSlot needs a non-empty name")
        if self.kind not in ("global", "local"):
            raise ConfigError(f"FeatureSlot {self.name!r}: kind must be 'global' or 'local', got {self.kind!r}")
        if not isinstance(self.dim, int) or self.dim < 1:
            raise ConfigError(f"FeatureSlot {self.name!r}: dim must be a positive int, got {self.dim!r}")
        if self.kind == "local" and (not isinstance(self.max_local, int) or self.max_local < 1):
            raise ConfigError(f"local FeatureSlot {self.name!r} needs max_local >= 1, got {self.max_local!r}")
        if self.kind == "global" and self.max_local is not None:
            raise ConfigError(f"global FeatureSlot {self.name!r} must have max_local=None")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "dim": self.dim, "max_local": self.max_local,
                "extractor_id": self.extractor_id}


@dataclass(frozen=True)
class GallerySchema:
    """The ordered gallery inputs of a mixer: global slots first, then local slots."""

    slots: tuple[FeatureSlot, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "slots", tuple(self.slots))
        if not self.slots:
            raise ConfigError("a GallerySchema needs at least one feature slot")
        names = [s.name for s in self.slots]
        if len(set(names)) != len(names):
            raise ConfigError(f"feature slot names must be unique, got {names}")
        kinds = [s.kind for s in self.slots]
        if kinds != sorted(kinds):  # "global" < "local"
            raise ConfigError(f"global slots must come before local slots, got {names} ({kinds})")

    @property
    def global_slots(self) -> tuple[FeatureSlot, ...]:
        return tuple(s for s in self.slots if s.kind == "global")

    @property
    def local_slots(self) -> tuple[FeatureSlot, ...]:
        return tuple(s for s in self.slots if s.kind == "local")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.slots)

    def to_dict(self) -> dict[str, Any]:
        return {"slots": [s.to_dict() for s in self.slots]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GallerySchema:
        try:
            return cls(slots=tuple(FeatureSlot(**s) for s in data["slots"]))
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"malformed gallery schema {data!r} ({exc})") from exc

    def digest(self) -> str:
        """sha256 hex of the canonical JSON of the schema (names, kinds, dims, extractor ids)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class FusionInputs:
    """One batch of frozen gallery features, in :class:`GallerySchema` order.

    Attributes:
        globals_: K tensors ``(B, D_k)`` float, unit-norm rows.
        locals_: M tensors ``(B, L_m, d_m)`` float, unit-norm rows, zero at padding.
        local_pads: M tensors ``(B, L_m)`` bool, True where the slot is padding.
    """

    globals_: tuple[torch.Tensor, ...] = ()
    locals_: tuple[torch.Tensor, ...] = ()
    local_pads: tuple[torch.Tensor, ...] = ()

    def __post_init__(self) -> None:
        for name in ("globals_", "locals_", "local_pads"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if len(self.locals_) != len(self.local_pads):
            raise ShapeError(f"{len(self.locals_)} local sets but {len(self.local_pads)} pad masks; pass one per set")
        sizes = {t.shape[0] for t in (*self.globals_, *self.locals_, *self.local_pads)}
        if len(sizes) > 1:
            raise ShapeError(f"all inputs of a FusionInputs batch need the same batch size, got {sorted(sizes)}")
        if not self.globals_ and not self.locals_:
            raise ShapeError("a FusionInputs batch needs at least one global or local feature")

    @property
    def batch_size(self) -> int:
        return int((self.globals_ or self.locals_)[0].shape[0])

    def to(self, device: torch.device | str, *, non_blocking: bool = False) -> FusionInputs:
        """A copy on ``device``."""
        def move(ts: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
            return tuple(t.to(device, non_blocking=non_blocking) for t in ts)
        return FusionInputs(move(self.globals_), move(self.locals_), move(self.local_pads))

    def select(self, index: torch.Tensor | slice) -> FusionInputs:
        """Rows ``index`` of every input."""
        return FusionInputs(tuple(t[index] for t in self.globals_), tuple(t[index] for t in self.locals_),
                            tuple(t[index] for t in self.local_pads))

    def check(self, schema: GallerySchema) -> None:
        """Raise ShapeError naming the slot if this batch does not match ``schema``."""
        gs, ls = schema.global_slots, schema.local_slots
        if len(self.globals_) != len(gs) or len(self.locals_) != len(ls):
            raise ShapeError(f"the mixer expects {len(gs)} global and {len(ls)} local inputs "
                             f"({list(schema.names)}), got {len(self.globals_)} and {len(self.locals_)}")
        for slot, t in zip(gs, self.globals_):
            if t.ndim != 2 or t.shape[1] != slot.dim:
                raise ShapeError(f"global input {slot.name!r} must be (B, {slot.dim}), got {tuple(t.shape)}; "
                                 "the feature store and the mixer config disagree on its dimension")
        for slot, t, m in zip(ls, self.locals_, self.local_pads):
            if t.ndim != 3 or t.shape[2] != slot.dim:
                raise ShapeError(f"local input {slot.name!r} must be (B, L, {slot.dim}), got {tuple(t.shape)}; "
                                 "the feature store and the mixer config disagree on its dimension")
            if m.shape != t.shape[:2] or m.dtype != torch.bool:
                raise ShapeError(f"mask of {slot.name!r} must be bool {tuple(t.shape[:2])}, "
                                 f"got {m.dtype} {tuple(m.shape)}")
