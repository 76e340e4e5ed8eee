"""A `:tiny` SPS workdir built once per test process through the real entry points (train, evaluate on the
test split and on the unseen soundfont); shared (via conftest.py) by test_sps_summary, test_sps_train and test_notebook."""
from __future__ import annotations

import os
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
_BUILT: dict[str, pathlib.Path] = {}


def build_tiny_root(tmp_root: pathlib.Path) -> pathlib.Path:
    """ROOT/sps_vae_k4: 2 seeds x 3 steps of :tiny, evaluated (eval.json, eval_<sf>.json, latents)."""
    from experiments.sweep import load_experiment
    from symmetry import audio, evaluate, train

    cfg = load_experiment(str(REPO / "experiments/symmetry/sps_audio.py")).get_config("tiny")
    cfg.data.dir = str(REPO / "data/sps")  # the shared render cache, whatever the cwd
    if not (os.path.isfile(cfg.data.soundfont) and os.path.isfile(audio.TIMGM6MB)):
        pytest.skip("soundfonts not installed (apt: fluid-soundfont-gm timgm6mb-soundfont)")
    wd = tmp_root / "sps_vae_k4"
    train.train(cfg, str(wd))
    evaluate.evaluate(str(wd))
    evaluate.evaluate(str(wd), soundfont=audio.TIMGM6MB)
    return tmp_root


@pytest.fixture(scope="session")
def sps_tiny_root(tmp_path_factory) -> pathlib.Path:
    """Built once per test process: conftest.py defines it for every module that uses it."""
    if "root" not in _BUILT:
        _BUILT["root"] = build_tiny_root(tmp_path_factory.mktemp("sps_sweep"))
    return _BUILT["root"]
