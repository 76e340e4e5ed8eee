"""Pretrain the foundation symbolic-music LM (spec §3) on the embedded corpus or a prepared folder.

  python -m m4mjax.train --config=experiments/m4m/lm_pretrain.py:small --workdir=workdirs/lm_small
  python -m m4mjax.evaluate --workdir=workdirs/lm_small
  python -m m4mjax.sample --workdir=workdirs/lm_small --prompt=in.mid --out=out.mid

Variants: tiny (tests, seconds), demo (`make demo`, ~8 min), small (this CPU, < 30 min), base (the
foundation for the function-alignment tasks: full corpus, 16-bar windows, ~3 h here),
paper (official size 1: 111.8M params, batch 48 x 384 frames, OneCycle 1e-4 over 2M steps).
Your own MIDI folder: `python -m m4mjax.prepare --midi_dir=DIR --out=data/mine` then
`--config.data.name=data/mine`.
"""
from m4mjax.config import defaults, model_defaults
from m4mjax.run.cli import UserError


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
        # CPU-sized: the 3,331-way head and the dense local stacks cost per token slot, so frames hold at
        # most 8 notes (L = 17) and windows are 4 bars; the global decoder keeps the paper's shape family.
        m.update(width=256, layers=4, heads=4, ffn=1024, local_layers=1, local_heads=4, local_ffn=512,
                 max_frame_tokens=17, dropout=0.0)
        c.data.frames, c.data.batch_size = 64, 8
        c.optim.lr = 1e-3
        c.optim.warmup_frac = 0.05
        c.train.update(steps=1000 if variant == "small" else 400, log_every=25, eval_every=500,
                       eval_batches=16, ckpt_every=250)
    elif variant == "base":
        # The foundation the function-alignment tasks start from (--config.init_from): the FULL embedded
        # corpus, 16-bar windows, up to 12 notes per frame (L = 25), 6 global layers; windows drawn in
        # proportion to song length (official FramedDataset) so the multi-track songs are not drowned by
        # the short folk tunes, which are padded rather than dropped. 750 steps of 8 x 256 frames (1.5M frames):
        # ~3 h on this 2-core CPU (143-150 frames/s = ~14 s/step measured idle, 2026-12-01).
        m.update(width=256, layers=6, heads=4, ffn=1024, local_layers=1, local_heads=4, local_ffn=512,
                 max_frame_tokens=25, dropout=0.0)
        c.data.update(name="m4m_default/full", frames=256, batch_size=8, drop_short=False, sampling="length")
        c.optim.lr = 1e-3
        c.optim.warmup_frac = 0.02
        c.train.update(steps=750, log_every=10, eval_every=250, eval_batches=16, ckpt_every=25)
    else:
        raise UserError(f"unknown variant {variant!r} (tiny | demo | small | base | paper)", f"lm_pretrain.py:{variant}")
    return c


ENTRY = "m4mjax.train"
SWEEP_VARIANT = "small"


def get_sweep(variant: str = "small"):
    """Learning rate x global-decoder depth at the CPU size (an example ablation grid)."""
    return [dict(name=f"lm_{variant}/lr{lr:g}_layers{n}", **{"optim.lr": lr, "model.layers": n})
            for lr in (3e-4, 1e-3) for n in (2, 4)]
