"""python -m m4mjax.generate --workdir=W --task=TASK in.mid [more.mid ...] --out=DIR — conditional generation.

Per input NAME.mid it writes DIR/NAME.mid (DIR/NAME_k.mid, k = 0..K-1, with --num_samples=K > 1): the input's
reference tracks unchanged (tempo map and metre kept) plus the generated tracks, named "m4m <task> ...".
The run W (experiments/m4m/generation.py) must have been trained for TASK (else a one-line error). What is read
from the input as the reference, per the task's reference selector (m4mjax.tasks):

* the chord track ('track:250', chord_to_melody): a track named "m4m chords" (m4mjax.analyze's output) is taken
  as-is; otherwise the file's non-drum notes are read as chords: every change of the set of sounding pitch
  classes starts a chord (bass = the lowest sounding note), named by ``labels.notes_to_harte`` and drawn on the
  chord-track layout (``labels.chord_track``, eighth-note grid, re-struck at barlines). Block chords expected.
* a melody ('track:K', melody_to_chord): every non-drum note of the file (one melody per file).
* any other selector ('music_drums', 'music_others', ...): ``pipeline.select_stream`` on the file's notes.
The kept tracks are the non-drum ones for the first two, else the tracks the selector picked; the rest of the
file is dropped (others_to_drums replaces a song's drums). A chord-track target also gets DIR/NAME.lab.

Songs of any length: windows of ``data.frames`` overlapping by ``--context`` frames as m4mjax.analyze (each
window after the first gets the output already sampled for its first frames as the prompt). Bad files (not
MIDI, no notes, no reference notes) get one line ``m4mjax.generate: error: ... (FILE)`` and no output; the
others are still generated, and the command exits 2 at the end when any file failed.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Sequence

import jax
import numpy as np
import symusic

from m4mjax import labels, runs
from m4mjax import tokenizer as tok
from m4mjax.run import cli, io
from m4mjax.windows import CHORD_NAME, generate_song

TASKS = ("chord_to_melody", "melody_to_chord", "drums_to_others", "others_to_drums")
PREFIX = "m4m "  # tracks this command (or analyze) added start with it; skipped when a file is re-read


def load_run(workdir: str, task: str):
    """(model, config, Task) of a run trained for ``task``; one-line error when the run's task differs."""
    from m4mjax import tasks

    model, cfg = runs.load_run(workdir, task=task)
    return model, cfg, tasks.get_task(task)


# ------------------------------------------------------------------------------------------ reference
def chords_from_notes(notes: np.ndarray, n_frames: int, bar_starts: Sequence[int]) -> np.ndarray:
    """Non-drum notes read as chords -> chord-track notes (track 250): one chord per run of frames with the
    same sounding pitch classes and lowest note; silence is 'N' (no notes)."""
    music = notes[notes[:, tok.INSTRUMENT] != tok.DRUM]
    pcs = np.zeros(n_frames, np.int64)
    low = np.full(n_frames, 128, np.int64)
    for f, p, d in music[:, [tok.FRAME, tok.PITCH, tok.DURATION]]:
        e = min(int(f) + int(tok.DURATION_FRAMES[d]), n_frames)
        pcs[f:e] |= 1 << (int(p) % 12)
        low[f:e] = np.minimum(low[f:e], p)
    key = pcs * 256 + low
    cuts = np.r_[0, np.nonzero(key[1:] != key[:-1])[0] + 1, n_frames]
    segs = []
    for a, b in zip(cuts[:-1], cuts[1:]):
        if pcs[a]:
            segs.append((int(a), int(b), labels.notes_to_harte(int(low[a]) % 12,
                                                                [k for k in range(12) if pcs[a] >> k & 1])))
    return labels.chord_track(segs, n_frames, bar_starts)


