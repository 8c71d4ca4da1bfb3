"""The gallery feature zoo: ``create_feature_extractor(name, ...)``.

| name            | kind   | model                                   | dim  |
|-----------------|--------|-----------------------------------------|------|
| gem_lite1       | global | EfficientNet-Lite1 (ImageNet) + GeM      | 1280 |
| gem_lite2       | global | EfficientNet-Lite2 (ImageNet) + GeM      | 1280 |
| local_lite2     | local  | Lite2 stride-16 map, top-L by norm       | 120  |
| sift / rootsift | local  | OpenCV SIFT, top-L by response           | 128  |
| onnx_global     | global | any user ONNX model (onnxruntime)        | spec |
| query_net       | global | an asymfuse query-net checkpoint          | d    |
| gem_torchvision | global | torchvision trunk + user weights + GeM   | C    |
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from pathlib import Path

import torch

from asymfuse.cloud.features.base import FeatureExtractor
from asymfuse.cloud.features.cnn_global import GemGlobalExtractor
from asymfuse.cloud.features.cnn_local import LiteMapLocalExtractor
from asymfuse.cloud.features.onnx_global import OnnxGlobalExtractor
from asymfuse.cloud.features.query_net import QueryNetExtractor
from asymfuse.cloud.features.sift import SiftExtractor
from asymfuse.cloud.models.backbones import create_trunk
from asymfuse.cloud.models.weights import require_weights_path
from asymfuse.cloud.registry import Registry
from asymfuse.edge.errors import ConfigError
from asymfuse.edge.spec import ModelSpec

ExtractorFactory = Callable[..., FeatureExtractor]
FEATURE_EXTRACTORS: Registry[ExtractorFactory] = Registry("feature extractor")


def _gem_lite(variant: str, name: str) -> ExtractorFactory:
    def build(*, max_side: int = 384, p: float = 3.0, batch_size: int = 16, device: str | torch.device = "cpu",
              precision: str = "fp32", channels_last: bool = True) -> FeatureExtractor:
        trunk = create_trunk(variant, pretrained=True)
        return GemGlobalExtractor(name=name, trunk=trunk, max_side=max_side, p=p, batch_size=batch_size,
                                  device=device, precision=precision, channels_last=channels_last)

    return build


FEATURE_EXTRACTORS.register("gem_lite1")(_gem_lite("efficientnet_lite1", "gem_lite1"))
FEATURE_EXTRACTORS.register("gem_lite2")(_gem_lite("efficientnet_lite2", "gem_lite2"))


@FEATURE_EXTRACTORS.register("local_lite2")
def _local_lite2(*, max_local: int = 256, max_side: int = 384, batch_size: int = 8,
                 device: str | torch.device = "cpu", precision: str = "fp32",
                 channels_last: bool = True) -> FeatureExtractor:
    trunk = create_trunk("efficientnet_lite2", pretrained=True)
    return LiteMapLocalExtractor(name="local_lite2", trunk=trunk, max_local=max_local, max_side=max_side,
                                 batch_size=batch_size, device=device, precision=precision,
                                 channels_last=channels_last)


@FEATURE_EXTRACTORS.register("sift")
def _sift(*, max_local: int = 512, max_side: int = 512, device: str | torch.device = "cpu") -> FeatureExtractor:
    del device  # OpenCV runs on the CPU
    return SiftExtractor(name="sift", root=False, max_local=max_local, max_side=max_side)


@FEATURE_EXTRACTORS.register("rootsift")
def _rootsift(*, max_local: int = 512, max_side: int = 512,
              device: str | torch.device = "cpu") -> FeatureExtractor:
    del device
    return SiftExtractor(name="rootsift", root=True, max_local=max_local, max_side=max_side)


@FEATURE_EXTRACTORS.register("onnx_global")
def _onnx_global(*, model_path: str | os.PathLike[str], model_spec: ModelSpec | str | None = None,
                 output_name: str | None = None, threads: int = 0,
                 device: str | torch.device = "cpu") -> FeatureExtractor:
    del device  # onnxruntime CPU provider
    return OnnxGlobalExtractor(name="onnx_global", model_path=model_path, model_spec=_model_spec_option(model_spec),
                               output_name=output_name, threads=threads)


@FEATURE_EXTRACTORS.register("query_net")
def _query_net(*, checkpoint: str | os.PathLike[str], batch_size: int = 16,
               device: str | torch.device = "cpu") -> FeatureExtractor:
    return QueryNetExtractor(checkpoint=checkpoint, batch_size=int(batch_size), device=device)


def _model_spec_option(value: ModelSpec | str | None) -> ModelSpec | None:
    """A ModelSpec, or the CLI's string form: a ModelSpec JSON file or the JSON itself.

    Raises:
        ConfigError: a string that is neither.
    """
    if value is None or isinstance(value, ModelSpec):
        return value
    text = str(value)
    path = Path(text)
    if not text.lstrip().startswith("{") and path.is_file():
        text = path.read_text(encoding="utf-8")
    return ModelSpec.from_json(text)


@FEATURE_EXTRACTORS.register("gem_torchvision")
def _gem_torchvision(*, arch: str = "resnet50", weights_path: str | os.PathLike[str] | None = None,
                     allow_random_weights: bool = False, max_side: int = 384, p: float = 3.0,
                     batch_size: int = 16, device: str | torch.device = "cpu", precision: str = "fp32",
                     channels_last: bool = True) -> FeatureExtractor:
    if weights_path is None and not allow_random_weights:
        require_weights_path(arch, weights_path)
    trunk = create_trunk(arch, pretrained=False, weights_path=weights_path)
    return GemGlobalExtractor(name=f"gem_{arch}", trunk=trunk, max_side=max_side, p=p, batch_size=batch_size,
                              device=device, precision=precision, channels_last=channels_last)


def extractor_options(name: str) -> set[str]:
    """The keyword options extractor ``name`` takes (``device`` included).

    Raises:
        UnknownNameError: unknown name.
    """
    return set(inspect.signature(FEATURE_EXTRACTORS.get(name)).parameters)


def create_feature_extractor(name: str, *, device: str | torch.device = "cpu", **kwargs: object) -> FeatureExtractor:
    """Build a frozen gallery extractor by name (see the module table).

    The CNN extractors (``gem_*``, ``local_lite2``) also take ``precision`` (``fp32``, ``bf16``,
    ``fp16`` on CUDA: autocast of the forward) and ``channels_last``.

    Raises:
        UnknownNameError: unknown name. ConfigError: an option the extractor does not take.
    """
    factory = FEATURE_EXTRACTORS.get(name)
    accepted = extractor_options(name)
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ConfigError(f"feature extractor {name!r} does not take {unknown}; it takes {sorted(accepted)}")
    return factory(device=device, **kwargs)
