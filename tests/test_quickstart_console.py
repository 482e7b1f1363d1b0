"""tools/quickstart.py's console: a stage's records echoed short (no timestamp, no INFO level, the
step lines cut to a few fields), its whole output in the stage's log file."""

from __future__ import annotations

import sys

import pytest
from tiny_assets import quickstart

CHILD = r"""
print("library output before any record")
print("2026-12-02 03:37:09,338 [INFO] Outputs go to /tmp/run/20261202033709 (log.txt there holds the full config)")
print("2026-12-02 03:37:09,400 [WARNING] a warning\nover two lines")
print()
print("2026-12-02 03:37:13,362 [INFO] train: step=10/120 epoch=0 iter=10/60 loss=1.6891 grad_norm=2.9396 "
      "lr=9.010e-03 step_time=0.2806 data_time=0.0629 samples/s=114.02 TokensPerSec=1788.4 mfu=n/a")
"""


def test_a_stage_is_echoed_short_and_logged_whole(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(quickstart, "LOG_DIR", tmp_path)
    monkeypatch.setattr(quickstart.logger, "disabled", True)  # its own line goes wherever logging is set up
    output_dir, steps = quickstart.run_stage("stage1", [sys.executable, "-c", CHILD])
    assert str(output_dir) == "/tmp/run/20261202033709"
    assert steps == [steps[0]] and "grad_norm=2.9396" in steps[0] and "data_time" in steps[0]
    assert capsys.readouterr().err.splitlines() == [
        "    Outputs go to /tmp/run/20261202033709 (log.txt there holds the full config)",
        "    [WARNING] a warning",
        "        over two lines",
        "    train: step=10/120 epoch=0 loss=1.6891 lr=9.010e-03 step_time=0.2806 samples/s=114.02 TokensPerSec=1788.4",
    ]
    log = (tmp_path / "stage1.log").read_text()
    assert "library output" in log and "2026-12-02 03:37:13,362 [INFO] train: step=10/120 epoch=0 iter=10/60" in log


def test_a_failed_stage_names_its_log(tmp_path, monkeypatch):
    monkeypatch.setattr(quickstart, "LOG_DIR", tmp_path)
    with pytest.raises(SystemExit, match=r"stage2 failed \(exit code 3\); its full output is in .*stage2\.log"):
        quickstart.run_stage("stage2", [sys.executable, "-c", "import sys; sys.exit(3)"])