def read_reference(path: str, selector: str) -> tuple[np.ndarray, int, symusic.Score, list[int]]:
    """(reference notes, n_frames, score, indices of the score's tracks that fed the reference) of one MIDI
    file (module docstring). ValueError naming the file when it is unreadable or has no reference notes."""
    from m4mjax.datasets import pipeline

    score = tok.load_midi(path)
    chord_ref = selector == f"track:{labels.CHORD_TRACK}"
    kept = [t for t in score.tracks if not t.name.startswith(PREFIX) or (chord_ref and t.name == CHORD_NAME)]
    if len(kept) != len(score.tracks):
        score.tracks = kept
    if score.note_num() == 0:
        raise ValueError(f"{path}: no notes")
    notes, n = tok.midi_to_notes(score, name=str(path))
    kind, _, k = selector.partition(":")
    nondrum = notes[notes[:, tok.INSTRUMENT] != tok.DRUM]
    if kind == "track" and k.isdigit():
        drawn = [i for i, t in enumerate(score.tracks) if t.name == CHORD_NAME]
        if chord_ref and drawn:  # already on the chord-track layout (m4mjax.analyze's output)
            ref = notes[np.isin(notes[:, tok.TRACK], drawn)].copy()
            ref[:, tok.TRACK] = labels.CHORD_TRACK
        elif chord_ref:
            ref = chords_from_notes(nondrum, n, labels.meter_grid(tok.timing_of(score)["time_signatures"], n)[0])
        else:
            ref = nondrum.copy()
            ref[:, tok.TRACK] = int(k)
        tracks = sorted({int(t) for t in nondrum[:, tok.TRACK]})
        what = "non-drum"
    else:
        ref = pipeline.select_stream(notes, selector)
        tracks = sorted({int(t) for t in ref[:, tok.TRACK]})
        what = f"{selector!r}"
    if not len(ref):
        raise ValueError(f"{path}: no {what} notes to read as the reference")
    return tok.sort_notes(ref), n, score, tracks


# ------------------------------------------------------------------------------------------------ files
def _track(name: str, notes: np.ndarray, tpq: int, n_frames: int, program: int, is_drum: bool) -> symusic.Track:
    start = notes[:, tok.FRAME].astype(np.int64)
    end = np.minimum(start + tok.DURATION_FRAMES[notes[:, tok.DURATION]], n_frames)
    t0 = np.round(start * tpq / tok.FRAMES_PER_QUARTER).astype(np.int32)
    t1 = np.round(end * tpq / tok.FRAMES_PER_QUARTER).astype(np.int32)
    track = symusic.Track(name=name, program=program, is_drum=is_drum)
    track.notes = symusic.Note.from_numpy(time=t0, duration=np.maximum(t1 - t0, 1).astype(np.int32),
                                          pitch=notes[:, tok.PITCH].astype(np.int8),
                                          velocity=np.clip(notes[:, tok.VELOCITY], 1, 127).astype(np.int8))
    return track


def write_song(stem: str, score: symusic.Score, tracks: list[int], target: np.ndarray, n_frames: int,
               task) -> list[str]:
    """STEM.mid = the score's ``tracks`` + the target tokens [n_frames, L] as tracks (+ STEM.lab for chords)."""
    out = score.copy()
    out.tracks = [score.tracks[i].copy() for i in tracks]
    notes = tok.tokens_to_notes(target)
    notes = notes[notes[:, tok.FRAME] < n_frames]
    tpq = int(score.ticks_per_quarter)
    chord_target = task.target == f"track:{labels.CHORD_TRACK}"
    for ins in sorted({int(i) for i in notes[:, tok.INSTRUMENT]}):
        drum = ins == tok.DRUM
        name = CHORD_NAME if chord_target else f"{PREFIX}{task.name} " + ("drums" if drum else f"program{ins}")
        out.tracks.append(_track(name, notes[notes[:, tok.INSTRUMENT] == ins], tpq, n_frames, 0 if drum else ins, drum))
    written = [f"{stem}.mid"]
    with io.atomic_path(written[0]) as tmp:
        Path(tmp).write_bytes(out.dumps_midi())
    if chord_target:
        segs = labels.track_to_chords(notes[notes[:, tok.INSTRUMENT] != tok.DRUM], None, n_frames=n_frames)
        labels.write_lab(f"{stem}.lab", labels.segments_to_seconds(segs, tok.timing_of(score)))
        written.append(f"{stem}.lab")
    return written


