"""The README, as a new user reads it: every Python name it shows imports as shown, every command
and flag it shows exists, and its example ``my.yaml`` is a valid training config."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def import_lines() -> list[str]:
    return [line.strip() for block in blocks("python") for line in block.splitlines()
            if re.match(r"\s*(from asymfuse[\w.]* import |import asymfuse)", line)]


def command_lines(script: str = "asymfuse") -> list[list[str]]:
    """Each ``<script> ...`` invocation of the bash blocks, continuation lines joined, comments cut."""
    found = []
    for block in blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            for match in re.finditer(rf"(?:^|[\s;&(])(?:\S*/)?{re.escape(script)}\)?\s+(.*?)(?=$|&&|;)", line):
                words = shlex.split(match.group(1))
                if words and not words[0].startswith("-"):
                    found.append(words)
    return found


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _flags(parser: argparse.ArgumentParser) -> set[str]:
    return {s for action in parser._actions for s in action.option_strings}


def dotted_names() -> list[str]:
    """Inline code names such as `asymfuse.edge.preprocess.preprocess` (metadata keys excluded)."""
    names = set(re.findall(r"`(asymfuse\.[A-Za-z_][\w.]*[A-Za-z_])", README))
    return sorted(n for n in names if n not in ("asymfuse.model_spec", "asymfuse.quantization"))


def test_the_readme_shows_python_and_commands():
    assert len(import_lines()) >= 4 and len(command_lines()) >= 20 and len(dotted_names()) >= 8


@pytest.mark.parametrize("line", import_lines())
def test_every_python_import_in_the_readme_works(line):
    exec(line, {})  # noqa: S102 - the README's own import line, nothing else


@pytest.mark.parametrize("name", dotted_names())
def test_every_dotted_name_in_the_readme_resolves(name):
    import importlib

    parts = name.split(".")
    for cut in range(len(parts), 1, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return
    pytest.fail(f"README names {name}, which does not import")


@pytest.mark.parametrize("script", ["asymfuse", "asymfuse-edge"])
def test_every_command_and_flag_in_the_readme_exists(script):
    from asymfuse.cloud.cli.main import build_parser
    from asymfuse.edge.cli import build_parser as build_edge_parser

    top = build_parser() if script == "asymfuse" else build_edge_parser()
    bad = []
    lines = command_lines(script)
    assert lines, f"the README shows no {script} command"
    for words in lines:
        parser, used = top, [script]
        while (subs := _subparsers(parser)) and words and not words[0].startswith("-"):
            if words[0] not in subs:
                bad.append(f"{' '.join(used)} has no command {words[0]!r} (README: {' '.join(words)})")
                break
            used.append(words[0])
            parser, words = subs[words[0]], words[1:]
        flags = _flags(parser) | _flags(top)
        bad += [f"{' '.join(used)} has no flag {w} " for w in words
                if w.startswith("--") and w.split("=")[0] not in flags]
    assert not bad, "\n".join(bad)


def test_the_example_training_config_is_valid():
    from asymfuse.cloud.train.aff_config import TrainConfig

    configs = [yaml.safe_load(b) for b in blocks("yaml")]
    assert configs, "the README shows an example my.yaml"
    for values in configs:
        TrainConfig().replace(**values)  # unknown keys or bad values raise ConfigError


def test_a_package_surface_names_its_public_names_for_a_typo():
    import asymfuse.cloud.ames as ames

    with pytest.raises(AttributeError, match="load_ames"):
        ames.load_amess  # noqa: B018
