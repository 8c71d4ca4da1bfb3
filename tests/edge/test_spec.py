"""ModelSpec: validation, JSON round trip and a stable embedding-space id."""

from __future__ import annotations

import json

import pytest

from asymfuse.edge.errors import ConfigError
from asymfuse.edge.spec import ModelSpec, compute_embedding_space_id


def make(**kw):
    base = dict(arch="mobilenet_v2", embed_dim=512, input_size=(224, 224), embedding_space_id="es-x")
    base.update(kw)
    return ModelSpec(**base)


def test_json_roundtrip_is_exact_and_canonical():
    spec = make(resize="letterbox", extra={"note": "a"})
    text = spec.to_json()
    assert ModelSpec.from_json(text) == spec
    assert json.loads(text)["input_size"] == [224, 224]
    assert text == ModelSpec.from_json(text).to_json()


@pytest.mark.parametrize("bad, match", [
    (dict(embed_dim=0), "embed_dim"),
    (dict(input_size=(224,)), "input_size"),
    (dict(std=(0.1, 0.0, 0.1)), "std"),
    (dict(mean=(0.1, float("nan"), 0.1)), "mean"),
    (dict(resize="stretchy"), "resize"),
    (dict(pooling="magic"), "pooling"),
    (dict(embedding_space_id=""), "embedding_space_id"),
    (dict(format_version=99), "upgrade"),
])
def test_invalid_values_are_rejected_with_the_field_name(bad, match):
    with pytest.raises(ConfigError, match=match):
        make(**bad)


def test_unknown_and_missing_keys_are_rejected():
    d = make().to_dict()
    with pytest.raises(ConfigError, match="unknown ModelSpec keys"):
        ModelSpec.from_dict({**d, "colour": "blue"})
    d.pop("arch")
    with pytest.raises(ConfigError, match="missing keys"):
        ModelSpec.from_dict(d)
    with pytest.raises(ConfigError, match="malformed"):
        ModelSpec.from_json("{not json")


def test_space_id_is_stable_and_order_free():
    a = compute_embedding_space_id({"gallery": ["gem_lite1", "gem_lite2"], "mixer": "abc"})
    b = compute_embedding_space_id({"mixer": "abc", "gallery": ["gem_lite1", "gem_lite2"]})
    assert a == b
    # Pinned: changing the hashing scheme silently would split every deployed space.
    assert compute_embedding_space_id({"k": 1}) == "es-" + __import__("hashlib").sha256(
        b'{"k":1}').hexdigest()[:16]
    assert a != compute_embedding_space_id({"gallery": ["gem_lite1"], "mixer": "abc"})
    with pytest.raises(ConfigError):
        compute_embedding_space_id({})


def test_compatibility_needs_same_space_and_dim():
    a = make()
    assert a.is_compatible_with(make())
    assert not a.is_compatible_with(make(embedding_space_id="es-y"))
    assert not a.is_compatible_with(make(embed_dim=256))
    assert a.with_embedding_space("es-y").embedding_space_id == "es-y"
