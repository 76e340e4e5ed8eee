"""A `:tiny` SPS workdir built once per test process through the real entry points (train, evaluate on the
test split and on the unseen soundfont); shared (via conftest.py) by test_sps_summary, test_sps_train and test_notebook.
Also numpy_model: an SPSModel whose parameters numpy draws, for tests that need some parameters, not Flax's."""
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
    # one fake device per seed (as test_sps_video's ball_root): the default mesh (fsdp=-1) shards each seed's
    # parameters over all 8 fake devices of conftest.py, which share the machine's cores: each train step ran ~5x
    # slower and saving a checkpoint compiled ~100 small slicing programs (the fixture took ~1.8x as long)
    cfg.mesh.fsdp = 2
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


def numpy_model(cfg, seed: int = 0, module=None):
    """SPSModel(cfg) (or module(cfg, rngs=...), e.g. symmetry.model.Prior) with kernels ~ N(0, 1/fan_in) and biases
    ~ N(0, 0.1^2) (not zero), drawn by numpy.

    For tests of what the networks compute with some parameters, not of Flax's initialisers (which
    test_sps_model.test_torch_init_is_uniform_in_fan_in_bounds and test_sps_step's init_state tests cover): at -O0
    each initialiser is its own XLA random program, ~0.5 s to compile, ~10 s per model; numpy takes milliseconds."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from symmetry.model import SPSModel

    graphdef, state = nnx.split(nnx.eval_shape(lambda: (module or SPSModel)(cfg, rngs=nnx.Rngs(0))))
    rng = np.random.default_rng(seed)

    def draw(a):
        scale = 1 / np.sqrt(np.prod(a.shape[:-1])) if a.ndim > 1 else 0.1
        return jnp.asarray(rng.normal(size=a.shape) * scale, a.dtype)

    return nnx.merge(graphdef, jax.tree.map(draw, state))
