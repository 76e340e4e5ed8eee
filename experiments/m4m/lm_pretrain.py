"""Pretrain the foundation symbolic-music LM (spec §3) on the embedded corpus or a prepared folder.

  python -m m4mjax.train --config=experiments/m4m/lm_pretrain.py:small --workdir=workdirs/lm_small
  python -m m4mjax.evaluate --workdir=workdirs/lm_small
  python -m m4mjax.sample --workdir=workdirs/lm_small --prompt=in.mid --out=out.mid

Variants: tiny (tests, seconds), demo (`make demo`, minutes), small (this CPU, < 30 min),
paper (official size 1: 111.8M params, batch 48 x 384 frames, OneCycle 1e-4 over 2M steps).
Your own MIDI folder: `python -m m4mjax.prepare --midi_dir=DIR --out=data/mine` then
`--config.data.name=data/mine`.
"""
from m4mjax.config import defaults, model_defaults


def get_config(variant: str = "small"):
    c = defaults()
    if variant == "paper":
        c.model = model_defaults(1)
        c.data.batch_size = 48
        c.train.steps = 2_000_000
        return c
    m = c.model
    m.max_frames = 512
    if variant == "tiny":
        m.update(width=32, layers=2, heads=2, ffn=64, local_layers=1, local_heads=2, local_ffn=64)
        c.data.frames, c.data.batch_size = 16, 8
        c.train.update(steps=3, log_every=1, eval_every=2, eval_batches=1, ckpt_every=2)
    elif variant in ("small", "demo"):
        m.update(width=256, layers=4, heads=4, ffn=1024, local_layers=2, local_heads=4, local_ffn=512)
        c.data.frames, c.data.batch_size = 128, 16
        c.optim.lr = 1e-3
        c.optim.warmup_frac = 0.05
        c.train.update(steps=3000 if variant == "small" else 600, log_every=25, eval_every=500,
                       eval_batches=8, ckpt_every=250)
    else:
        raise ValueError(f"lm_pretrain: unknown variant {variant!r} (tiny | demo | small | paper)")
    return c
