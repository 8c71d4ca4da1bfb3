"""``asymfuse train aff|ames``: train the AFF mixer and/or a compatible query net, or an AMES
re-ranker (both torchrun-ready)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train models (aff, ames)")
    tsub = p.add_subparsers(dest="train_kind", required=True, metavar="KIND")
    a = tsub.add_parser("aff", help="AFF: dynamic mixer + momentum-compatible query net, or a baseline scheme",
                        description="Keys of the config file and --set overrides are TrainConfig fields "
                                    "(see asymfuse.cloud.train.aff_config). Launch with "
                                    "`torchrun --nproc_per_node N $(which asymfuse) train aff ...` for DDP.")
    a.add_argument("--config", help="YAML (or JSON) file of TrainConfig keys")
    a.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one config key (repeatable)")
    a.add_argument("--out", default="runs/aff", help="run folder (checkpoints, metrics.jsonl, models)")
    a.add_argument("--resume", action="store_true", help="continue from <out>/last.pt")
    a.add_argument("--device", help="cpu | cuda | cuda:N (overrides the config)")
    a.set_defaults(func=run_aff)
    m = tsub.add_parser("ames", help="AMES: local-descriptor re-ranker (fp, binary, universal, distilled)",
                        description="Keys of the config file and --set overrides are AMESTrainConfig fields "
                                    "(see asymfuse.cloud.train.ames_config), e.g. --set binary=true "
                                    "--set universal=[10,400]. Launch with `torchrun --nproc_per_node N "
                                    "$(which asymfuse) train ames ...` for DDP.")
    m.add_argument("--config", help="YAML (or JSON) file of AMESTrainConfig keys")
    m.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one config key (repeatable)")
    m.add_argument("--out", default="runs/ames", help="run folder (checkpoints, metrics.jsonl, ames.pt)")
    m.add_argument("--resume", action="store_true", help="continue from <out>/last.pt")
    m.add_argument("--device", help="cpu | cuda | cuda:N (overrides the config)")
    m.set_defaults(func=run_ames)


def load_train_config(path: str | None, overrides: list[str] | None, *, device: str | None = None):  # noqa: ANN201
    """TrainConfig from an optional YAML/JSON file plus ``key=value`` overrides (unknown keys rejected).

    Raises:
        ConfigError: unreadable file, unknown keys or bad values.
    """
    from asymfuse.cloud.train.aff_config import config_from_dict

    return config_from_dict(_config_data(path, overrides, device=device))


def load_ames_train_config(path: str | None, overrides: list[str] | None, *,  # noqa: ANN201
                           device: str | None = None):
    """AMESTrainConfig from an optional YAML/JSON file plus ``key=value`` overrides (unknown keys rejected).

    Raises:
        ConfigError: unreadable file, unknown keys or bad values.
    """
    from asymfuse.cloud.train.ames_config import config_from_dict

    return config_from_dict(_config_data(path, overrides, device=device))


def _config_data(path: str | None, overrides: list[str] | None, *, device: str | None) -> dict:
    from pathlib import Path

    from asymfuse.cloud.cli.options import parse_options
    from asymfuse.edge.errors import ConfigError

    data: dict = {}
    if path:
        try:
            import yaml

            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path!r}: {exc}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path!r} is not valid YAML: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {path!r} must hold a mapping of config keys")
        data.update(loaded or {})
    data.update(parse_options(overrides))
    if device:
        data["device"] = device
    return data


def run_aff(args: argparse.Namespace) -> int:
    from asymfuse.cloud.train.aff_trainer import train_aff

    cfg = load_train_config(args.config, args.set, device=args.device)
    result = train_aff(cfg, out_dir=args.out, resume=args.resume)
    last = result.history[-1] if result.history else {}
    shown = {k: v for k, v in last.items() if k.startswith("val_") and k.endswith(("medium", "hard"))}
    print(f"scheme={cfg.scheme} best_epoch={result.best_epoch} space={result.embedding_space_id} "
          f"runtime={result.runtime_s:.1f}s")
    for key, value in sorted(shown.items()):
        print(f"  {key}: {value:.2f}")
    print(f"run folder: {result.out_dir}")
    return 0


def run_ames(args: argparse.Namespace) -> int:
    from asymfuse.cloud.train.ames_trainer import train_ames

    cfg = load_ames_train_config(args.config, args.set, device=args.device)
    result = train_ames(cfg, out_dir=args.out, resume=args.resume)
    variant = "binary" if cfg.binary else "fp"
    print(f"ames {variant} best_epoch={result.best_epoch} lam={result.lam:g} gamma={result.gamma:g} "
          f"runtime={result.runtime_s:.1f}s")
    for key, value in sorted(result.val.items()):
        if key.endswith(("medium", "hard")):
            print(f"  {key}: {value:.2f}")
    print(f"checkpoint: {result.checkpoint}")
    return 0
