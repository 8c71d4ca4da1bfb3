"""``asymfuse train aff`` config loading: YAML + overrides, unknown keys refused."""

from __future__ import annotations

import pytest

from asymfuse.cloud.cli.main import main
from asymfuse.cloud.cli.train_cmd import load_train_config
from asymfuse.edge.errors import ConfigError


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("scheme: two_stage\nepochs: 8\nstage1_epochs: 3\ngallery_features: [gem_lite1, sift]\n")
    cfg = load_train_config(str(path), ["epochs=9", "lr=0.005"], device="cpu")
    assert (cfg.scheme, cfg.epochs, cfg.stage1_epochs, cfg.lr) == ("two_stage", 9, 3, 0.005)
    assert cfg.gallery_features == ("gem_lite1", "sift")


def test_unknown_key_is_refused_with_the_valid_keys(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("epoch: 3\n")
    with pytest.raises(ConfigError, match=r"unknown training config keys \['epoch'\].*epochs"):
        load_train_config(str(path), None)


def test_cli_reports_config_errors_with_exit_code_2(tmp_path, capsys):
    assert main(["train", "aff", "--set", "scheme=bct", "--set", "gallery_features=[\"a\",\"b\"]",
                 "--out", str(tmp_path)]) == 2
    assert "ONE frozen gallery feature" in capsys.readouterr().err
    path = tmp_path / "c.yaml"
    path.write_text("- not a mapping\n")
    assert main(["train", "aff", "--config", str(path)]) == 2


def test_flops_command_prints_a_table(capsys):
    from asymfuse.cloud.models.flops import query_net_cost

    assert main(["flops", "--arch", "shufflenet_v2_x1_0", "--size", "128", "--size", "224"]) == 0
    out = capsys.readouterr().out
    want = query_net_cost("shufflenet_v2_x1_0", size=224)
    assert f"| shufflenet_v2_x1_0 | 224 | {want['params_m']:.2f} | {want['gflops']:.2f} |" in out
    assert "| shufflenet_v2_x1_0 | 128 |" in out
    assert main(["flops", "--arch", "resnet9000"]) == 2
