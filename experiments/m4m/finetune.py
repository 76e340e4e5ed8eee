"""What every function-alignment experiment (analysis.py, generation.py) shares: the foundation LM's config
(lm_pretrain.py's variant of the same size), a link, the task's data selectors, and the tiny / small / paper
fine-tuning budgets (spec §4c for paper). Not an experiment itself (no get_config): the experiments import it
(``from experiments.m4m import finetune``), as they are imported themselves, also by --config=FILE."""
import ml_collections

from experiments.m4m import lm_pretrain
from m4mjax.run.cli import UserError

FOUNDATION = {"tiny": "tiny", "small": "base", "paper": "paper"}  # the lm_pretrain.py variant each starts from
VARIANTS = tuple(FOUNDATION)

# The rows every function-alignment table has (sweep overrides): both links, full fine-tuning of the foundation,
# the same architecture from scratch, and the paper's seq2seq baseline (spec 4c: its own sizes, from scratch).
ROWS = {"fa_self": {"link.kind": "fa_self"},
        "fa_cross": {"link.kind": "fa_cross"},
        "full": {"link.train": "full"},
        "scratch": {"link.train": "full", "init_from": ""},
        "seq2seq": {"link.kind": "seq2seq", "link.train": "full", "link.mask_prob": 0.0, "init_from": ""}}


def check_variant(variant: str, where: str) -> str:
    """``variant`` when it is one of VARIANTS, else the one-line UserError naming ``where`` (FILE:ARG)."""
    if variant not in VARIANTS:
        raise UserError(f"unknown variant {variant!r} ({' | '.join(VARIANTS)})", where)
    return variant


def config(variant: str, task_name: str, data_dir: str, section: str, *, small_steps: int,
           small_ckpt_every: int, **section_defaults) -> ml_collections.ConfigDict:
    """The foundation's config (model section exactly) + task ``task_name`` on ``data_dir`` + an FA_self link
    + the ``section`` ConfigDict (the task command's decoding settings: ``section_defaults`` and a ``context``
    of 4 / 16 / 64 frames for tiny / small / paper) + the variant's budget."""
    from m4mjax import linked
    from m4mjax.tasks import get_task

    c = lm_pretrain.get_config(FOUNDATION[check_variant(variant, f"finetune.py:{variant}")])
    c.task = task_name
    c.link = linked.link_config("fa_self")
    c.link.lora_rank, c.link.lora_alpha = 0, 0.0  # 0 = the kind's official value (64/128 fa_self, 16/32 fa_cross)
    task = get_task(task_name)
    c.data.update(name="prepared", dir=data_dir, reference=task.reference, target=task.target,
                  drop_short=False, sampling="length",
                  train_groups=())  # the training mix: song-id prefixes to train on, e.g. ('synth/',); () = all
    c[section] = ml_collections.ConfigDict(section_defaults)
    if variant == "tiny":
        c.link.update(lora_rank=4, lora_alpha=8.0, adapter_width=16, adapter_heads=4, mask_length=3)
        c.link.seq2seq.update({k: c.model[k] for k in c.link.seq2seq})  # its seq2seq row at the tiny sizes too
        c.data.update(frames=16, batch_size=8)
        c.train.update(steps=2, log_every=1, eval_every=2, eval_batches=1, ckpt_every=2)
        c[section].context = 4
    elif variant == "small":
        c.init_from = "workdirs/lm_base"
        # 4 bars of 4/4 per window (FA_self reads 2 x 64 frames per row): chords, bars and phrases need little
        # more, and windows overlap by `context` target frames when a song is processed.
        c.data.update(frames=64, batch_size=8)
        c.optim.update(lr=1e-3, warmup_frac=0.05)
        c.train.update(steps=small_steps, log_every=10, eval_every=100, eval_batches=8, ckpt_every=small_ckpt_every)
        c[section].context = 16
    else:  # paper: official fine-tuning (spec §4c)
        c.data.update(frames=384, batch_size=8)
        c.optim.update(lr=1e-4)
        c.train.update(steps=60_000, eval_every=500, eval_batches=25, ckpt_every=1000)
        c[section].context = 64
    return c
