"""symmetry.summary on a real :tiny workdir: Tables A/B, the latent-vs-pitch PNGs, missing-piece reports."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from symmetry import summary


def test_summary_cli(sps_tiny_root, tmp_path, capsys):
    out = tmp_path / "out"
    summary.main([str(sps_tiny_root), f"--out={out}"])
    printed = capsys.readouterr().out
    md = (out / "summary.md").read_text()
    assert md.strip() == printed.strip()
    assert "| SPS_VAE, K=4 (ours) |" in md and "Embedding R² (TimGM6mb)" in md and "L_prior-z (MSE)" in md
    ev = json.loads((sps_tiny_root / "sps_vae_k4/eval.json").read_text())
    assert f"{ev['embedding_r2']['mean']:.3f} ± {ev['embedding_r2']['std']:.3f}" in md
    for name in ("latent_vs_pitch.png", "latent_vs_pitch_TimGM6mb.png"):
        png = (out / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    rows, problems = summary.collect(str(sps_tiny_root))
    assert [r.name for r in rows] == ["sps_vae_k4"] and not problems
    cols = summary.latent_columns(rows)
    assert cols[0][0] == "SPS_VAE, K=4 (ours)" and [s["seed"] for s in cols[0][1]] == [0, 1]


def test_missing_and_grouping(sps_tiny_root, tmp_path):
    root = tmp_path / "sweep"
    shutil.copytree(sps_tiny_root / "sps_vae_k4", root / "done", ignore=shutil.ignore_patterns("checkpoints", "tb"))
    cfg = json.loads((root / "done/config.json").read_text())
    cfg["model"].update(variant="vae", K=0, prior=False)          # -> beta_vae, from the config
    (root / "todo").mkdir()
    (root / "todo/config.json").write_text(json.dumps(cfg))
    (root / "m4m").mkdir()
    (root / "m4m/config.json").write_text(json.dumps({"model": {"vocab": 10}}))
    rows, problems = summary.collect(str(root))
    assert [r.name for r in rows] == ["sps_vae_k4"]                # directory name differs; config says K=4 VAE
    assert any("todo (beta_vae): not evaluated" in p for p in problems)
    assert any("not an SPS run" in p for p in problems)
    md = summary.summarize(str(root), str(tmp_path / "out"))
    assert "Missing:" in md and "symmetry.evaluate --workdir=" in md
    cfg["model"].update(prior=True)
    assert summary.group_of("x/run1", cfg) == "vae_k0"
    with pytest.raises(ValueError, match="not a directory"):
        summary.summarize(str(tmp_path / "nope"))


def test_fade_probe(sps_tiny_root):
    from experiments.symmetry import fade_probe

    out = fade_probe.probe(str(sps_tiny_root / "sps_vae_k4"))
    assert list(out) == ["integer faded", "integer unfaded", "fractional faded", "fractional unfaded"]
    for r2 in out.values():
        assert r2.shape == (2,) and np.all((r2 >= 0) & (r2 <= 1))
