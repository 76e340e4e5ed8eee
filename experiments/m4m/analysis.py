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
  python -m m4mjax.train --config=experiments/m4m/analysis.py:small --config.link.kind=seq2seq \\
      --config.link.train=full --config.link.mask_prob=0 --config.init_from= \\
      --workdir=workdirs/analysis_seq2seq                         # the paper's encoder-decoder baseline
  python -m m4mjax.evaluate --workdir=workdirs/analysis_fa_self   # mir_eval chords + downbeat F -> eval.json
  python -m m4mjax.analysis_eval --baselines --data_dir=data/analysis --out=workdirs/analysis_baselines.json
  python -m m4mjax.analyze --workdir=workdirs/analysis_fa_self song.mid --out=analysed/

Variants: tiny (tests, seconds; init_from a lm_pretrain.py:tiny run), cpu (the CPU recipe, CPU below: FA_self on
the 2-layer lm_pretrain.py:cpu foundation; its rows by the switches below), cpu_scratch (its scratch row), small
(this CPU: the model section is lm_pretrain.py:base's, init_from workdirs/lm_base, 4-bar windows, 17-slot target
rows, sparse head), paper (official size 1, batch 8, lr 1e-4,
60k steps, 384-frame windows; init_from the converted official foundation model).
Switches: ``--config.link.kind=fa_self|fa_cross|seq2seq`` (LoRA rank/alpha follow the kind while left at 0),
``--config.link.train=link|full``; from scratch = ``link.train=full`` with an empty ``init_from``.
"""
from experiments.m4m import finetune


# cpu (issue 23): the CPU recipe, whose scratch row (cpu_scratch, session 13) was the first analyser to read the
# music on this CPU. Deviations from :small, each measured in docs/RESULTS.md: a 2-layer, width-128 global stack (the
# 6-layer :base shape had not learned the chord bass after ~1,700 steps) whose foundation is lm_pretrain.py:cpu
# (shipped as pretrained/lm_cpu); the reference's sounding pitches added under each predicted frame
# (link.target_sounding); half the label past span-masked in 16-frame spans; chord and "open a chord" tokens
# weighted 3x; LoRA 8/16; a constant learning rate after 1 % warm-up, its last 500 steps decaying linearly to 0
# (session 15: valid loss 0.1214 -> 0.1072; extend a run from its kept pre-decay checkpoint); the share of the
# coming 4 and 16 reference frames in which each pitch sounds (link.sounding_ahead, session 15: valid loss 0.1296 vs
# 0.1578 at equal steps); seq2seq at this recipe's sizes, not the official 256-wide 3+3 layers (4-6x the step cost
# here; official sizes: --config.link.seq2seq.width=256 ...); a quarter of the training windows starting at their
# song's first frame (data.song_start_frac, session 17: inference's first window starts there, and a model that had
# never seen a song start began most songs without a chord and out of phase: synthetic majmin 0.804 -> 0.840,
# downbeat F 0.902 -> 0.951 over every held-out song). Its rows are finetune.ROWS
# (`--config.link.kind=fa_cross`, `--config.link.train=full`, ...); cpu_scratch = its scratch row.
CPU = {"init_from": "pretrained/lm_cpu", "model.width": 128, "model.layers": 2, "model.ffn": 512,
       "link.lora_rank": 8, "link.lora_alpha": 16.0, "link.target_sounding": True, "link.mask_prob": 0.5,
       "link.mask_length": 16, "link.loss_weights.chord": 3.0, "link.loss_weights.open": 3.0,
       "link.sounding_ahead": (4, 16), "data.song_start_frac": 0.25, "link.seq2seq.width": 128, "link.seq2seq.layers": 2,
       "link.seq2seq.heads": 4, "link.seq2seq.ffn": 512, "link.seq2seq.local_layers": 1,
       "optim.schedule": "warmup_constant", "optim.warmup_frac": 0.01, "optim.decay_steps": 500, "train.steps": 4000,
       "train.eval_every": 500, "train.ckpt_every": 100, "train.log_every": 20,
       "train.ckpt_keep_every": 500}  # every 500th step kept: the learning curve is evaluated afterwards (--step)
CPU_SCRATCH = {**CPU, **finetune.ROWS["scratch"]}


def get_config(variant: str = "small"):
    if variant in ("cpu", "cpu_scratch"):
        c = get_config("small")
        c.update_from_flattened_dict(CPU if variant == "cpu" else CPU_SCRATCH)
        return c
    finetune.check_variant(variant, f"analysis.py:{variant}")
    # analyze / evaluate settings: temperature 0 = greedy; context = frames of the previous window's labels given
    # as the next one's prompt (set per variant); batch_size = songs decoded together (batched by length).
    # small: 100 steps, ~10-15 min here.
    c = finetune.config(variant, "analysis", "data/analysis", "analyze", small_steps=100, small_ckpt_every=25,
                        temperature=0.0, context=0, batch_size=16)
    if variant == "small":  # CPU recipe (deviations, exact): every label row of data/analysis holds <= 8 notes, so
        # 17 target slots instead of 25; the head only on real slots (~20 % of them; a fuller batch runs dense).
        # Together 1.54x faster steps here (docs/RESULTS.md, issue 23 session 11)
        c.data.target_frame_tokens = 17
        c.model.head_capacity = 0.3
    return c


ENTRY = "m4mjax.train"
SWEEP_VARIANT = "small"


def get_sweep(variant: str = "small"):
    """The RESULTS table's rows (finetune.ROWS): both links, full fine-tuning, the same architecture from
    scratch, the seq2seq baseline."""
    return [dict(name=f"analysis_{variant}/{row}", **over) for row, over in finetune.ROWS.items()]
