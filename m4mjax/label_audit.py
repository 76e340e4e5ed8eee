"""python -m m4mjax.label_audit --workdir=W [--windows=32] — teacher-forced accuracy of an analysis run by token class
(``--data=train|valid``: the data audit, ``data_audit``).

On ``windows`` validation windows spread over the split (``pipeline.make_dataset(..., spread=...)``), the argmax of
the run's teacher-forced logits (``link_logits``) against the true label tokens, per class:

* ``open``: at frames whose true row starts a chord, the first token is the chord instrument (a chord is opened);
* ``no_open``: at frames whose true row does not, the first token is not the chord instrument;
* ``chord_note``: pitch tokens of chord notes, exact (pitch and duration) given the true previous tokens;
* ``chord_pc``: the same, pitch class only;
* ``beat``: the beat track's drum pitch tokens; ``eos``: end-of-frame tokens after the first position;
* ``chord_row``: whole chord rows (every token of the row argmax-right): what greedy decoding gets right;
* ``bass`` / ``bass_pc``: the first chord note of each opened row (exact / pitch class): the note nothing in the row
  gives away (the later notes follow from it and the chord vocabulary), so the one that shows reading the music.

The learning-curve companion of the free-running scores (``analysis_eval``): a defect in decoding shows as good
teacher-forced and bad free-running numbers; under-training as both low. ``--reference=other`` (each window read
with another window's music: the batch rolled by one) or ``empty`` (no notes) is the reference ablation: classes
whose accuracy does not drop are predicted from the labels' own context, not from the music. ``--target=masked``
hides the whole label past (every target frame's embedding replaced by the learned mask embedding, as span masking
does in training; the tokens inside a frame stay teacher-forced): what the model reads from the music alone.
"""
from __future__ import annotations

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

from m4mjax import tokenizer as tok
from m4mjax.link_models import sounding_pitches
from m4mjax.run import cli


def class_stats(pred: np.ndarray, target: np.ndarray) -> dict[str, tuple[int, int]]:
    """(right, total) per class for argmax predictions ``pred`` and true tokens ``target`` (both [..., L])."""
    pred, target = np.asarray(pred).reshape(-1, target.shape[-1]), np.asarray(target).reshape(-1, target.shape[-1])
    L = target.shape[-1]
    ins_of = np.repeat(target[:, 0::2], 2, axis=-1)[:, :L]
    pitch_slot = (np.arange(L) % 2 == 1)[None] & (target < tok.N_NORMAL_TOKENS) & (target >= tok.N_PITCHES)
    chord_pd = pitch_slot & (ins_of == 0)
    beat_pd = pitch_slot & (ins_of == tok.DRUM)
    right = pred == target
    opens = target[:, 0] == 0
    first_ins = pred[:, 0] == 0
    chord_rows = opens & np.all(np.where((ins_of == 0) | (np.arange(L)[None] == 0), right, True), -1)
    pc = (pred % tok.N_PITCHES) % 12 == (target % tok.N_PITCHES) % 12
    eos = (target == tok.EOS) & (np.arange(L) > 0)[None]
    return {"open": (int((first_ins & opens).sum()), int(opens.sum())),
            "no_open": (int((~first_ins & ~opens & (target[:, 0] != tok.PAD)).sum()),
                        int((~opens & (target[:, 0] != tok.PAD)).sum())),
            "chord_note": (int((right & chord_pd).sum()), int(chord_pd.sum())),
            "chord_pc": (int((pc & chord_pd & (pred >= tok.N_PITCHES) & (pred < tok.N_NORMAL_TOKENS)).sum()),
                         int(chord_pd.sum())),
            "beat": (int((right & beat_pd).sum()), int(beat_pd.sum())),
            "eos": (int((right & eos).sum()), int(eos.sum())),
            "chord_row": (int(chord_rows.sum()), int(opens.sum())),
            # the first chord note of an opened row: the bass, the one note the row's earlier tokens do not give
            "bass": (int((right[:, 1] & opens).sum()), int(opens.sum())),
            "bass_pc": (int((pc[:, 1] & opens).sum()), int(opens.sum()))}


REFERENCES = ("true", "other", "empty")
TARGETS = ("true", "masked")


def ablate(reference: np.ndarray, mode: str) -> np.ndarray:
    """The reference rows [B, F, L] a window is read with: its own ('true'), the next window's ('other': rolled by
    one along the batch), or none ('empty': every frame an EOS-only row, as a silent song tokenises)."""
    if mode == "true":
        return reference
    if mode == "other":
        return np.roll(reference, 1, axis=0)
    if mode == "empty":
        out = np.full_like(reference, tok.PAD)
        out[..., 0] = np.where(reference[..., 0] == tok.PAD, tok.PAD, tok.EOS)  # frames past a song's end stay PAD
        return out
    raise cli.UserError(f"must be one of {REFERENCES}", f"--reference={mode}")


