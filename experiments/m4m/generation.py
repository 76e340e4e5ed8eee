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
frames). Switches as analysis.py: ``--config.link.kind=fa_self|fa_cross|seq2seq``, ``--config.link.train=link|full``
(the seq2seq baseline also needs ``--config.link.train=full --config.link.mask_prob=0 --config.init_from=``).
A new generation task = an entry in m4mjax/tasks.py + a line in TASK_DATA below.
"""
from experiments.m4m import finetune
from m4mjax.run.cli import UserError

TASK_DATA = {"chord_to_melody": "data/gen_chorales", "melody_to_chord": "data/gen_chorales",
             "drums_to_others": "data/gen_drums", "others_to_drums": "data/gen_drums"}


def parse_arg(arg: str) -> tuple[str, str]:
    """'TASK,VARIANT' (either order, either omitted) -> (task, variant)."""
    task, variant = "chord_to_melody", "small"
    for part in filter(None, (p.strip() for p in str(arg).split(","))):
        if part in finetune.VARIANTS:
            variant = part
        elif part in TASK_DATA:
            task = part
        else:
            raise UserError(f"unknown task or variant {part!r} (tasks: {', '.join(TASK_DATA)}; variants: "
                            f"{' | '.join(finetune.VARIANTS)})", f"generation.py:{arg}")
    return task, variant


def get_config(arg: str = "chord_to_melody,small"):
    task_name, variant = parse_arg(arg)
    # generate settings: sampling temperature and nucleus top-p; context = frames of the previous window's output
    # given as the next one's prompt (set per variant). small: 200 steps.
    return finetune.config(variant, task_name, TASK_DATA[task_name], "generate", small_steps=200,
                           small_ckpt_every=50, temperature=1.0, top_p=0.9, context=0)


ENTRY = "m4mjax.train"
SWEEP_VARIANT = "small"


def get_sweep(arg: str = "small"):
    """One task's table rows (finetune.ROWS: both links, full fine-tuning, from scratch, seq2seq):
    ``sweep.py experiments/m4m/generation.py:TASK,VARIANT``."""
    task, variant = parse_arg(arg)
    return [dict(name=f"generation_{variant}/{task}_{row}", **over) for row, over in finetune.ROWS.items()]
