"""Mixer registry: ``create_mixer(name, schema=..., embed_dim=...)`` and ``mixer_from_config(cfg)``.

=============== ======================================== =============================================
name            class                                    options (defaults)
=============== ======================================== =============================================
``transformer`` :class:`~.transformer.TransformerMixer`  ``layers=4, heads=8, mlp_ratio=2.0`` (AFF),
                                                         ``anchor=False, anchor_weights=(), anchor_shrink=0``
``mlp``         :class:`~.mlp.MLPMixer`                  ``hidden=2*embed_dim, layers=2``
``concat``      :class:`~.concat.ConcatMixer`            ``whiten=True, input_weights=(), shrink=0``
                                                         (needs ``fit``; not trainable)
=============== ======================================== =============================================

Initialisation depends on ``seed`` only: parameters are drawn from an explicit CPU
``torch.Generator``, and the global RNG state is left exactly as it was.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from asymfuse.cloud.device import resolve_device
from asymfuse.cloud.models.fusion import GallerySchema
from asymfuse.cloud.models.mixers.base import Mixer
from asymfuse.cloud.models.mixers.concat import ConcatMixer
from asymfuse.cloud.models.mixers.mlp import MLPMixer
from asymfuse.cloud.models.mixers.transformer import TransformerMixer
from asymfuse.cloud.registry import Registry
from asymfuse.edge.errors import ConfigError

MIXERS: Registry[type[Mixer]] = Registry("mixer")
"""Registered mixer names mapped to their classes."""

for _cls in (TransformerMixer, MLPMixer, ConcatMixer):
    MIXERS.register(_cls.name)(_cls)

CONFIG_KEYS = ("name", "embed_dim", "kwargs", "schema")


def mixer_options(name: str) -> list[str]:
    """The keyword options mixer ``name`` takes besides ``schema`` and ``embed_dim``, sorted.

    Raises:
        UnknownNameError: unknown name.
    """
    params = inspect.signature(MIXERS.get(name).__init__).parameters
    return sorted(set(params) - {"self", "schema", "embed_dim"})


def create_mixer(name: str, *, schema: GallerySchema, embed_dim: int | None, device: str | torch.device = "cpu",
                 seed: int = 0, **kwargs: Any) -> Mixer:
    """Build a mixer with deterministic initial weights.

    Args:
        name: ``"transformer"``, ``"mlp"`` or ``"concat"`` (see the module table).
        schema: the K global + M local gallery inputs.
        embed_dim: output dimension d (for ``concat`` with ``whiten=False``: None or the concatenated dimension).
        device: where the module lives.
        seed: seed of the initialisation (same seed -> identical weights).
        **kwargs: the mixer's options.

    Returns:
        A Mixer in training mode on ``device``; ``forward`` gives ``(B, d)`` float32, unit-norm.

    Raises:
        UnknownNameError: unknown name.
        ConfigError: an option the mixer does not take (the message lists those it does), a bad
            value, a bad seed, or an unavailable device.
    """
    cls = MIXERS.get(name)
    accepted = mixer_options(name)
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ConfigError(f"mixer {name!r} does not take {unknown}; it takes {accepted}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"mixer seed must be an int >= 0, got {seed!r}")
    target = resolve_device(device)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # layer constructors draw from the global RNG; undo that
        mixer = cls(schema=schema, embed_dim=embed_dim, **kwargs)
    mixer.reset_parameters(generator=generator)
    return mixer.to(target)


def mixer_from_config(cfg: dict[str, Any], *, device: str | torch.device = "cpu") -> Mixer:
    """Rebuild the architecture that :meth:`Mixer.config` describes (weights: ``load_state_dict``).

    Args:
        cfg: ``{"name", "embed_dim", "kwargs", "schema"}`` as returned by ``Mixer.config()`` (files
            written before the rename carry ``"dim"``; it is read as ``embed_dim``).
        device: where the module lives.

    Raises:
        ConfigError: missing or extra keys, a malformed schema or bad options.
        UnknownNameError: unknown mixer name.
    """
    if isinstance(cfg, dict) and "dim" in cfg and "embed_dim" not in cfg:
        cfg = {("embed_dim" if k == "dim" else k): v for k, v in cfg.items()}
    if not isinstance(cfg, dict) or set(cfg) != set(CONFIG_KEYS):
        got = sorted(cfg) if isinstance(cfg, dict) else type(cfg).__name__
        raise ConfigError(f"a mixer config needs exactly the keys {list(CONFIG_KEYS)}, got {got}; "
                          "pass the dict returned by Mixer.config()")
    if not isinstance(cfg["kwargs"], dict):
        raise ConfigError(f"mixer config 'kwargs' must be a dict, got {cfg['kwargs']!r}")
    schema = GallerySchema.from_dict(cfg["schema"])
    return create_mixer(cfg["name"], schema=schema, embed_dim=cfg["embed_dim"], device=device, **cfg["kwargs"])
