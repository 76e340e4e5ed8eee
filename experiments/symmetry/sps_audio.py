"""SPS on audio: a 1-D pitch latent from accordion major scales (spec §2.1, §4.2, §5.4, §6).

  python -m symmetry.train --config=experiments/symmetry/sps_audio.py:cpu --workdir=workdirs/sps/vae_k4 --config.num_seeds=10
  python -m symmetry.evaluate --workdir=workdirs/sps/vae_k4
  python -m experiments.sweep experiments/symmetry/sps_audio.py:cpu        # the five groups x 10 seeds
  python -m symmetry.summary workdirs/sweeps                                # table + latent-vs-pitch PNG

Variants: tiny (tests), cpu (this 2-core CPU, see REDUCTIONS and DEVIATIONS), paper (camera-ready, exactly §6).
"""
from m4mjax.run.cli import UserError
from symmetry.config import GROUPS, defaults

ENTRY = "symmetry.train"
SWEEP_VARIANT = "cpu"

# What :cpu changes relative to :paper, and why (everything else — model family, losses, weights,
# group, K, batch — is the paper's).
REDUCTIONS = {
    "data.n_bins / model.freq_bins": "129 lowest STFT bins (0-2 kHz) instead of 513: the fundamentals of "
                                     "MIDI 58-95 (233-1976 Hz) lie below 2 kHz; the conv stack is exact at 129",
    "train.steps": "1,001 instead of 15,001 iterations (10 seeds x 5 groups must fit a CPU session)",
    "model.ss_iter_scale": "15: scheduled sampling follows the paper's p_tf curve over the shorter run",
}

# Where :cpu deviates from the paper's data (not a size reduction; a switch, see docs/RESULTS.md).
DEVIATIONS = {
    "data.train_fade": "'none': training notes are not faded. In the paper's data only the integer notes of the "
                       "accordion's range (58-83) get a 512-sample fade-out, the fractional test notes never do; in "
                       "1,001 iterations the encoder keys on the fade (experiments/symmetry/fade_probe.py: first-note R² "
                       "of the same fractional notes 0.980-0.996 unfaded vs 0.996-0.999 faded) and one seed in ten "
                       "folds its pitch axis at the octave; unfaded, all ten seeds reach >= 0.993. The test splits "
                       "stay exactly the paper's.",
}


def get_config(variant: str = "cpu"):
    c = defaults()
    c.num_seeds = 10
    if variant == "paper":
        c.train.steps = 15_001
        return c
    if variant == "cpu":
        c.data.n_bins = 129
        c.data.train_fade = "none"
        c.model.freq_bins = 129
        c.model.ss_iter_scale = 15.0
        c.train.steps = 1_001
        c.train.log_every = 50
        c.train.ckpt_every = 250
        return c
    if variant == "tiny":
        c.num_seeds = 2
        c.data.n_bins = 65
        c.model.freq_bins = 65
        c.model.batch_size = 4
        c.model.rnn_hidden = 16
        c.train.update(steps=3, log_every=1, ckpt_every=2)
        c.eval.synth_points = 6
        return c
    raise UserError(f"unknown variant {variant!r} (tiny | cpu | paper)", f"sps_audio.py:{variant}")


def get_sweep(variant: str = "cpu"):
    """The paper's five groups x 10 seeds (num_seeds=10 in one process per group)."""
    return [dict(name=f"sps_audio_{variant}/{g}", **{f"model.{k}": v for k, v in o.items()})
            for g, o in GROUPS.items()]
