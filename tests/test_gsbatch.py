"""gsbatch without a cluster: the cost preview, the refusal, and sbatch missing."""

import os
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent


def gsbatch(*args, env=None, cwd=None):
    proc = subprocess.run([str(BIN / "gsbatch"), *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=cwd, timeout=60)
    assert "Traceback" not in proc.stderr
    return proc


def test_preview_shows_cost_and_what_is_left(root, tmp_path):
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/sh\n#SBATCH --gres=gpu:h100:2\n#SBATCH -t 2:00:00\nhostname\n")
    p = gsbatch("--gsbatch-preview", "-A", "chem-ai", script)
    assert p.returncode == 0, p.stderr
    assert p.stderr.strip() == "gsbatch: this job may use up to 4.00 GPU-h; account chem-ai has 500.00 GPU-h left"


def test_array_and_command_line_win(tmp_path):
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/sh\n#SBATCH --gres=gpu:h100:2\n#SBATCH -t 2:00:00\nhostname\n")
    p = gsbatch("--gsbatch-preview", "--gpus-per-node=4", "-N", "2", "-t", "30", "--array=0-9", script)
    assert "up to 40.00 GPU-h" in p.stderr  # 8 GPUs x 0.5 h x 10 tasks


def test_over_budget_is_refused_before_sbatch(root, tmp_path):
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/sh\nhostname\n")
    p = gsbatch("--gsbatch-preview", "-A", "physics", "--gpus=8", "-t", "10:00:00", script)
    assert p.returncode == 4
    assert p.stderr.strip() == "gsbatch: account physics: 50.0 GPU-h left, job needs up to 80.0 GPU-h"


def test_bad_option_value_is_one_line(tmp_path):
    p = gsbatch("--gsbatch-preview", "--gres=gpu:h100:lots", "--wrap", "true")
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "--gres" in p.stderr


def test_without_sbatch_on_path(tmp_path):
    p = gsbatch("--gres=gpu:1", "--wrap", "true", env={"PATH": str(tmp_path)})
    assert p.returncode == 2 and "sbatch is not on PATH" in p.stderr
