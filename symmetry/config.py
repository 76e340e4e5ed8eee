"""Every knob of an SPS run, once. Model/loss knobs are the fields of symmetry.model.SPSConfig (commented
there); data knobs are symmetry.data.default_data_config(); run knobs are below."""
from __future__ import annotations

import ast
import dataclasses

import ml_collections

from symmetry.data import ball_data_config, default_data_config
from symmetry.model import SPSConfig, ball_config

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


def defaults(kind: str = "audio", **model_overrides) -> ml_collections.ConfigDict:
    """Every knob of an SPS run on data of ``kind`` ('audio': camera-ready scales; 'ball': final ball baselines)."""
    if kind not in ("audio", "ball"):
        raise ValueError(f"symmetry config: kind {kind!r} must be 'audio' or 'ball'")
    c = ml_collections.ConfigDict()
    c.seed = 0                          # id of the first seed; this run trains ids seed..seed+num_seeds-1 (id s is the same
                                        # model whether trained alone, --config.seed=s --config.num_seeds=1, or beside others)
    c.num_seeds = 1                     # independent models trained together (a vmapped leading axis)
    c.init_from = ""                    # run directory or exported folder whose params start every seed (Adam state
                                        # fresh); the run continues at its step, so the schedules (z ramp, teacher
                                        # forcing) go on where it stopped (a campaign carried over from pretrained/)
    c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))  # seeds shard over data x fsdp
    model = ball_config(**model_overrides) if kind == "ball" else SPSConfig.from_mapping(model_overrides)
    c.model = ml_collections.ConfigDict(dataclasses.asdict(model))
    c.data = ball_data_config() if kind == "ball" else default_data_config()
    c.train = ml_collections.ConfigDict()
    c.train.steps = 15_001              # iterations (camera-ready audio: 15,001)
    c.train.log_every = 100             # metrics.jsonl / progress cadence
    c.train.ckpt_every = 1000           # checkpoint cadence (also on SIGTERM and at the end)
    c.train.ckpt_keep = 2               # checkpoints kept
    c.train.ckpt_keep_every = 0         # also keep every step that is a multiple of this (0 = off)
    c.eval = ml_collections.ConfigDict()
    if kind == "ball":
        c.train.steps = 80_001          # final ball baselines (Dans_exp_singlColor); the studies use 150,001
        c.eval.split = "eval"           # held-out trajectories (spec §3.3)
        c.eval.loss_sequences = 128     # recon / prediction losses on the first n eval trajectories
        c.eval.latent_sequences = 64    # trajectories whose latents eval_latents.npz keeps (plots)
        return c
    c.eval.split = "bend"               # fractional-pitch test set (spec §7.1)
    c.eval.synth_points = 30            # z sweep size for synthesis R²
    c.eval.griffin_lim_power = True     # official quirk: treat the magnitude as power in Griffin-Lim
    return c


def model_config(cfg: ml_collections.ConfigDict) -> SPSConfig:
    """The validated SPSConfig of a run (unknown keys are an error naming the key)."""
    return SPSConfig.from_mapping(cfg.model.to_dict())


def parse_sets(items: list[str]) -> dict:
    """['key=value', ...] (a probe's --set flags) -> {key: value}, values read as Python literals where they parse
    (1e-3, (0, 2), True), else kept as strings ('batch_var')."""
    out = {}
    for kv in items:
        k, _, v = kv.partition("=")
        try:
            out[k] = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            out[k] = v
    return out
