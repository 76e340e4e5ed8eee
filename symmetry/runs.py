"""A symmetry run directory's models: ONE loader for the commands that read a trained run (symmetry.evaluate,
symmetry.summary)."""
from __future__ import annotations

import json
import os

import jax

from m4mjax.run import checkpoint, cli
from symmetry import config as config_lib, step as step_lib


def load_seeds(workdir: str):
    """(config, SPSConfig, graphdef, stacked params [seed, ...]) of a finished or running run."""
    cfg = cli.load_config(workdir)
    mcfg = config_lib.model_config(cfg)
    abstract = jax.eval_shape(lambda: step_lib.init_state(mcfg, cfg.num_seeds, jax.random.key(0), None, cfg.seed))
    return cfg, mcfg, abstract.graphdef, checkpoint.restore_params(workdir, abstract.params)


def source_step(path: str) -> int:
    """The training step of the weights ``init_from`` names: an exported folder's source.json step, else the run
    directory's latest checkpoint."""
    src = os.path.join(path, "source.json")
    if os.path.isfile(src):
        with open(src) as f:
            return int(json.load(f)["step"])
    step = checkpoint.latest_step(path) if os.path.isdir(path) else None
    if step is None:
        raise cli.UserError("no checkpoint or exported weights here", f"--config.init_from={path}")
    return int(step)
