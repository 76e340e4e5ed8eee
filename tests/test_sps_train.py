"""symmetry.train: seed ids name models, however the seeds of a cell are split across runs."""
from __future__ import annotations

import json

import numpy as np

from sps_fixtures import REPO


def test_seed_alone_equals_seed_in_stack(sps_tiny_root, tmp_path):
    """--config.seed=1 --config.num_seeds=1 starts as seed 1 of the fixture's 2-seed run (same init, batch, noise)."""
    from experiments.sweep import load_experiment
    from symmetry import train

    cfg = load_experiment(str(REPO / "experiments/symmetry/sps_audio.py")).get_config("tiny")
    cfg.data.dir = str(REPO / "data/sps")
    cfg.update(seed=1, num_seeds=1)
    cfg.train.steps = 1
    cfg.mesh.fsdp = 1  # one device (the fixture's run has one seed per device): the default mesh would shard the lone
    #                    seed's parameters over all 8 fake devices, which share the machine's cores (~1.5x slower)
    train.train(cfg, str(tmp_path / "seed1"))
    first = lambda wd: json.loads((wd / "metrics.jsonl").read_text().splitlines()[0])  # noqa: E731
    alone, stack = first(tmp_path / "seed1"), first(sps_tiny_root / "sps_vae_k4")
    assert alone["step"] == stack["step"] == 1
    np.testing.assert_allclose(alone["train/loss"][0], stack["train/loss"][1], rtol=1e-5)
    assert not np.isclose(stack["train/loss"][0], stack["train/loss"][1], rtol=1e-5)


def test_cpu_variant_documents_every_change_from_paper():
    """Each setting where :cpu differs from :paper is named in REDUCTIONS or DEVIATIONS (cadence knobs aside)."""
    from experiments.sweep import load_experiment

    exp = load_experiment(str(REPO / "experiments/symmetry/sps_audio.py"))
    flat = lambda c: {f"{g}.{k}": v for g in ("data", "model", "train") for k, v in c[g].items()}  # noqa: E731
    paper, cpu = flat(exp.get_config("paper")), flat(exp.get_config("cpu"))
    changed = {k for k in paper if paper[k] != cpu[k]} - {"train.log_every", "train.ckpt_every"}
    documented = {k.strip() for key in (*exp.REDUCTIONS, *exp.DEVIATIONS) for k in key.split("/")}
    assert changed and changed <= documented, changed - documented


def test_init_from_continues_a_run_from_its_weights_at_its_step(sps_tiny_root, tmp_path):
    """--config.init_from=RUN: every seed starts from RUN's weights at RUN's step (Adam state fresh). The first
    logged loss is computed before the update, from the weights and the step's batch and noise alone, so it must
    equal RUN's own resumed step (wrong weights, or a step counter restarted at 0, give another loss)."""
    import shutil

    from m4mjax.run.checkpoint import latest_step
    from m4mjax.run.cli import load_config
    from m4mjax.run.errors import UserError
    from symmetry import train

    src = sps_tiny_root / "sps_vae_k4"
    last = latest_step(str(src))
    resumed = tmp_path / "resumed"
    shutil.copytree(src, resumed)
    cfg = load_config(str(resumed))
    cfg.train.steps = last + 1
    train.train(cfg, str(resumed))

    cfg = load_config(str(src))
    cfg.train.steps, cfg.init_from = last + 1, str(src)
    train.train(cfg, str(tmp_path / "warm"))
    rows = lambda wd: [json.loads(x) for x in (wd / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    warm, want = rows(tmp_path / "warm"), rows(resumed)[-1]
    assert [r["step"] for r in warm] == [last + 1] == [want["step"]]
    np.testing.assert_allclose(warm[0]["train/loss"], want["train/loss"], rtol=1e-5)
    assert json.loads((tmp_path / "warm/config.json").read_text())["init_from"] == str(src)
    cfg.init_from = str(tmp_path / "nowhere")
    try:
        train.train(cfg, str(tmp_path / "bad"))
        raise AssertionError("a missing init_from must be refused")
    except UserError as e:
        assert "init_from" in str(e) and not (tmp_path / "bad").exists()
