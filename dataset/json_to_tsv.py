"""BLIP's synthetic-caption JSON (a list of ``{"url", "caption"}``) to the TSV that img2dataset
reads. Shared by ``convert_laion.py`` and ``convert_cc_sbu.py``, which only set the file names."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

COLUMNS = ("url", "caption")


def json_to_tsv(source: Path, target: Path) -> int:
    """Write ``target`` with a ``url<TAB>caption`` header and one row per record; returns the count.
    Every record is checked before anything is written."""
    try:
        with source.open(encoding="utf-8") as f:
            records = json.load(f)
    except FileNotFoundError:
        raise SystemExit(f"{source}: no such file (download it first, see dataset/README_1_STAGE.md)") from None
    except ValueError as exn:
        raise SystemExit(f"{source}: not valid JSON ({exn})") from None
    if not isinstance(records, list):
        raise SystemExit(f"{source}: expected a JSON list of {{'url', 'caption'}} records")
    for index, record in enumerate(records):
        if not isinstance(record, dict) or any(column not in record for column in COLUMNS):
            raise SystemExit(f"{source}: record {index} lacks 'url' or 'caption': {record!r}")
    with target.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(COLUMNS)
        writer.writerows([record[column] for column in COLUMNS] for record in records)
    return len(records)


def main(default_source: str | None = None, default_target: str | None = None, argv: list[str] | None = None) -> None:
    """The command line; ``convert_laion.py`` and ``convert_cc_sbu.py`` give default file names,
    ``json_to_tsv.py`` run by itself needs both."""
    what = f"{default_source} to {default_target}" if default_source else "a BLIP JSON list to a TSV"
    parser = argparse.ArgumentParser(description=f"Convert {what} for img2dataset.")
    optional = {"nargs": "?"} if default_source else {}
    parser.add_argument(
        "source", type=Path, default=default_source and Path(default_source), help="the BLIP JSON list", **optional
    )
    parser.add_argument(
        "target", type=Path, default=default_target and Path(default_target), help="the TSV to write", **optional
    )
    args = parser.parse_args(argv)
    count = json_to_tsv(args.source, args.target)
    print(f"wrote {count} rows to {args.target}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # as a script: the package is one folder up
    from minigpt4.common.cli import run_main

    run_main(main, "json_to_tsv.py")
