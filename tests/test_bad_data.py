"""Bad data through ``python train.py`` on the tiny configs: an empty tar and a shard of corrupt
images stop stage 1 within seconds with one line and a short log; a few samples without their
json are skipped and counted; stage 2 refuses a broken cc_sbu_align folder before training."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from tiny_assets import REPO_ROOT, STAGE1_TINY, STAGE2_TINY, quickstart, tiny_path_options, tiny_root

from minigpt4.common.config import ConfigError
from minigpt4.common.schema import RunConfig
from minigpt4.runners.runner_base import RunnerBase

# Stage 1's log before the first step (the config and the model's start-up) is about 6 kB.
BOUNDED_LOG = 30_000


def train(tmp_path: Path, config: Path, datasets: tuple[str, ...], *options: str) -> subprocess.CompletedProcess:
    options = (
        *tiny_path_options(tiny_root(), datasets),
        "run.device=cpu",
        f"run.output_dir={tmp_path / 'out'}",
        "run.max_epoch=1",
        *options,
    )
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "train.py"), "--cfg-path", str(config), "--options", *options],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )


def stage1(tmp_path: Path, laion: Path, *options: str) -> tuple[subprocess.CompletedProcess, float]:
    start = time.perf_counter()
    result = train(tmp_path, STAGE1_TINY, ("laion", "cc_sbu"), f"datasets.laion.build_info.storage={laion}", *options)
    return result, time.perf_counter() - start


def write_shard(path: Path, samples: list[tuple[str, dict[str, bytes]]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for key, files in samples:
            for extension, payload in files.items():
                info = tarfile.TarInfo(f"{key}.{extension}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    return path


def tiny_samples() -> list[tuple[str, dict[str, bytes]]]:
    """The samples of the tiny laion data's first shard, as (key, {extension: bytes})."""
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(tiny_root() / quickstart.DATA / "laion" / "00000.tar") as tar:
        for member in tar.getmembers():
            key, extension = member.name.split(".", 1)
            samples.setdefault(key, {})[extension] = tar.extractfile(member).read()
    return list(samples.items())


def line_with(text: str, stderr: str) -> str:
    (line,) = [line for line in stderr.splitlines() if text in line]
    return line


@pytest.mark.slow
def test_an_empty_tar_stops_stage1_within_seconds(tmp_path):
    empty = write_shard(tmp_path / "laion" / "00000.tar", [])
    result, seconds = stage1(tmp_path, empty.parent)
    assert result.returncode != 0
    line = line_with("shards read in a row gave no sample", result.stderr)
    assert f"laion: 100 shards read in a row gave no sample: {empty} (an empty tar (no samples))" in line
    assert "dataset/check_data.py" in line  # the whole message, on one line
    assert result.stderr.count("gave no sample: an empty tar") == 1  # named once
    assert "train: step=" not in result.stderr
    assert len(result.stderr) < BOUNDED_LOG and seconds < 60, (seconds, result.stderr[-2000:])


@pytest.mark.slow
def test_a_shard_of_corrupt_images_stops_stage1_within_seconds(tmp_path):
    corrupt = [(key, {**files, "jpg": b"\xff\xd8 not a jpeg"}) for key, files in tiny_samples()]
    shard = write_shard(tmp_path / "laion" / "00000.tar", corrupt)
    result, seconds = stage1(tmp_path, shard.parent)
    assert result.returncode != 0
    line = line_with("above run.max_skip_fraction", result.stderr)
    assert re.search(r"laion: (\d+) of \1 samples were skipped while the last 20 shards were read \(100%", line)
    assert f"most from {shard} (" in line and "x corrupt image: UnidentifiedImageError" in line
    # Five skips named, then nothing more for a minute.
    assert result.stderr.count("laion: skipped sample") == 5
    assert "train: step=" not in result.stderr
    assert len(result.stderr) < BOUNDED_LOG and seconds < 60, (seconds, result.stderr[-2000:])


@pytest.mark.slow
def test_a_few_samples_without_json_are_skipped_and_counted(tmp_path):
    samples = tiny_samples()
    # Mid-shard, after good samples: one without its json, one whose json has no caption.
    samples[5] = (samples[5][0], {k: v for k, v in samples[5][1].items() if k != "json"})
    samples[9] = (samples[9][0], {**samples[9][1], "json": json.dumps({"text": "no caption"}).encode()})
    shard = write_shard(tmp_path / "laion" / "00000.tar", samples)
    result, _ = stage1(tmp_path, shard.parent, "run.iters_per_epoch=4", "run.log_freq=2", "run.num_workers=1")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if "train: step=" in line]
    skipped = [int(re.search(r" skipped=(\d+) ", line).group(1)) for line in lines]
    assert len(skipped) == 2 and sum(skipped) > 0, lines
    assert f"skipped sample '{samples[5][0]}' of {shard}: no .json (it has: jpg, txt)" in result.stderr
    (job,) = (tmp_path / "out").iterdir()
    epoch = json.loads((job / "log.txt").read_text().splitlines()[-1])
    assert epoch["skipped_samples"] == sum(skipped)


def align_copy(tmp_path: Path) -> Path:
    folder = tmp_path / "cc_sbu_align"
    shutil.copytree(tiny_root() / quickstart.DATA / "cc_sbu_align", folder)
    return folder


def stage2(tmp_path: Path, folder: Path) -> subprocess.CompletedProcess:
    return train(tmp_path, STAGE2_TINY, ("cc_sbu_align",), f"datasets.cc_sbu_align.build_info.storage={folder}")


@pytest.mark.slow
def test_stage2_refuses_missing_images_before_training(tmp_path):
    folder = align_copy(tmp_path)
    (folder / "image" / "3.jpg").unlink()
    (folder / "image" / "5.jpg").write_bytes(b"")
    result = stage2(tmp_path, folder)
    assert result.returncode != 0
    line = line_with("are missing or empty", result.stderr)
    assert f"image_id '3': {folder / 'image' / '3.jpg'} does not exist" in line
    assert f"image_id '5': {folder / 'image' / '5.jpg'} is empty (0 bytes)" in line
    assert "Start training" not in result.stderr and "train: step=" not in result.stderr


@pytest.mark.slow
def test_stage2_names_the_line_of_bad_json_and_explains_a_bare_list(tmp_path):
    folder = align_copy(tmp_path)
    annotations = json.loads((folder / "filter_cap.json").read_text())["annotations"]
    (folder / "filter_cap.json").write_text(json.dumps(annotations, indent=1)[:-3])
    result = stage2(tmp_path, folder)
    assert result.returncode != 0
    line = line_with("is not valid JSON", result.stderr)
    assert re.search(rf"{re.escape(str(folder / 'filter_cap.json'))} is not valid JSON: .* at line \d+, column", line)
    (folder / "filter_cap.json").write_text(json.dumps(annotations))
    result = stage2(tmp_path, folder)
    assert result.returncode != 0
    assert "holds a bare list of" in line_with('{"annotations": [...]}', result.stderr)
    assert "Start training" not in result.stderr


def test_max_skip_fraction_is_checked_at_start_up():
    for value in (-0.1, 1.5):
        with pytest.raises(ConfigError, match=rf"run.max_skip_fraction must be between 0 and 1, got {value}"):
            RunnerBase.check_config(OmegaConf.structured(RunConfig(max_skip_fraction=value)))
    RunnerBase.check_config(OmegaConf.structured(RunConfig(max_skip_fraction=1.0)))
