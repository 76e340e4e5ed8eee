"""experiments/symmetry/study_gpu.sh (issue 22 item 5), the one-command accelerator study: at :tiny on the CPU it
trains the main study's two runs (SPS_VAE K=4, VAE K=0) under one wall-time budget, evaluates both and writes the
summary table and a tar of every run's eval / config / metrics (slow tier: ~3 min here). `make test` checks the
script's refusals."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile

import pytest

from m4m_fixtures import REPO, one_device_env

SCRIPT = REPO / "experiments" / "symmetry" / "study_gpu.sh"


def _run(args, tmp_path, **env):
    e = {**one_device_env(), "PY": sys.executable, "WD": str(tmp_path / "wd"), **env}
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=REPO, env=e, capture_output=True, text=True, timeout=900)


@pytest.mark.parametrize("args,says", [(["60", "bogus"], "STUDY must be main, data_size_k, groups or all"),
                                       (["0", "main"], "SECONDS must be a positive integer"),
                                       (["ten"], "SECONDS must be a positive integer")])
def test_bad_arguments_are_one_line_and_exit_2(args, says, tmp_path):
    r = _run(args + [str(tmp_path / "out")] if len(args) > 1 else args, tmp_path, VARIANT="tiny")
    assert r.returncode == 2 and says in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "wd").exists()  # refused before anything ran


@pytest.mark.slow  # ~3 min here (two tiny trainings, two evaluations, the summary): `make test-slow` runs it
def test_main_study_trains_evaluates_and_summarises_k4_against_k0(tmp_path):
    out = tmp_path / "out"
    r = _run(["120", "main", str(out)], tmp_path, VARIANT="tiny")
    assert r.returncode == 0, r.stderr[-2000:]
    runs = {"sps_vae_k4": 4, "vae_k0": 0}
    with tarfile.open(out / "evals.tar") as tar:
        names = set(tar.getnames())
        for run, k in runs.items():
            base = f"./sps_video_tiny/groups/{run}"
            assert {f"{base}/eval.json", f"{base}/config.json", f"{base}/metrics.jsonl"} <= names
            cfg = json.load(tar.extractfile(f"{base}/config.json"))
            assert cfg["model"]["K"] == k and cfg["model"]["dec_offset"] == "fixed"  # the recipe by default
            ev = json.load(tar.extractfile(f"{base}/eval.json"))
            assert len(ev["linear_proj_mse"]["mean"]["per_seed"]) == cfg["num_seeds"]
    table = (out / "summary.md").read_text()
    assert "[groups/sps_vae_k4]" in table and "[groups/vae_k0]" in table
    assert "2 runs" in (out / "train.log").read_text() and os.path.isfile(out / "box_groups.png")
