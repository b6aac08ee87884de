"""What the command-line entry points share: a config file (or the MNIST demo) plus `--section.key=value`."""
from __future__ import annotations

import argparse

from .config import Config, load_config, make_config
from .demo import demo_config


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config; without it the embedded MNIST demo config")
    p.add_argument("--data-dir", default="", help="data directory (default: $CDKD_DATA_DIR, ./data, ../shared/datasets)")


def parse(p: argparse.ArgumentParser, argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """Known flags, and the remaining `--section.key=value` overrides (anything else is an error)."""
    args, overrides = p.parse_known_args(argv)
    bad = [o for o in overrides if not (o.startswith("--") and "=" in o)]
    if bad:
        p.error(f"unrecognised arguments {bad}: overrides look like --section.key=value")
    if args.data_dir:
        overrides.append(f"--data.root={args.data_dir!r}")
    return args, overrides


def run_config(args: argparse.Namespace, overrides: list[str], train_demo: bool = True) -> Config:
    """The config file with overrides, or the MNIST demo (its teachers trained or reused first, if `train_demo`)."""
    if args.config:
        return load_config(args.config, overrides)
    make_config({}, overrides)  # validate the overrides before training any teacher
    return make_config(demo_config(data_root=args.data_dir, train=train_demo), overrides)