def chord_support(reference: np.ndarray, target: np.ndarray) -> tuple[int, int]:
    """(sounding, total) over the chord notes of the label rows ``target`` [F, L]: how many of each chord's pitch
    classes some pitched (non-drum) note of the music rows ``reference`` [F, L] sounds while the chord lasts (a note
    sounds from its frame for its duration class's frames). The data audit: on aligned windows most chord tones
    sound in the music; on misaligned ones (a transform that moved one stream and not the other) few do."""
    pitches = np.asarray(sounding_pitches(jnp.asarray(reference[None], jnp.int32)))[0]  # [F, 128]
    on = np.zeros((reference.shape[0], 12), bool)
    for pc in range(12):
        on[:, pc] = pitches[:, pc::12].any(-1)
    labels = tok.tokens_to_notes(target)
    chords = labels[labels[:, tok.INSTRUMENT] == 0]
    hit = total = 0
    for f in np.unique(chords[:, tok.FRAME]):
        row = chords[chords[:, tok.FRAME] == f]
        span = on[f:f + int(tok.DURATION_FRAMES[row[:, tok.DURATION].max()])].any(0)
        pcs = np.unique(row[:, tok.PITCH] % 12)
        hit, total = hit + int(span[pcs].sum()), total + len(pcs)
    return hit, total


def data_audit(cfg_data, split: str, windows: int = 64, seed: int = 0) -> dict[str, float]:
    """``chord_support`` of ``windows`` windows of ``split`` as the training pipeline makes them (the train split
    with its random windows and transpositions), each label track against its own music and against the next
    window's: the round trip of both streams through every transform."""
    from m4mjax.datasets import pipeline

    it = pipeline.make_dataset(cfg_data, split, seed=seed, spread=windows if split != "train" else 0)
    got, seen = {"own": [0, 0], "other": [0, 0]}, 0
    for batch in it:
        ref, tgt = np.asarray(batch["reference"]), np.asarray(batch["target"])
        for i in range(len(ref)):
            for name, j in (("own", i), ("other", (i + 1) % len(ref))):
                h, n = chord_support(ref[j], tgt[i])
                got[name][0] += h
                got[name][1] += n
        seen += len(ref)
        if seen >= windows:
            break
    return {k: round(h / max(n, 1), 4) for k, (h, n) in got.items()} | {"chord_tones": got["own"][1], "windows": seen}


def audit(workdir: str, windows: int = 32, reference: str = "true", target: str = "true") -> dict[str, float | int]:
    """Teacher-forced accuracies of the run ``workdir`` on ``windows`` validation windows (module doc), the music
    read as ``reference`` says (``ablate``), the label past seen (``target='true'``) or hidden (``'masked'``)."""
    if target not in TARGETS:
        raise cli.UserError(f"must be one of {TARGETS}", f"--target={target}")
    from flax import nnx

    from m4mjax.runs import TWO_STREAMS, load_run
    from m4mjax.datasets import pipeline
    from m4mjax.run import checkpoint

    model, cfg = load_run(workdir, streams=TWO_STREAMS)
    data = cfg.data
    data.batch_size = min(int(data.batch_size), windows)
    it = pipeline.make_dataset(data, "valid", seed=0, spread=windows)
    graphdef, state = nnx.split(model)
    hide = target == "masked"
    logits_of = jax.jit(lambda st, r, t: jnp.argmax(nnx.merge(graphdef, st).link_logits(
        r, t, target_mask=jnp.ones(t.shape[:2], bool) if hide else None), -1))
    totals: dict[str, list[int]] = {}
    for batch in it:
        keep = np.asarray(batch["mask"])
        ref = ablate(np.asarray(batch["reference"]), reference)
        pred = np.asarray(logits_of(state, jnp.asarray(ref), jnp.asarray(batch["target"])))
        for k, (r, n) in class_stats(pred[keep], np.asarray(batch["target"])[keep]).items():
            t = totals.setdefault(k, [0, 0])
            t[0] += r
            t[1] += n
    out: dict[str, float | int] = {"step": checkpoint.latest_step(workdir) or 0, "reference": reference,
                                   "target": target}
    for k, (r, n) in totals.items():
        out[k] = round(r / max(n, 1), 4)
        out[f"{k}_n"] = n
    return out


def main(argv: list[str] | None = None) -> None:
    ap = cli.ArgumentParser(prog="m4mjax.label_audit", description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", required=True, help="analysis run directory (or shipped model folder)")
    ap.add_argument("--windows", type=int, default=32, help="validation windows, spread over the split")
    ap.add_argument("--reference", default="true", choices=REFERENCES,
                    help="the music each window is read with: its own, another window's, or none (ablation)")
    ap.add_argument("--target", default="true", choices=TARGETS,
                    help="the label past: seen (teacher forcing) or every frame masked (the music alone)")
    ap.add_argument("--data", default="", choices=("", "train", "valid"),
                    help="instead: the data audit (chord tones sounding in the music, own vs another window's) of "
                         "this split as the run's pipeline makes it; no model is loaded")
    with cli.report_errors("m4mjax.label_audit"):
        args = ap.parse_args(argv)
        if args.windows < 1:
            raise cli.UserError("must be >= 1", f"--windows={args.windows}")
        if args.data:
            res = data_audit(cli.load_config(args.workdir).data, args.data, args.windows)
        else:
            res = audit(args.workdir, args.windows, args.reference, args.target)
        json.dump(res, sys.stdout)
        print()


if __name__ == "__main__":
    main()
