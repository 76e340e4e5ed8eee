"""Conditional generation by function alignment (spec §4-§5): chord_to_melody, melody_to_chord (Bach chorales:
soprano = melody, the chord track written as music), drums_to_others, others_to_drums (multi-track songs with
drums). The argument is ``TASK,VARIANT`` (either order; defaults chord_to_melody and small); the task's
reference/target selectors come from its ``m4mjax.tasks`` entry, so pick the task here, not with --config.task.

  python -m m4mjax.datasets.generation_data --kind=chorales --out=data/gen_chorales   # from data/analysis
  python -m m4mjax.datasets.generation_data --kind=drums --out=data/gen_drums
  python -m m4mjax.train --config=experiments/m4m/generation.py:chord_to_melody,small --workdir=workdirs/c2m
  python -m m4mjax.train --config=experiments/m4m/generation.py:drums_to_others,small \\
      --config.link.kind=fa_cross --workdir=workdirs/d2o_fa_cross
  python -m m4mjax.generate --workdir=workdirs/c2m --task=chord_to_melody chords.mid --out=gen/ --num_samples=4

Variants: tiny (tests, seconds; init_from a lm_pretrain.py:tiny run), small (this CPU: lm_pretrain.py:base's
model, init_from workdirs/lm_base, 4-bar windows), paper (official size 1, batch 8, lr 1e-4, 60k steps, 384
frames). Switches as analysis.py: ``--config.link.kind=fa_self|fa_cross``, ``--config.link.train=link|full``.
A new generation task = an entry in m4mjax/tasks.py + a line in TASK_DATA below.
"""
import importlib.util
import os

import ml_collections

from m4mjax import linked
from m4mjax.run.cli import UserError

_FOUNDATION = {"tiny": "tiny", "small": "base", "paper": "paper"}  # the lm_pretrain.py variant each starts from
TASK_DATA = {"chord_to_melody": "data/gen_chorales", "melody_to_chord": "data/gen_chorales",
             "drums_to_others": "data/gen_drums", "others_to_drums": "data/gen_drums"}


def _lm_pretrain():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lm_pretrain.py")
    spec = importlib.util.spec_from_file_location("_m4m_lm_pretrain", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def parse_arg(arg: str) -> tuple[str, str]:
    """'TASK,VARIANT' (either order, either omitted) -> (task, variant)."""
    task, variant = "chord_to_melody", "small"
    for part in filter(None, (p.strip() for p in str(arg).split(","))):
        if part in _FOUNDATION:
            variant = part
        elif part in TASK_DATA:
            task = part
        else:
            raise UserError(f"unknown task or variant {part!r} (tasks: {', '.join(TASK_DATA)}; variants: tiny | "
                            "small | paper)", f"generation.py:{arg}")
    return task, variant


def get_config(arg: str = "chord_to_melody,small"):
    task_name, variant = parse_arg(arg)
    c = _lm_pretrain().get_config(_FOUNDATION[variant])  # model section = the foundation LM's, exactly
    c.task = task_name
    c.link = linked.link_config("fa_self")
    c.link.lora_rank, c.link.lora_alpha = 0, 0.0  # 0 = the kind's official value (64/128 fa_self, 16/32 fa_cross)
    from m4mjax.tasks import get_task

    task = get_task(task_name)
    c.data.update(name="prepared", dir=TASK_DATA[task_name], reference=task.reference, target=task.target,
                  drop_short=False, sampling="length")
    c.generate = ml_collections.ConfigDict()
    c.generate.temperature = 1.0        # sampling temperature for m4mjax.generate
    c.generate.top_p = 0.9              # nucleus sampling
    c.generate.context = 0              # frames of the previous window's output given as the next one's prompt
    if variant == "tiny":
        c.link.update(lora_rank=4, lora_alpha=8.0, adapter_width=16, adapter_heads=4, mask_length=3)
        c.data.update(frames=16, batch_size=8)
        c.train.update(steps=2, log_every=1, eval_every=2, eval_batches=1, ckpt_every=2)
        c.generate.context = 4
    elif variant == "small":
        c.init_from = "workdirs/lm_base"
        c.data.update(frames=64, batch_size=8)  # 4 bars of 4/4 per window
        c.optim.update(lr=1e-3, warmup_frac=0.05)
        c.train.update(steps=200, log_every=10, eval_every=100, eval_batches=8, ckpt_every=50)
        c.generate.context = 16
    else:  # paper: official fine-tuning (spec §4c)
        c.data.update(frames=384, batch_size=8)
        c.optim.update(lr=1e-4)
        c.train.update(steps=60_000, eval_every=500, eval_batches=25, ckpt_every=1000)
        c.generate.context = 64
    return c


ENTRY = "m4mjax.train"
SWEEP_VARIANT = "small"


def get_sweep(arg: str = "small"):
    """One task (the file argument's) with both links: ``sweep.py experiments/m4m/generation.py:TASK,VARIANT``."""
    task, variant = parse_arg(arg)
    return [dict(name=f"generation_{variant}/{task}_{k}", **{"link.kind": k}) for k in ("fa_self", "fa_cross")]
