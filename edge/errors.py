"""One exception hierarchy for all of asymfuse.

Every message says what was wrong and how to fix it. The service (a later issue) maps these
classes to gRPC status codes, so pick the most specific class.
"""

from __future__ import annotations


class AsymfuseError(Exception):
    """Base class of every error asymfuse raises on purpose."""


class ConfigError(AsymfuseError, ValueError):
    """A configuration value or argument is invalid (maps to INVALID_ARGUMENT)."""


class ShapeError(AsymfuseError, ValueError):
    """An array has the wrong shape, dtype or contains NaN/inf (maps to INVALID_ARGUMENT)."""


class UnknownNameError(AsymfuseError, KeyError):
    """A registry lookup failed: unknown model, extractor, dataset or format (maps to NOT_FOUND)."""

    def __str__(self) -> str:  # KeyError would repr() the message; keep it readable.
        return str(self.args[0]) if self.args else ""


class CorruptDataError(AsymfuseError, OSError):
    """A file on disk is truncated, fails its checksum or has the wrong layout (FAILED_PRECONDITION)."""


class MissingDependencyError(AsymfuseError, ImportError):
    """An optional dependency is missing; the message names the pip extra to install."""


class ClosedError(AsymfuseError, RuntimeError):
    """A handle (runner, embedder) was used after ``close()`` (maps to FAILED_PRECONDITION); create a new one."""


def unknown_name(kind: str, name: str, known: list[str] | tuple[str, ...]) -> UnknownNameError:
    """Build the standard error for an unknown registry name.

    Args:
        kind: what was looked up, e.g. ``"query net"``.
        name: the name the caller gave.
        known: the registered names.
    """
    return UnknownNameError(f"unknown {kind} {name!r}; choose one of: {', '.join(sorted(known))}")


def missing_dependency(package: str, extra: str) -> MissingDependencyError:
    """Build the standard error for a missing optional dependency."""
    return MissingDependencyError(
        f"{package} is not installed; install it with: pip install 'asymfuse[{extra}]'"
    )


class IncompatibleModelError(AsymfuseError):
    """The searcher serves another embedding space than the client's query model (FAILED_PRECONDITION).

    Attributes:
        server_space, client_space: the two embedding space ids.
    """

    def __init__(self, message: str, *, server_space: str = "", client_space: str = "") -> None:
        super().__init__(message)
        self.server_space = server_space
        self.client_space = client_space


class RemoteError(AsymfuseError):
    """The searcher answered with an error status; ``code`` is the gRPC status name (e.g. "NOT_FOUND")."""

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.code = code
