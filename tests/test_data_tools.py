"""dataset/: the generator's formats, the checker on good and broken data, the JSON-to-TSV
converters and the img2dataset download scripts."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

import minigpt4
from dataset import check_data
from dataset.make_synthetic import PHOTOS, make_synthetic
from dataset.make_synthetic import main as make_synthetic_main

DATASET_DIR = Path(minigpt4.REPO_ROOT) / "dataset"

try:
    import pyarrow.parquet
except ImportError:  # the generator then leaves out the .parquet files, as it says
    HAVE_PYARROW = False
else:
    HAVE_PYARROW = True


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    make_synthetic(out, size=32, laion_samples=50, cc_sbu_samples=30, align_samples=12, shard_size=20)
    return out


def members(shard: Path) -> list[str]:
    with tarfile.open(shard) as tar:
        return tar.getnames()


def test_generator_writes_img2dataset_shards(data):
    files = sorted(p.name for p in (data / "laion").iterdir())
    expected = [f"{i:05d}{suffix}" for i in range(3) for suffix in (".tar", "_stats.json")]
    if HAVE_PYARROW:
        expected += [f"{i:05d}.parquet" for i in range(3)]
        table = pyarrow.parquet.read_table(data / "laion" / "00001.parquet").to_pylist()
        assert [row["key"] for row in table] == [f"00001{i:04d}" for i in range(20)]
    assert files == sorted(expected)
    names = members(data / "laion" / "00001.tar")
    assert names[:3] == ["000010000.jpg", "000010000.txt", "000010000.json"]
    assert len(names) == 3 * 20
    with tarfile.open(data / "laion" / "00001.tar") as tar:
        meta = json.load(tar.extractfile("000010000.json"))
        caption = tar.extractfile("000010000.txt").read().decode()
    assert meta["caption"] == caption and meta["key"] == "000010000" and meta["status"] == "success"
    assert (meta["width"], meta["height"]) == (32, 32)
    assert caption in {c for photo in PHOTOS for c in photo.captions}
    stats = json.loads((data / "laion" / "00002_stats.json").read_text())
    assert (stats["count"], stats["successes"]) == (10, 10)
    assert len(members(data / "cc_sbu" / "00001.tar")) == 3 * 10


def test_generator_writes_a_cc_sbu_align_folder(data):
    annotations = json.loads((data / "cc_sbu_align" / "filter_cap.json").read_text())["annotations"]
    assert [a["image_id"] for a in annotations] == [str(i) for i in range(12)]
    assert annotations[0]["caption"] == PHOTOS[0].description
    assert sorted(p.name for p in (data / "cc_sbu_align" / "image").iterdir()) == sorted(f"{i}.jpg" for i in range(12))


def test_generator_is_deterministic_and_says_what_it_wrote(tmp_path, capsys):
    args = ["--size", "16", "--laion-samples", "4", "--cc-sbu-samples", "2", "--align-samples", "2"]
    make_synthetic_main(["--out", str(tmp_path / "a"), *args])
    printed = capsys.readouterr().out
    assert f"laion: 4 samples in 1 shards: {tmp_path / 'a' / 'laion'}/{{00000..00000}}.tar" in printed
    assert ("pyarrow is not installed" in printed) is not HAVE_PYARROW
    assert f"cc_sbu_align: 2 described images: {tmp_path / 'a' / 'cc_sbu_align'}" in printed
    make_synthetic_main(["--out", str(tmp_path / "b"), *args])
    for name in ("laion/00000.tar", "cc_sbu/00000.tar", "cc_sbu_align/filter_cap.json", "cc_sbu_align/image/1.jpg"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def check(capsys, *paths) -> tuple[int, str]:
    status = check_data.main([str(p) for p in paths])
    return status, capsys.readouterr().out


def test_checker_passes_good_data(data, capsys):
    status, out = check(capsys, data / "laion", data / "cc_sbu" / "{00000..00001}.tar", data / "cc_sbu_align")
    assert status == 0
    assert f"shards {data / 'laion'}: 50 samples" in out and "3 of 3 shards checked" in out
    assert "30 samples" in out and f"cc_sbu_align {data / 'cc_sbu_align'}: 12 samples" in out
    assert "caption words: min 3" in out and "longer than 50 (blip_caption keeps the first 50)" in out
    assert out.count("no problems found") == 3


def write_shard(path: Path, samples: dict[str, dict[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for key, files in samples.items():
            for extension, payload in files.items():
                info = tarfile.TarInfo(f"{key}.{extension}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))


def test_checker_reports_broken_shards(data, tmp_path, capsys):
    folder = tmp_path / "shards"
    shutil.copytree(data / "laion", folder)
    with tarfile.open(folder / "00000.tar") as tar:
        good_jpg = tar.extractfile("000000000.jpg").read()
    write_shard(
        folder / "00001.tar",
        {
            "a": {"png": good_jpg, "json": b'{"caption": "x"}'},
            "b": {"jpg": b"garbage", "json": b'{"caption": "a cat"}'},
            "c": {"jpg": good_jpg, "json": b'{"text": "no caption key"}'},
            "d": {"jpg": good_jpg, "json": b'{"caption": "  "}'},
        },
    )
    (folder / "00002.tar").write_bytes((folder / "00002.tar").read_bytes()[:612])  # cut inside the first image
    write_shard(folder / "00003.tar", {})
    status, out = check(capsys, folder)
    assert status == 1
    assert "PROBLEMS:" in out
    assert f"missing jpg or json: sample 'a' in {folder / '00001.tar'} has json, png" in out
    assert f"corrupt image: sample 'b' in {folder / '00001.tar'}" in out
    assert "json without a caption string: sample 'c'" in out
    assert "empty caption: sample 'd'" in out
    assert f"count differs from _stats.json: {folder / '00001.tar'} has 4 samples, its stats say 20" in out
    assert f"broken shard: {folder / '00002.tar'} (ReadError: unexpected end of data" in out
    assert f"empty shard: {folder / '00003.tar'} holds no samples" in out


def test_checker_reports_missing_shards_and_limits_the_shards(data, capsys):
    status, out = check(capsys, data / "laion" / "{00000..00009}.tar")
    assert status == 1 and f"missing shard: {data / 'laion' / '00003.tar'}" in out
    assert "3 of 10 shards checked (7 of those chosen are missing)" in out and "7 x missing shard" in out
    assert check_data.main([str(data / "laion"), "--max-shards", "1"]) == 0
    assert "1 of 3 shards checked" in capsys.readouterr().out


def test_checker_reports_a_broken_align_folder(data, tmp_path, capsys):
    folder = tmp_path / "cc_sbu_align"
    shutil.copytree(data / "cc_sbu_align", folder)
    (folder / "image" / "2.jpg").unlink()
    (folder / "image" / "3.jpg").write_bytes(b"garbage")
    content = json.loads((folder / "filter_cap.json").read_text())
    content["annotations"].append({"image_id": "99"})
    (folder / "filter_cap.json").write_text(json.dumps(content))
    status, out = check(capsys, folder)
    assert status == 1
    assert f"missing image: image_id '2': {folder / 'image' / '2.jpg'}" in out
    assert f"corrupt image: image_id '3': {folder / 'image' / '3.jpg'}" in out
    assert "annotation without image_id or caption: annotation 12" in out
    (folder / "filter_cap.json").write_text("{}")
    status, out = check(capsys, folder)
    assert status == 1 and "unreadable filter_cap.json" in out
    (folder / "filter_cap.json").write_text('[{"image_id": "1", "caption": "x"}]')
    status, out = check(capsys, folder)
    assert status == 1 and 'filter_cap.json holds a bare list of 1 entries; it must be {"annotations": [...]}' in out
    (folder / "filter_cap.json").write_text('{"annotations": [\n  {"image_id": 1,}\n]}')
    status, out = check(capsys, folder)
    assert status == 1 and "filter_cap.json: Expecting property name enclosed in double quotes at line 2, col" in out
    (folder / "filter_cap.json").write_text('{"annotations": 5}')
    status, out = check(capsys, folder)
    assert status == 1 and "unreadable filter_cap.json: 'annotations' must be a list, not int" in out


def test_checker_rejects_what_is_neither(tmp_path, capsys):
    status, out = check(capsys, tmp_path, tmp_path / "nothing")
    assert status == 2 and out.count("neither a cc_sbu_align folder") == 1
    assert f"{tmp_path / 'nothing'}: does not exist" in out


def run_script(args, cwd, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    ("script", "source", "target"),
    [
        ("convert_laion.py", "laion_synthetic_filtered_large.json", "laion_synthetic_filtered_large.tsv"),
        ("convert_cc_sbu.py", "ccs_synthetic_filtered_large.json", "ccs_synthetic_filtered_large.tsv"),
    ],
)
def test_converters_write_the_tsv_img2dataset_reads(tmp_path, script, source, target):
    records = [{"url": "http://x/1.jpg", "caption": "a cat\ton a mat"}, {"url": "http://x/2.jpg", "caption": 'a "dog"'}]
    (tmp_path / source).write_text(json.dumps(records))
    done = run_script([sys.executable, str(DATASET_DIR / script)], cwd=tmp_path)  # the reference's file names
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"wrote 2 rows to {target}"
    with (tmp_path / target).open(newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    assert rows == [["url", "caption"], ["http://x/1.jpg", "a cat\ton a mat"], ["http://x/2.jpg", 'a "dog"']]
    (tmp_path / "bad.json").write_text(json.dumps([{"url": "http://x/3.jpg"}]))
    done = run_script([sys.executable, str(DATASET_DIR / script), "bad.json", "out.tsv"], cwd=tmp_path)
    assert done.returncode != 0 and "bad.json: record 0 lacks 'url' or 'caption'" in done.stderr
    assert not (tmp_path / "out.tsv").exists()  # records are checked before the TSV is written
    (tmp_path / "cut.json").write_text(json.dumps(records)[:-5])
    for name, message in (("cut.json", "cut.json: not valid JSON"), ("none.json", "none.json: no such file")):
        done = run_script([sys.executable, str(DATASET_DIR / script), name, "out.tsv"], cwd=tmp_path)
        assert done.returncode != 0 and message in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("script", "tsv", "folder"),
    [
        ("download_laion.sh", "laion_synthetic_filtered_large.tsv", "laion_dataset"),
        ("download_cc_sbu.sh", "ccs_synthetic_filtered_large.tsv", "cc_sbu_dataset"),
    ],
)
def test_download_scripts_call_img2dataset_with_the_reference_parameters(tmp_path, script, tsv, folder):
    # A stand-in img2dataset that records its arguments, one per line.
    fake = tmp_path / "bin" / "img2dataset"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$RECORD"\n')
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{fake.parent}{os.pathsep}{os.environ['PATH']}", "RECORD": str(tmp_path / "args")}
    done = run_script(["bash", str(DATASET_DIR / script)], cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    args = (tmp_path / "args").read_text().split("\n")[:-1]
    assert dict(zip(args[::2], args[1::2], strict=True)) == {
        "--url_list": tsv,
        "--input_format": "tsv",
        "--url_col": "url",
        "--caption_col": "caption",
        "--output_format": "webdataset",
        "--output_folder": folder,
        "--processes_count": "16",
        "--thread_count": "128",
        "--image_size": "256",
        "--enable_wandb": "True",
    }
    done = run_script(
        ["bash", str(DATASET_DIR / script), "mine.tsv", "out"], cwd=tmp_path, env={**env, "ENABLE_WANDB": "False"}
    )
    args = (tmp_path / "args").read_text().split("\n")
    assert args[1] == "mine.tsv" and "out" in args and args[-2] == "False"
    done = run_script(["bash", str(DATASET_DIR / script)], cwd=tmp_path, env={**env, "PATH": "/usr/bin:/bin"})
    assert done.returncode == 1 and "img2dataset is not installed: pip install img2dataset" in done.stderr
