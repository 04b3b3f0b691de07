"""``scripts/gpu_check.sh``: without a GPU it writes the skip JSON and exits 0 (wherever this runs:
the GPU is hidden); with one (``-m gpu``) the driver's steps pass on a tiny model on CUDA."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"


def _run(tmp_path: Path, env: dict) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "result" / "gpu_check.json"
    done = subprocess.run([shutil.which("bash"), str(SCRIPT), "--out", str(out), "--wheels", str(tmp_path / "no-wheels")],
                          capture_output=True, text=True, timeout=120, env={**os.environ, **env}, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    return done, json.loads(out.read_text())


def test_without_nvidia_smi_or_a_device_it_skips_at_once(tmp_path):
    if Path("/dev/nvidia0").exists():
        pytest.skip("this machine has an NVIDIA device node")
    bin_dir = tmp_path / "bin"  # PATH without nvidia-smi, with what the script itself runs
    bin_dir.mkdir()
    for tool in ("python3", "mktemp", "dirname", "mkdir", "rm", "date", "head", "tr"):
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    done, result = _run(tmp_path, {"PATH": str(bin_dir), "PYTHON": sys.executable})
    assert result["gpu"] is False and "nvidia-smi not found" in result["skipped"]
    assert result["steps"] == {} and result["pytest"] is None
    assert "skipped" in done.stdout and not (tmp_path / "gpu_check.json").exists()  # --out, not the default


def test_with_a_driver_but_no_cuda_device_torch_decides_and_it_skips(tmp_path):
    fake = tmp_path / "bin" / "nvidia-smi"  # a driver that reports a GPU that torch cannot use
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'NVIDIA H200, 580.159.04, 143771 MiB'\n")
    fake.chmod(0o755)
    env = {"PATH": f"{fake.parent}:{os.environ['PATH']}", "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""}
    _, result = _run(tmp_path, env)
    assert result["gpu"] is False and "torch.cuda.is_available() is False" in result["skipped"]
    assert result["torch"] and result["nvidia_smi"] == "NVIDIA H200, 580.159.04, 143771 MiB"


def _cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


@pytest.mark.parametrize("device", [
    pytest.param("cpu", marks=pytest.mark.slow),  # about a minute on 2 cores
    pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not _cuda(), reason="needs a CUDA GPU")]),
])
@pytest.mark.timeout(600)
def test_every_step_of_the_driver_passes_on_a_tiny_model(tmp_path, device):
    out = tmp_path / "tiny.json"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--tiny", "--device", device,
                           "--dtype", "float32", "--out", str(out), "--budget-s", "500", "--threads", "1"],
                          capture_output=True, text=True, timeout=560)
    result = json.loads(out.read_text())
    failed = {k: v.get("error") or v.get("note") or v.get("skipped") for k, v in result["steps"].items() if not v["ok"]}
    assert not failed and done.returncode == 0, (failed, done.stdout[-3000:], done.stderr[-3000:])
    if device == "cpu":  # float32 on CPU: exactly the cache-free reference's greedy tokens
        assert result["steps"]["reference"]["greedy_agreement"] == 1.0
    for step in ("sft_step", "dapo_step", "ppo_step"):
        assert result["steps"][step]["tensors_changed"] > 0
    assert result["steps"]["rollout"]["tokens_per_s"] > 0
