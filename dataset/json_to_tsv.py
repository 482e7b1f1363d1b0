"""BLIP's synthetic-caption JSON (a list of ``{"url", "caption"}``) to the TSV that img2dataset
reads. Shared by ``convert_laion.py`` and ``convert_cc_sbu.py``, which only set the file names."""

from __future__ import annotations

import argparse
import csv
import json
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


def main(default_source: str, default_target: str) -> None:
    parser = argparse.ArgumentParser(description=f"Convert {default_source} to {default_target} for img2dataset.")
    parser.add_argument("source", nargs="?", type=Path, default=Path(default_source), help="the BLIP JSON list")
    parser.add_argument("target", nargs="?", type=Path, default=Path(default_target), help="the TSV to write")
    args = parser.parse_args()
    count = json_to_tsv(args.source, args.target)
    print(f"wrote {count} rows to {args.target}")
