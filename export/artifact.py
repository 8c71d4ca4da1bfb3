"""``Artifact``: one exported file plus what is known about it, the ``manifest.json`` beside the
artifacts, and the temp-then-rename writer every exporter uses.

Nothing half-written ever sits under a final name: exporters write into
:func:`atomic_artifact`'s temp path (a file or a folder such as ``.mlpackage``), which is renamed
onto the final name only when the export finished. Artifacts that fail the parity gate are moved
under ``failed/`` (:func:`failed_name`) and are never listed as shippable.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from asymfuse.edge.errors import ConfigError, CorruptDataError
from asymfuse.edge.fileio import atomic_write_text, fsync_dir
from asymfuse.edge.spec import ModelSpec

STATUSES: tuple[str, ...] = ("unverified", "passed", "failed", "export_failed", "skipped")
MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1
FAILED_DIR = "failed"
TOOLCHAIN_PACKAGES: tuple[str, ...] = (
    "torch", "onnx", "onnxscript", "onnxruntime", "litert-torch", "ai-edge-litert", "ai-edge-quantizer",
    "coremltools",
)


@dataclass(frozen=True)
class Artifact:
    """One exported model file (or ``.mlpackage`` folder) and its verification state.

    Attributes:
        path: where the artifact lies.
        format, precision, input_size: what was exported (see :class:`~asymfuse.export.spec.ExportSpec`).
        sha256: hex digest of the file (folders: see :func:`sha256_of`).
        size_bytes: bytes on disk (folders: sum of their files).
        spec: the model's :class:`ModelSpec`, also embedded in the file.
        toolchain: package -> version used for the export.
        status: ``"unverified"`` | ``"passed"`` | ``"failed"`` | ``"export_failed"`` | ``"skipped"``.
        parity: measured figures (``cosine_min``, ``cosine_mean``, ``map``, ``map_drop``, ...).
        reason: why the status is not ``"passed"``, in words.
    """

    path: Path
    format: str
    precision: str
    input_size: int
    sha256: str
    size_bytes: int
    spec: ModelSpec
    toolchain: dict[str, str] = field(default_factory=dict)
    status: str = "unverified"
    parity: dict[str, Any] = field(default_factory=dict)
    reason: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))
        if self.status not in STATUSES:
            raise ConfigError(f"Artifact.status={self.status!r} is unknown; choose one of {list(STATUSES)}")

    @property
    def shippable(self) -> bool:
        """Only artifacts that passed the parity gate ship."""
        return self.status == "passed"

    def with_status(self, status: str, *, reason: str = "", parity: dict[str, Any] | None = None,
                    path: Path | None = None) -> Artifact:
        """Copy with a new status (and optionally parity figures and path)."""
        return replace(self, status=status, reason=reason,
                       parity=dict(self.parity if parity is None else parity),
                       path=self.path if path is None else Path(path))

    def to_dict(self, *, relative_to: Path | None = None) -> dict[str, Any]:
        """JSON-ready manifest entry; ``file`` is relative to ``relative_to`` when given."""
        file = self.path
        if relative_to is not None:
            with contextlib.suppress(ValueError):
                file = self.path.resolve().relative_to(Path(relative_to).resolve())
        return {
            "file": file.as_posix(),
            "format": self.format,
            "precision": self.precision,
            "input_size": self.input_size,
            "sha256": self.sha256,
            "size_bytes": self.size_bytes,
            "spec": self.spec.to_dict(),
            "toolchain": dict(self.toolchain),
            "status": self.status,
            "shippable": self.shippable,
            "parity": _json_safe(self.parity),
            "reason": self.reason,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, folder: Path | None = None) -> Artifact:
        """Inverse of :meth:`to_dict`; a relative ``file`` is resolved against ``folder``."""
        path = Path(data["file"])
        if folder is not None and not path.is_absolute():
            path = Path(folder) / path
        return cls(path=path, format=data["format"], precision=data["precision"],
                   input_size=int(data["input_size"]), sha256=data["sha256"], size_bytes=int(data["size_bytes"]),
                   spec=ModelSpec.from_dict(data["spec"]), toolchain=dict(data.get("toolchain", {})),
                   status=data.get("status", "unverified"), parity=dict(data.get("parity", {})),
                   reason=data.get("reason", ""))


def make_artifact(path: Path, *, format: str, precision: str, input_size: int,  # noqa: A002
                  spec: ModelSpec, toolchain: dict[str, str] | None = None) -> Artifact:
    """Build an ``"unverified"`` :class:`Artifact` for a finished file, hashing and sizing it."""
    path = Path(path)
    return Artifact(path=path, format=format, precision=precision, input_size=input_size,
                    sha256=sha256_of(path), size_bytes=size_of(path), spec=spec,
                    toolchain=toolchain_versions() if toolchain is None else dict(toolchain))


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return value.item()
    return value


# ---- hashing ---------------------------------------------------------------------------------
def _hash_file(path: Path, digest: Any) -> None:
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)


def sha256_of(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file, or of a folder (e.g. ``.mlpackage``): over its sorted relative file
    paths, each followed by a NUL and its contents' own SHA-256.

    Raises:
        CorruptDataError: the path does not exist.
    """
    p = Path(path)
    if p.is_file():
        digest = hashlib.sha256()
        _hash_file(p, digest)
        return digest.hexdigest()
    if p.is_dir():
        digest = hashlib.sha256()
        for f in sorted(q for q in p.rglob("*") if q.is_file()):
            inner = hashlib.sha256()
            _hash_file(f, inner)
            digest.update(f.relative_to(p).as_posix().encode("utf-8") + b"\0" + inner.digest())
        return digest.hexdigest()
    raise CorruptDataError(f"artifact {p} does not exist; export it first")


