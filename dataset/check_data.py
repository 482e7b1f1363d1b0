"""Check a dataset before training on it: webdataset shards (``laion``, ``cc_sbu``, your own) or a
``cc_sbu_align`` folder.

    python dataset/check_data.py /data/laion_dataset                    # a folder of shards
    python dataset/check_data.py "/data/cc_sbu_dataset/{00000..01255}.tar" --max-shards 20
    python dataset/check_data.py /data/cc_sbu_align                     # filter_cap.json + image/

For shards it opens every tar (or the first ``--max-shards``), counts samples and reports samples
without ``.jpg`` or ``.json``, jsons without a ``caption`` string, images that do not decode,
shards that are missing, empty or broken, and sample counts that disagree with img2dataset's
``NNNNN_stats.json``. For a ``cc_sbu_align`` folder it checks ``filter_cap.json`` and that every
``image/<image_id>.jpg`` exists and decodes. Both print caption-length statistics (words; stage 1
keeps the first 50 of a cleaned caption). The exit status is 0 when nothing is wrong, 1 when a
problem was found, 2 when the path cannot be read as either kind.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import braceexpand
from PIL import Image

EXAMPLES_SHOWN = 10
STAGE1_MAX_WORDS = 50


@dataclass
class Report:
    title: str
    samples: int = 0
    problems: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    caption_words: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    word_limit: int | None = None  # where captions get cut, to count those that are

    def problem(self, kind: str, where: str) -> None:
        self.problems[kind] += 1
        if len(self.examples) < EXAMPLES_SHOWN:
            self.examples.append(f"{kind}: {where}")

    def caption(self, text: str, where: str) -> None:
        self.caption_words.append(len(text.split()))
        if not text.strip():
            self.problem("empty caption", where)

    def lines(self) -> list[str]:
        out = [f"{self.title}: {self.samples} samples", *(f"  {note}" for note in self.notes)]
        words = self.caption_words
        if words:
            stats = (
                f"  caption words: min {min(words)}, median {statistics.median(words):g}, "
                f"mean {statistics.fmean(words):.1f}, max {max(words)}"
            )
            if self.word_limit is not None:
                cut = sum(w > self.word_limit for w in words)
                stats += f"; {cut} longer than {self.word_limit} (blip_caption keeps the first {self.word_limit})"
            out.append(stats)
        if self.problems:
            out.append("  PROBLEMS: " + ", ".join(f"{count} x {kind}" for kind, count in sorted(self.problems.items())))
            out += [f"    {example}" for example in self.examples]
        else:
            out.append("  no problems found")
        return out


def _is_local(url: str) -> bool:
    return "://" not in url and not url.startswith("pipe:")


def _decodes(payload: bytes) -> bool:
    try:
        with Image.open(io.BytesIO(payload)) as image:
            image.convert("RGB")
    except (OSError, SyntaxError, ValueError):
        return False
    return True


def _expected_count(url: str) -> int | None:
    """The sample count img2dataset recorded beside a local shard, if it did."""
    stats = Path(url).with_name(Path(url).stem + "_stats.json")
    if not stats.is_file():
        return None
    return json.loads(stats.read_text()).get("successes")


def check_shard(url: str, report: Report) -> None:
    import webdataset as wds  # imports torch: here, so that --help answers at once

    count, broken_before = 0, report.problems["broken shard"]

    def broken(exn: Exception) -> bool:
        report.problem("broken shard", f"{url} ({type(exn).__name__}: {exn})")
        return False  # stop reading this shard

    for sample in wds.DataPipeline(wds.SimpleShardList([url]), wds.tarfile_to_samples(handler=broken)):
        count += 1
        where = f"sample '{sample['__key__']}' in {url}"
        keys = sorted(k for k in sample if not k.startswith("__"))
        if "jpg" not in sample or "json" not in sample:
            report.problem("missing jpg or json", f"{where} has {', '.join(keys)}")
            continue
        if not _decodes(sample["jpg"]):
            report.problem("corrupt image", where)
        try:
            meta = json.loads(sample["json"])
        except ValueError:
            report.problem("unreadable json", where)
            continue
        if not isinstance(meta, dict) or not isinstance(meta.get("caption"), str):
            report.problem("json without a caption string", where)
            continue
        report.caption(meta["caption"], where)
    report.samples += count
    if not count and not report.problems["broken shard"] - broken_before:
        report.problem("empty shard", f"{url} holds no samples (training stops on shards like this)")
    expected = _expected_count(url) if _is_local(url) else None
    if expected is not None and expected != count:
        report.problem("count differs from _stats.json", f"{url} has {count} samples, its stats say {expected}")


def shard_urls(path: str) -> list[str]:
    if Path(path).is_dir():
        return sorted(str(p) for p in Path(path).glob("*.tar"))
    return list(braceexpand.braceexpand(path))


def check_shards(path: str, max_shards: int | None) -> Report:
    urls = shard_urls(path)
    report = Report(f"shards {path}", word_limit=STAGE1_MAX_WORDS)
    chosen = urls[:max_shards] if max_shards else urls
    missing = [url for url in chosen if _is_local(url) and not Path(url).is_file()]
    for url in missing:
        report.problem("missing shard", url)
    for url in chosen:
        if url not in missing:
            check_shard(url, report)
    note = f"{len(chosen) - len(missing)} of {len(urls)} shards checked"
    report.notes.append(note + (f" ({len(missing)} of those chosen are missing)" if missing else ""))
    if not report.samples:
        report.problem("no samples", path)
    return report


def check_align(folder: Path) -> Report:
    report = Report(f"cc_sbu_align {folder}")
    path = folder / "filter_cap.json"
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exn:
        report.problem("unreadable filter_cap.json", f"{path}: {exn.msg} at line {exn.lineno}, column {exn.colno}")
        return report
    except UnicodeDecodeError as exn:
        report.problem("unreadable filter_cap.json", f"{path} is not UTF-8 text (byte {exn.start})")
        return report
    if isinstance(content, list):
        report.problem(
            "unreadable filter_cap.json",
            f'{path} holds a bare list of {len(content)} entries; it must be {{"annotations": [...]}}',
        )
        return report
    if not isinstance(content, dict) or "annotations" not in content:
        found = f"keys {sorted(content)}" if isinstance(content, dict) else f"a {type(content).__name__}"
        report.problem("unreadable filter_cap.json", f"{path} has no 'annotations' (it holds {found})")
        return report
    annotations = content["annotations"]
    if not isinstance(annotations, list):
        report.problem("unreadable filter_cap.json", f"'annotations' must be a list, not {type(annotations).__name__}")
        return report
    ids = Counter()
    for index, ann in enumerate(annotations):
        report.samples += 1
        if not isinstance(ann, dict) or "image_id" not in ann or not isinstance(ann.get("caption"), str):
            report.problem("annotation without image_id or caption", f"annotation {index}: {ann!r}")
            continue
        ids[str(ann["image_id"])] += 1
        report.caption(ann["caption"], f"annotation {index} (image_id '{ann['image_id']}')")
        path = folder / "image" / f"{ann['image_id']}.jpg"
        if not path.is_file():
            report.problem("missing image", f"image_id '{ann['image_id']}': {path}")
        elif not _decodes(path.read_bytes()):
            report.problem("corrupt image", f"image_id '{ann['image_id']}': {path}")
    repeated = sum(1 for count in ids.values() if count > 1)
    if repeated:
        report.notes.append(f"{repeated} image ids have more than one caption")
    unused = {p.stem for p in (folder / "image").glob("*.jpg")} - set(ids)
    if unused:
        report.notes.append(f"{len(unused)} images in image/ have no annotation (not used)")
    if not report.samples:
        report.problem("no samples", str(folder / "filter_cap.json"))
    return report


def kind_of(path: str) -> str | None:
    """``"align"``, ``"shards"`` or None for something that is neither."""
    folder = Path(path)
    if (folder / "filter_cap.json").is_file():
        return "align"
    if folder.is_dir():
        return "shards" if any(folder.glob("*.tar")) else None
    if folder.is_file() or "{" in path or not _is_local(path):
        return "shards"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "paths", nargs="+", help="a folder of shards, a brace pattern, a .tar, or a cc_sbu_align folder"
    )
    parser.add_argument("--max-shards", type=int, default=None, help="check only the first N shards of each path")
    args = parser.parse_args(argv)
    status = 0
    for path in args.paths:
        kind = kind_of(path)
        if kind is None and _is_local(path) and "{" not in path and not Path(path).exists():
            print(f"{path}: does not exist")
            status = max(status, 2)
            continue
        if kind is None:
            print(f"{path}: neither a cc_sbu_align folder (filter_cap.json) nor webdataset shards (.tar)")
            status = max(status, 2)
            continue
        report = check_align(Path(path)) if kind == "align" else check_shards(path, args.max_shards)
        print("\n".join(report.lines()))
        if report.problems:
            status = max(status, 1)
    return status


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # as a script: the package is one folder up
    from minigpt4.common.cli import run_main

    run_main(main, "dataset/check_data.py")