def generate_files(workdir: str, task: str, paths: Sequence[str], out: str, *, num_samples: int = 1,
                   temperature: float | None = None, top_p: float | None = None, context: int | None = None,
                   seed: int = 0, scale: float | None = None) -> tuple[list[str], list[tuple[str, str]]]:
    """Generate for MIDI files into ``out``; returns (files written, [(bad file, reason)])."""
    if num_samples < 1:
        raise cli.UserError("must be >= 1", f"--num_samples={num_samples}")
    model, cfg, t = load_run(workdir, task)
    opts = cfg.get("generate", {})
    frames = int(cfg.data.frames)
    temperature = float(opts.get("temperature", 1.0) if temperature is None else temperature)
    top_p = float(opts.get("top_p", 1.0) if top_p is None else top_p)
    context = int(opts.get("context", frames // 4) if context is None else context)
    if not 0.0 < top_p <= 1.0:
        raise cli.UserError("must be in (0, 1]", f"--top_p={top_p}")
    if scale is not None and not model.accepts_scale:
        raise cli.UserError(f"the adapter-output multiplier needs a cross-attending run (FA_cross or seq2seq; this "
                            f"run is {cfg.link.kind})", f"--scale={scale}")
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise cli.UserError(f"cannot create the output folder ({e.strerror or e})", out) from None
    written, bad, stems = [], [], {}
    rng = jax.random.key(seed)
    for i, p in enumerate(paths):
        stem = str(Path(out) / Path(p).stem)
        try:
            if stem in stems:
                raise ValueError(f"{p}: same output name as {stems[stem]}")
            ref, n, score, tracks = read_reference(p, t.reference)
        except ValueError as e:
            ue = cli.user_error(e, str(p))
            bad.append((str(p), ue.what))
            print(f"m4mjax.generate: error: {ue}", file=sys.stderr, flush=True)
            continue
        stems[stem] = p
        gen = generate_song(model, ref, n, frames, context=context, num_samples=num_samples,
                            temperature=temperature, top_p=top_p, rng=jax.random.fold_in(rng, i), scale=scale)
        for k in range(num_samples):
            written += write_song(stem if num_samples == 1 else f"{stem}_{k}", score, tracks, gen[k], n, t)
    return written, bad


def main(argv: list[str] | None = None) -> None:
    """Command line: see the module docstring."""
    ap = cli.ArgumentParser(prog="m4mjax.generate", description=__doc__.split("\n")[0])
    ap.add_argument("midi", nargs="+", help="reference MIDI files")
    ap.add_argument("--workdir", required=True, help="generation run directory (m4mjax.train generation.py)")
    ap.add_argument("--task", required=True, choices=TASKS, help="the run's task")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--num_samples", type=int, default=1, help="outputs per input (NAME_k.mid when > 1)")
    ap.add_argument("--temperature", type=float, default=None, help="sampling temperature (run's default)")
    ap.add_argument("--top_p", type=float, default=None, help="nucleus sampling mass (run's default)")
    ap.add_argument("--context", type=int, default=None, help="frames of prompt per window (run's default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scale", type=float, default=None,
                    help="FA_cross: multiplier on the adapter outputs (official sampler's; run's link.adapter_scale)")
    with cli.report_errors("m4mjax.generate"):
        args = ap.parse_args(argv)
        written, bad = generate_files(args.workdir, args.task, args.midi, args.out, num_samples=args.num_samples,
                                      temperature=args.temperature, top_p=args.top_p, context=args.context,
                                      seed=args.seed, scale=args.scale)
        print(f"wrote {len(written)} files for {len(args.midi) - len(bad)} inputs into {args.out}")
        cli.raise_if_bad(bad, len(args.midi), "used")


if __name__ == "__main__":
    main()
