"""The console script's commands, run in-process through ``main(argv)``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from asymfuse.cloud.cli.main import main
from asymfuse.cloud.cli.options import parse_options
from asymfuse.edge.errors import ConfigError

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "moon", "page", "text")


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    from asymfuse.cloud.data.benchmark import BenchmarkConfig, build_benchmark

    return build_benchmark(tmp_path_factory.mktemp("b") / "bench",
                           config=BenchmarkConfig(photos=PHOTOS, n_views=3))


def test_models_lists_registries(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "efficientnet_lite0" in out and "gem_lite2" in out and "rootsift" in out


def test_data_build_then_reuse(tmp_path, capsys):
    args = ["data", "build", "--out", str(tmp_path / "b"), "--n-views", "2"]
    assert main(args) == 0
    assert "built" in capsys.readouterr().out
    assert main(args) == 0
    assert "reused" in capsys.readouterr().out


def test_extract_then_eval_from_features_and_from_ranking(bench, tmp_path, capsys):
    root = str(bench.split("test").root)
    ds_opt = ["--dataset-option", "name=asymfuse-skimage"]
    assert main(["extract", "--root", root, *ds_opt, "--extractor", "sift", "--option", "max_local=32",
                 "--out", str(tmp_path / "sift")]) == 0
    # Local stores cannot be ranked directly: the error names the fix.
    assert main(["eval", "--root", root, *ds_opt, "--features", str(tmp_path / "sift")]) == 2
    assert "aggregate local" in capsys.readouterr().err
    assert main(["extract", "--root", root, *ds_opt, "--extractor", "gem_lite1", "--option", "max_side=224",
                 "--out", str(tmp_path / "g")]) == 0
    assert main(["eval", "--root", root, *ds_opt, "--features", str(tmp_path / "g"),
                 "--json", str(tmp_path / "m.json")]) == 0
    from_features = json.loads((tmp_path / "m.json").read_text())
    # The same numbers from a ranking file computed by brute force.
    from asymfuse.cloud.features.store import FeatureStore
    xq = np.asarray(FeatureStore.open(tmp_path / "g" / "queries").global_features())
    xb = np.asarray(FeatureStore.open(tmp_path / "g" / "gallery").global_features())
    ranks = np.argsort(-(xq @ xb.T), axis=1, kind="stable")  # (nq, nb)
    np.save(tmp_path / "ranks.npy", ranks)
    assert main(["eval", "--root", root, *ds_opt, "--ranking", str(tmp_path / "ranks.npy"),
                 "--layout", "faiss", "--json", str(tmp_path / "m2.json")]) == 0
    from_ranking = json.loads((tmp_path / "m2.json").read_text())
    for key in ("mAP_easy", "mAP_medium", "mAP_hard"):
        assert from_features[key] == pytest.approx(from_ranking[key], abs=1e-6)


def test_user_errors_exit_2_with_a_reason(bench, tmp_path, capsys):
    root = str(bench.split("test").root)
    assert main(["extract", "--root", root, "--dataset-option", "name=asymfuse-skimage",
                 "--extractor", "gem_lite9", "--out", str(tmp_path / "x")]) == 2
    assert "unknown feature extractor 'gem_lite9'" in capsys.readouterr().err
    (tmp_path / "bad.npy").write_bytes(b"nope")
    assert main(["eval", "--root", root, "--dataset-option", "name=asymfuse-skimage",
                 "--ranking", str(tmp_path / "bad.npy")]) == 2
    assert "not a readable .npy" in capsys.readouterr().err


def test_parse_options():
    assert parse_options(["a=1", "b=true", "c=x", "d=[1, 2]"]) == {"a": 1, "b": True, "c": "x", "d": [1, 2]}
    with pytest.raises(ConfigError, match="key=value"):
        parse_options(["novalue"])


def test_every_command_is_in_the_readme_command_table():
    """A new sub-command without a row in the README's command table fails here."""
    import argparse
    from pathlib import Path

    from asymfuse.cloud.cli.main import build_parser

    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text(encoding="utf-8")
    table = readme[readme.index("## Command line"):]
    parser = build_parser()
    [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for name, command in sub.choices.items():
        nested = [a for a in command._actions if isinstance(a, argparse._SubParsersAction)]
        names = [f"{name} {child}" for child in nested[0].choices] if nested else [name]
        missing = [n for n in names if f"`asymfuse {n}" not in table]
        assert not missing, f"README command table lacks {missing}"


def test_root_chatter_filter_drops_converter_info_and_the_false_training_mode_warning():
    import logging

    from asymfuse.cloud.cli.main import RootChatterFilter

    f = RootChatterFilter()

    def rec(name, level, msg):
        return logging.LogRecord(name, level, __file__, 1, msg, None, None)

    assert not f.filter(rec("root", logging.INFO, "Use JAX lowering: aten.mm"))
    assert not f.filter(rec("root", logging.WARNING, RootChatterFilter.TRAINING_MODE + ". Please set ..."))
    assert f.filter(rec("root", logging.WARNING, "some other converter warning"))
    assert f.filter(rec("asymfuse.train", logging.INFO, "epoch 1"))  # named loggers are untouched
    assert f.filter(rec("asymfuse.export", logging.INFO, RootChatterFilter.TRAINING_MODE))
