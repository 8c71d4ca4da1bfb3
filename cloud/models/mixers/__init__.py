"""Gallery-side fusion models ("mixers"): K global + M local frozen features -> ``(B, d)`` unit-norm.

Build one with :func:`create_mixer` (``"transformer"``: the AFF dynamic mixer; ``"mlp"``;
``"concat"``), save ``mixer.config()`` next to ``mixer.state_dict()``, and rebuild it with
:func:`mixer_from_config` + ``load_state_dict``; or write a whole mixer file with
:func:`save_mixer` and read it back with :func:`load_mixer`.
"""

from asymfuse.cloud.models.mixers.base import Mixer, masked_mean_pool
from asymfuse.cloud.models.mixers.checkpoint import MixerInfo, load_mixer, save_mixer
from asymfuse.cloud.models.mixers.concat import ConcatMixer
from asymfuse.cloud.models.mixers.mlp import MLPMixer
from asymfuse.cloud.models.mixers.registry import MIXERS, create_mixer, mixer_from_config, mixer_options
from asymfuse.cloud.models.mixers.transformer import TransformerMixer

__all__ = ["MIXERS", "ConcatMixer", "MLPMixer", "Mixer", "MixerInfo", "TransformerMixer", "create_mixer",
           "load_mixer", "masked_mean_pool", "mixer_from_config", "mixer_options", "save_mixer"]
