"""MIDI chord & metrical analysis by function alignment (spec §4-§5): reference = the music (tracks < 250),
target = the chord track (250) + beat track (251) written as music; the foundation LM is aligned to it with
FA_self or FA_cross.

  python -m m4mjax.datasets.chords --out=data/analysis          # the chord-labelled data (once)
  python -m m4mjax.train --config=experiments/m4m/lm_pretrain.py:base --workdir=workdirs/lm_base
  python -m m4mjax.train --config=experiments/m4m/analysis.py:small --workdir=workdirs/analysis_fa_self
  python -m m4mjax.train --config=experiments/m4m/analysis.py:small --config.link.kind=fa_cross \\
      --workdir=workdirs/analysis_fa_cross
  python -m m4mjax.train --config=experiments/m4m/analysis.py:small --config.link.train=full \\
      --workdir=workdirs/analysis_full                            # full fine-tuning
  python -m m4mjax.train --config=experiments/m4m/analysis.py:small --config.link.train=full \\
      --config.init_from= --workdir=workdirs/analysis_scratch     # same architecture from scratch
  python -m m4mjax.evaluate --workdir=workdirs/analysis_fa_self   # mir_eval chords + downbeat F -> eval.json
  python -m m4mjax.analysis_eval --baselines --data_dir=data/analysis --out=workdirs/analysis_baselines.json
  python -m m4mjax.analyze --workdir=workdirs/analysis_fa_self song.mid --out=analysed/

Variants: tiny (tests, seconds; init_from a lm_pretrain.py:tiny run), small (this CPU: the model section is
lm_pretrain.py:base's, init_from workdirs/lm_base, 4-bar windows), paper (official size 1, batch 8, lr 1e-4,
60k steps, 384-frame windows; init_from the converted official foundation model).
Switches: ``--config.link.kind=fa_self|fa_cross`` (LoRA rank/alpha follow the kind while left at 0),
``--config.link.train=link|full``; from scratch = ``link.train=full`` with an empty ``init_from``.
"""
import importlib.util
import os

import ml_collections

from m4mjax import linked
from m4mjax.run.cli import UserError

_FOUNDATION = {"tiny": "tiny", "small": "base", "paper": "paper"}  # the lm_pretrain.py variant each starts from


def _lm_pretrain():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lm_pretrain.py")
    spec = importlib.util.spec_from_file_location("_m4m_lm_pretrain", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def get_config(variant: str = "small"):
    if variant not in _FOUNDATION:
        raise UserError(f"unknown variant {variant!r} (tiny | small | paper)", f"analysis.py:{variant}")
    c = _lm_pretrain().get_config(_FOUNDATION[variant])  # model section = the foundation LM's, exactly
    c.task = "analysis"
    c.link = linked.link_config("fa_self")
    c.link.lora_rank, c.link.lora_alpha = 0, 0.0  # 0 = the kind's official value (64/128 fa_self, 16/32 fa_cross)
    from m4mjax.tasks import get_task

    task = get_task("analysis")
    c.data.update(name="prepared", dir="data/analysis", reference=task.reference, target=task.target,
                  drop_short=False, sampling="length")
    c.analyze = ml_collections.ConfigDict()
    c.analyze.temperature = 0.0         # decoding temperature for analyze/evaluate (0 = greedy)
    c.analyze.context = 0               # frames of the previous window's labels given as the next one's prompt
    c.analyze.batch_size = 16           # songs decoded together (batched by length)
    if variant == "tiny":
        c.link.update(lora_rank=4, lora_alpha=8.0, adapter_width=16, adapter_heads=4, mask_length=3)
        c.data.update(frames=16, batch_size=8)
        c.train.update(steps=2, log_every=1, eval_every=2, eval_batches=1, ckpt_every=2)
        c.analyze.context = 4
    elif variant == "small":
        c.init_from = "workdirs/lm_base"
        # 4 bars of 4/4 (FA_self reads 2 x 64 frames per row): chords and bars need little more context, and
        # windows overlap by `analyze.context` label frames when a song is analysed. 100 steps: ~10-15 min here.
        c.data.update(frames=64, batch_size=8)
        c.optim.update(lr=1e-3, warmup_frac=0.05)
        c.train.update(steps=100, log_every=10, eval_every=100, eval_batches=8, ckpt_every=25)
        c.analyze.context = 16
    else:  # paper: official fine-tuning (spec §4c)
        c.data.update(frames=384, batch_size=8)
        c.optim.update(lr=1e-4)
        c.train.update(steps=60_000, eval_every=500, eval_batches=25, ckpt_every=1000)
        c.analyze.context = 64
    return c


ENTRY = "m4mjax.train"
SWEEP_VARIANT = "small"


def get_sweep(variant: str = "small"):
    """The RESULTS table's rows: both links, full fine-tuning, and the same architecture from scratch."""
    return [dict(name=f"analysis_{variant}/fa_self", **{"link.kind": "fa_self"}),
            dict(name=f"analysis_{variant}/fa_cross", **{"link.kind": "fa_cross"}),
            dict(name=f"analysis_{variant}/full", **{"link.train": "full"}),
            dict(name=f"analysis_{variant}/scratch", **{"link.train": "full", "init_from": ""})]
