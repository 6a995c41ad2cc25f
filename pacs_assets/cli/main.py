"""The `pacs` command line for radiology IT: sample data, configuration checks, and (in their own modules)
search, status, history and echo."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

from pacs_assets.errors import ConfigError


def _cmd_sample(args: argparse.Namespace) -> int:
    from pacs_assets.cli.sample import make_sample_site

    path = make_sample_site(Path(args.out), orthanc_url=args.orthanc_url, patients=args.patients,
                            seed=args.seed, firebird=not args.no_firebird,
                            identity_cases=not args.no_identity_cases)
    print(f"Sample NAS devices and configuration written; use: export PACS_CONFIG={path.resolve()}")
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from pacs_assets.config import load_config
    from pacs_assets.nas.registry import source_for
    from pacs_assets.orthanc.client import OrthancUnavailable
    from pacs_assets.orthanc.connect import connect

    config = load_config(args.config)
    problems = []
    for nas in config.nas:
        try:
            source_for(nas).check_available()
            print(f"NAS '{nas.id}' ({nas.kind}): {nas.root} is readable")
        except ConfigError as exc:
            problems.append(str(exc))
    o = config.orthanc
    try:
        info = connect(o, *o.credentials_from_environment(), timeout=10, retries=0).system()
        print(f"Orthanc {info.get('Version')} at {o.url} answers")
    except OrthancUnavailable as exc:
        problems.append(str(exc))
    for problem in problems:
        print(problem, file=sys.stderr)
    if args.json:
        print(json.dumps({"ok": not problems, "problems": problems}))
    return 1 if problems else 0


# The read-only commands on the index and Orthanc, each in its own module (its arguments and logic), in the order
# `pacs --help` lists them. A `pacs` process imports the module of the command it runs and no other.
COMMANDS = ("search", "status", "history", "identity", "echo")


def command_in(argv: list[str]) -> str | None:
    """The command module ``argv`` runs, or None when the whole parser is needed (help, no or another command)."""
    args = iter(argv)
    for arg in args:
        if arg == "--config":
            next(args, None)
        elif not arg.startswith("--config="):
            return arg if arg in COMMANDS else None
    return None


def _add_sample(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="make sample NAS devices and a pacs.yaml for them")
    p.add_argument("--out", required=True)
    p.add_argument("--patients", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--orthanc-url", default="http://127.0.0.1:8042")
    p.add_argument("--no-firebird", action="store_true", help="no Firebird/JPEG 2000 NAS")
    p.add_argument("--no-identity-cases", action="store_true",
                   help="no archive_nas (an old archive whose patient IDs collide with ct_nas's)")
    p.set_defaults(func=_cmd_sample)


def _add_check(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help="check the configuration, the NAS roots and Orthanc")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_check)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The command line; given ``argv``, with only the command it runs built in full (a whole parser otherwise)."""
    parser = argparse.ArgumentParser(prog="pacs", description=__doc__)
    parser.add_argument("--config", help="site configuration (default: $PACS_CONFIG, then ./pacs.yaml)")
    sub = parser.add_subparsers(dest="command", required=True)
    # Those modules import only argparse-level code here; what a command needs (pydantic, duckdb, pynetdicom) loads
    # when it runs, so every `pacs` process starts light (the lazy-import test guards it). Each other command is
    # its name only: the usage line an error prints lists every command, as the whole parser's does.
    wanted = command_in(argv) if argv is not None else None
    for name in ("sample", "check", *COMMANDS):
        if wanted not in (None, name):
            sub.add_parser(name)
        elif name in ("sample", "check"):
            (_add_sample if name == "sample" else _add_check)(sub)
        else:
            importlib.import_module(f"pacs_assets.cli.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"pacs: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:  # services that fail to start say why in one sentence
        print(f"pacs: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