def size_of(path: str | os.PathLike[str]) -> int:
    """Bytes on disk of a file, or the sum over a folder's files."""
    p = Path(path)
    if p.is_dir():
        return sum(q.stat().st_size for q in p.rglob("*") if q.is_file())
    return p.stat().st_size


def toolchain_versions() -> dict[str, str]:
    """Installed versions of the export toolchain (only packages that are present), read from
    package metadata without importing them."""
    out: dict[str, str] = {}
    for name in TOOLCHAIN_PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


# ---- temp-then-rename ------------------------------------------------------------------------
def check_writable(folder: str | os.PathLike[str]) -> Path:
    """Create ``folder`` if needed and make sure we can write into it.

    Raises:
        ConfigError: the folder cannot be created or is not writable.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"output folder {folder} is not writable: it cannot be created ({exc.strerror}); "
                          "pass --out to a folder you can write") from exc
    try:  # a real probe: os.access says yes to root and on read-only mounts
        fd, probe = tempfile.mkstemp(prefix=".probe-", dir=folder)
    except OSError as exc:
        raise ConfigError(f"output folder {folder} is not writable ({exc.strerror}); "
                          "pass --out to a folder you can write") from exc
    os.close(fd)
    os.unlink(probe)
    return folder


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_artifact(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp path beside ``path`` to write an artifact (a file or a folder) into.

    On a clean exit the temp is renamed onto ``path`` (an existing artifact there is replaced, and
    so is a stale copy under ``failed/`` from an earlier export of the same name, with its sidecar);
    on any exception, or when nothing was written, the temp is removed and ``path`` is untouched.
    The temp name keeps the artifact's extension (``.tmp-<hex>-name.onnx``) so toolchains that
    check suffixes are happy.

    Raises:
        ConfigError: the folder is not writable.
        CorruptDataError: the body exited cleanly but wrote nothing at the temp path.
    """
    target = Path(path)
    check_writable(target.parent)
    tmp = target.with_name(f".tmp-{secrets.token_hex(4)}-{target.name}")
    try:
        yield tmp
        if not tmp.exists():
            raise CorruptDataError(f"export wrote nothing to {tmp}; {target} was not created")
        if tmp.is_file():
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        if target.is_dir() and not target.is_symlink():  # os.replace cannot replace a folder
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        _remove(tmp)
        raise
    fsync_dir(target.parent)
    stale = failed_name(target)
    for old in (stale, stale.with_name(stale.name + ".json")):
        _remove(old)


def failed_name(path: str | os.PathLike[str]) -> Path:
    """Where an artifact that failed the gate lives: ``path.parent / "failed" / path.name``."""
    p = Path(path)
    return p.parent / FAILED_DIR / p.name


def move_to_failed(path: str | os.PathLike[str]) -> Path:
    """Move an artifact (file or folder, plus a ``<file>.json`` sidecar if present) under ``failed/``.

    Returns:
        The new path.
    """
    src = Path(path)
    dst = failed_name(src)
    check_writable(dst.parent)
    if dst.exists():
        _remove(dst)
    os.replace(src, dst)
    sidecar = src.with_name(src.name + ".json")
    if sidecar.exists():
        os.replace(sidecar, dst.with_name(dst.name + ".json"))
    fsync_dir(dst.parent)
    fsync_dir(src.parent)
    return dst


# ---- manifest --------------------------------------------------------------------------------
def write_manifest(folder: str | os.PathLike[str], artifacts: Iterable[Artifact]) -> Path:
    """Write ``folder/manifest.json`` atomically.

    Lists every artifact (file relative to ``folder``, sha256, format, precision, ModelSpec,
    parity figures, status, ``shippable`` = status ``"passed"``, toolchain versions), plus the
    list of shippable files.

    Returns:
        The manifest path.
    """
    folder = check_writable(folder)
    entries = [a.to_dict(relative_to=folder) for a in artifacts]
    doc = {
        "manifest_version": MANIFEST_VERSION,
        "toolchain": toolchain_versions(),
        "artifacts": entries,
        "shippable": [e["file"] for e in entries if e["shippable"]],
    }
    return atomic_write_text(folder / MANIFEST_NAME, json.dumps(doc, indent=2, sort_keys=True) + "\n")


def read_manifest(folder: str | os.PathLike[str]) -> list[Artifact]:
    """Read ``folder/manifest.json`` back into :class:`Artifact` records.

    Raises:
        CorruptDataError: the manifest is missing or malformed.
    """
    path = Path(folder) / MANIFEST_NAME
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        return [Artifact.from_dict(e, folder=Path(folder)) for e in doc["artifacts"]]
    except FileNotFoundError as exc:
        raise CorruptDataError(f"{path} does not exist; run `asymfuse export --out {folder}` first") from exc
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise CorruptDataError(f"{path} is malformed ({exc}); re-run the export") from exc
