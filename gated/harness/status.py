"""The ``gated`` command's exit statuses and its install hint, imported by the command
(:mod:`gated.harness.cli`) and by the modules that report through it (no module imports the
command back)."""

EXIT_USAGE, EXIT_FAILURE, EXIT_IN_USE, EXIT_INTERRUPTED = 2, 1, 3, 130


def install_hint(extra: str) -> str:
    """How to install an extra, from an index or from a checkout (gated is not on an index yet)."""
    return f"install the {extra} extra: pip install 'gated[{extra}]' (from a checkout: pip install -e '.[{extra}]')"
