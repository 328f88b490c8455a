"""The ``gated`` command. Subcommands are a table: each entry names a module that provides
``HELP`` (one line), ``add_arguments(parser)`` and ``main(args) -> int``; adding a subcommand is
one line here (modules are imported only when needed).

    gated train --task copy --delay 50 --core lstm --variant UR --hidden-size 64 --steps 120 --out runs/demo
    gated train --resume runs/demo --steps 240
    gated data fetch mnist            gated data list
    gated compare --task copy --delay 50 --variants - UR --seeds 0 1 --steps 600 --out runs/cmp
    gated plot gates runs/demo        gated plot curves runs/cmp
    gated demo highway --out runs/demos/highway      (also: gated demo channel-gating, gated demo glu-ffn)
    gated reproduce --quick           gated reproduce --full
    gated bench --quick               gated --version
"""

from __future__ import annotations

import argparse
import importlib
import sys

from gated.harness.status import EXIT_FAILURE, EXIT_IN_USE, EXIT_INTERRUPTED, EXIT_USAGE, install_hint  # noqa: F401

COMMANDS: dict[str, str] = {
    "train": "gated.harness.train_cli",
    "data": "gated.harness.data_cli",
    "compare": "gated.harness.compare",
    "plot": "gated.harness.plots",
    "bench": "gated.harness.bench",
    "demo": "gated.harness.demos.cli",
    "reproduce": "gated.harness.reproduce",
    "rl": "gated.harness.rl.cli",
}

DESCRIPTION = "gated: train, compare and plot gated RNNs on the paper's tasks, and reproduce its experiments"
HARNESS_EXTRA = ("numpy", "safetensors", "tqdm", "matplotlib")  # pyproject's harness extra (a test compares them)


def _available(only: str | None = None) -> dict[str, object]:
    """Import the subcommand modules (just ``only`` when given, so one command's imports cannot
    break or slow another's)."""
    modules = {}
    for name, path in COMMANDS.items():
        if only is not None and name != only:
            continue
        try:
            modules[name] = importlib.import_module(path)
        except ModuleNotFoundError as e:
            if e.name != path:  # a missing dependency inside an existing module is a real error
                raise
    return modules


def version() -> str:
    """The installed distribution's version (importlib.metadata), else ``gated.__version__`` (a
    checkout on ``sys.path`` without an install)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("gated")
    except PackageNotFoundError:
        import gated

        return getattr(gated, "__version__", "unknown")


class CommandParser(argparse.ArgumentParser):
    """The parser of a subcommand (and of theirs: argparse gives nested subparsers their parent's
    class). argparse hands a subcommand's unknown arguments back to the top-level parser, whose
    error shows ``usage: gated [-h] COMMAND ...``; this one reports them itself, with its own usage
    (``usage: gated train ...``) and the closest flag: ``--hiden-size``: did you mean ``--hidden-size``?"""

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(unrecognized(self, extras))
        return namespace, extras


def unrecognized(parser: argparse.ArgumentParser, extras: list[str]) -> str:
    """argparse's message for ``extras``, and the parser's flags closest to the unknown ones."""
    import difflib

    flags = {s[2:]: s for s in parser._option_string_actions if s.startswith("--")}
    hints = {}
    for arg in extras:
        name = arg.partition("=")[0]
        if name.startswith("-") and name not in parser._option_string_actions:
            close = difflib.get_close_matches(name.lstrip("-"), flags, n=1, cutoff=0.7)  # compared without the dashes
            if close:
                hints[name] = flags[close[0]]
    text = f"unrecognized arguments: {' '.join(extras)}"
    if len(hints) == 1:
        return text + f" (did you mean {next(iter(hints.values()))}?)"
    if hints:
        return text + " (did you mean " + ", ".join(f"{v} for {k}" for k, v in hints.items()) + "?)"
    return text


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gated", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"gated {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=CommandParser)
    for name, module in _available(only).items():
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_main=module.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; every expected failure is one line ``gated CMD: error: ...`` on stderr
    and an exit status (no traceback). Without the harness extra (a core-only install), say how
    to install it and exit with status 1."""
    try:
        return _main(argv)
    except ModuleNotFoundError as e:
        if (e.name or "").partition(".")[0] not in HARNESS_EXTRA:
            raise
        print(f"gated: the command needs {e.name}, which is not installed; {install_hint('harness')}", file=sys.stderr)
        return EXIT_FAILURE


def _main(argv: list[str] | None) -> int:
    from gated.harness.checkpoint import CheckpointError, RunInUse
    from gated.harness.compare import RunFailed
    from gated.harness.data.formats import DataError

    argv = sys.argv[1:] if argv is None else list(argv)
    # one subcommand's module when it is named, none for --version (fast), else all of them (help)
    only = argv[0] if argv and argv[0] in COMMANDS else "" if argv[:1] == ["--version"] else None
    parser = build_parser(only)
    if argv and only is None and not argv[0].startswith("-"):  # a misspelt command: argparse lists them all
        import difflib

        close = difflib.get_close_matches(argv[0], COMMANDS, n=1, cutoff=0.6)
        if close:
            parser.error(f"unknown command {argv[0]!r} (did you mean {close[0]!r}?); choose from {', '.join(COMMANDS)}")
    args = parser.parse_args(argv)
    try:
        return int(args._main(args) or 0)
    except KeyboardInterrupt:
        print(f"gated {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except RunInUse as e:
        return _error(args, e, EXIT_IN_USE)
    except ValueError as e:
        return _error(args, e, EXIT_USAGE)
    except (DataError, CheckpointError, RunFailed, OSError) as e:
        return _error(args, e, EXIT_FAILURE)


def _error(args, e: Exception, status: int) -> int:
    print(f"gated {args.command}: error: {e}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
