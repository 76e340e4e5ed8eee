"""Every knob of an m4m run, once, with a one-line comment. Experiment files start from defaults()."""
from __future__ import annotations

import ml_collections

def model_defaults(size: int = 1) -> ml_collections.ConfigDict:
    """The foundation LM's knobs (spec §3); each is commented where it is defined, in m4mjax.model."""
    from m4mjax.model import model_config

    return model_config(size)


def defaults() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0                          # parameter init / data order / dropout
    c.task = "lm"                       # one of m4mjax.tasks.TASKS
    c.init_from = ""                    # workdir whose latest params initialise the model (weights only)
    c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))  # -1 = all remaining devices
    c.model = model_defaults(1)

    c.data = ml_collections.ConfigDict()
    c.data.name = "m4m_default/demo"    # 'm4m_default/demo' | 'm4m_default/full' (embedded corpus) | a `m4mjax.prepare
                                        # --out` folder (e.g. data/mine) | 'prepared' (the folder in data.dir)
    c.data.dir = "data/tfds"            # TFDS data_dir, or the `m4mjax.prepare --out` folder for 'prepared'
    c.data.max_frame_tokens = c.model.get_ref("max_frame_tokens")  # tokens per frame row (L), follows the model
    c.data.row_format = c.model.get_ref("row_format")  # EOS always / only in short rows, follows the model
    c.data.target_frame_tokens = 0      # two-stream tasks: the target stream's L (0 = max_frame_tokens); shorter
                                        # rows cost less (label rows need 2 x notes + 1; longer rows drop notes)
    c.data.sampling = "song"            # training windows: 'song' (one per song per epoch) | 'length' (per song length)
    c.data.song_start_frac = 0.0        # training windows starting at a song's first frame (deviation, 0 = official:
                                        # uniform starts, so a window's frame 0 is almost never a song's start, which
                                        # is exactly where inference's first window starts)
    c.data.drop_short = True            # drop songs shorter than a window (as the paper); else pad them
    c.data.reference = ""               # two-stream tasks: reference stream selector ('drums', 'track:0', ...)
    c.data.target = ""                  # two-stream tasks: target stream selector
    c.data.frames = 384                 # window length in 16th-note frames (24 bars of 4/4)
    c.data.batch_size = 8               # global batch (windows)
    c.data.pitch_shift = (-5, 6)        # training transposition range (semitones; drums never shifted)
    c.data.num_threads = 2              # grain read threads
    c.data.duplicates = "longest"       # exact duplicate notes in the corpus read: 'longest' (one kept; the embedded
                                        # corpus) | 'keep' (all; official la_cp16_v2), as `m4mjax.prepare --duplicates`

    c.optim = ml_collections.ConfigDict()
    c.optim.lr = 1e-4                   # peak learning rate (spec: 1e-4; 5e-5 for size >= 2)
    c.optim.schedule = "onecycle"       # 'onecycle' (optax's) | 'torch_onecycle' (the official torch OneCycleLR
                                        # exactly: its phase ends, beta1 cycled over momentum_range) | 'constant'
                                        # | 'warmup_constant' (linear warm-up over warmup_frac, then flat: extendable)
    c.optim.momentum_range = (0.85, 0.95)  # torch_onecycle: beta1 from max to min in warm-up and back (b1 unused)
    c.optim.warmup_frac = 0.005         # warm-up as a fraction of train.steps
    c.optim.decay_steps = 0             # warmup_constant: the last this many of train.steps decay linearly to 0
                                        # (warmup-stable-decay; 0 = flat to the end; extending a run re-warms)
    c.optim.weight_decay = 0.01         # AdamW decoupled weight decay
    c.optim.b1 = 0.9                    # Adam beta1
    c.optim.b2 = 0.999                  # Adam beta2
    c.optim.grad_clip = 1.0             # global-norm clip (0 = off)

    c.train = ml_collections.ConfigDict()
    c.train.steps = 2_000_000           # total optimiser steps
    c.train.microbatches = 1            # split each global batch into k sequential micro-batches (gradient
                                        # accumulation in the step: the same update, ~1/k the activation memory)
    c.train.log_every = 50              # metrics.jsonl / progress line cadence
    c.train.eval_every = 1000           # held-out loss cadence (0 = never during training)
    c.train.eval_batches = 25           # batches per held-out evaluation (windows spread evenly over the split)
    c.train.ckpt_every = 1000           # checkpoint cadence (also on SIGTERM and at the end)
    c.train.ckpt_keep = 3               # checkpoints kept
    c.train.ckpt_keep_every = 0         # also keep every step that is a multiple of this (0 = off)
    c.train.peak_flops = 0.0            # per-device peak FLOP/s for MFU; 0 = measured once per machine (cached), < 0 = n/a

    c.sample = ml_collections.ConfigDict()
    c.sample.temperature = 1.0          # softmax temperature
    c.sample.top_p = 0.95               # nucleus sampling mass
    c.sample.n_frames = 128             # frames to generate after the prompt
    return c
