"""Every knob of an SPS run, once. Model/loss knobs are the fields of symmetry.model.SPSConfig (commented
there); data knobs are symmetry.data.default_data_config(); run knobs are below."""
from __future__ import annotations

import dataclasses

import ml_collections

from symmetry.data import default_data_config
from symmetry.model import SPSConfig

# The paper's five trained groups (spec §4.3 / §7.4) as model overrides, and their row names in the results
# tables (spec §7.5). Experiment configs sweep over GROUPS; symmetry.summary names rows from both.
GROUPS: dict[str, dict] = {
    "sps_vae_k4": dict(variant="vae", K=4),
    "sps_ae_k4": dict(variant="ae", K=4),
    "vae_k0": dict(variant="vae", K=0),
    "ae_k0": dict(variant="ae", K=0),
    "beta_vae": dict(variant="vae", K=0, prior=False),
}
LABELS: dict[str, str] = {
    "sps_vae_k4": "SPS_VAE, K=4 (ours)", "sps_ae_k4": "SPS_AE, K=4 (ours)",
    "vae_k0": "SPS_VAE, K=0 (ablation)", "ae_k0": "SPS_AE, K=0 (ablation)", "beta_vae": "β-VAE (baseline)",
}


def defaults(**model_overrides) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0                          # id of the first seed; this run trains ids seed..seed+num_seeds-1 (id s is the same
                                        # model whether trained alone, --config.seed=s --config.num_seeds=1, or beside others)
    c.num_seeds = 1                     # independent models trained together (a vmapped leading axis)
    c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))  # seeds shard over data x fsdp
    c.model = ml_collections.ConfigDict(dataclasses.asdict(SPSConfig.from_mapping(model_overrides)))
    c.data = default_data_config()
    c.train = ml_collections.ConfigDict()
    c.train.steps = 15_001              # iterations (camera-ready audio: 15,001)
    c.train.log_every = 100             # metrics.jsonl / progress cadence
    c.train.ckpt_every = 1000           # checkpoint cadence (also on SIGTERM and at the end)
    c.train.ckpt_keep = 2               # checkpoints kept
    c.eval = ml_collections.ConfigDict()
    c.eval.split = "bend"               # fractional-pitch test set (spec §7.1)
    c.eval.synth_points = 30            # z sweep size for synthesis R²
    c.eval.griffin_lim_power = True     # official quirk: treat the magnitude as power in Griffin-Lim
    return c


def model_config(cfg: ml_collections.ConfigDict) -> SPSConfig:
    """The validated SPSConfig of a run (unknown keys are an error naming the key)."""
    return SPSConfig.from_mapping(cfg.model.to_dict())
