"""python -m m4mjax.analyze [--workdir=W] song.mid [more.mid ...] --out=DIR — chords and downbeats of any MIDI.

Per input NAME.mid it writes DIR/NAME.mid (the input, every event kept, plus an "m4m chords" track and an
"m4m beats" drum track), DIR/NAME.lab (``start end label`` in seconds, Harte labels, mir_eval's format) and
DIR/NAME.beats (one downbeat time in seconds per line). Times follow the file's own tempo map.

The analysis run W (experiments/m4m/analysis.py; default: the shipped analyser, pretrained/analysis) models the labels track given the music, one window of
``data.frames`` frames at a time. A song of any length is cut into windows that overlap by ``--context``
frames: each window after the first gets the labels already decided for its first ``context`` frames as the
target prompt, so chords carry across window seams; the last window ends at the song's end. Songs are
decoded ``--batch_size`` at a time (one jitted loop per round of windows). ``--decode=scored`` (the default) chooses
each chord row whole by its probability (``m4mjax.chord_decode``); ``greedy`` and ``sample`` go token by token.

Bad files (unreadable, not MIDI, no notes) get one line ``m4mjax.analyze: error: ... (FILE)`` and no output;
the other files are still analysed, and the command exits 2 at the end when any file failed.
"""
from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Iterator, Sequence

import jax
import numpy as np
import symusic
from flax import nnx

from m4mjax import labels
from m4mjax import tokenizer as tok
from m4mjax.run import cli, io

CHORD_NAME, BEAT_NAME = "m4m chords", "m4m beats"  # names of the tracks analyze adds (skipped when re-read)
SHIPPED = Path(__file__).resolve().parents[1] / "pretrained" / "analysis"  # the analyser used without --workdir


@dataclasses.dataclass
class Song:
    """One piece to label: its music notes on the 16th-note grid, its length in frames, and (held-out data only)
    its true label notes."""
    notes: np.ndarray
    n_frames: int
    labels: np.ndarray | None = None


@dataclasses.dataclass
class Result:
    """A song's analysis: chord segments and downbeats in frames, and the label notes (chords, then beats)."""
    segments: list[tuple[int, int, str]]
    downbeats: np.ndarray
    notes: np.ndarray


# --------------------------------------------------------------------------------------------- the model
def load_run(workdir: str) -> tuple[nnx.Module, object]:
    """(model, config) of a two-stream run directory (config.json + the latest checkpointed weights)."""
    from m4mjax import tasks
    from m4mjax.run import checkpoint

    cfg = cli.load_config(workdir)
    task = tasks.get_task(cfg.get("task", "lm"))
    if task.streams != ("reference", "target"):
        raise cli.UserError(f"run of task {task.name!r} is not a reference -> target task (train analysis.py)", workdir)
    model = nnx.eval_shape(lambda: task.build(cfg, nnx.Rngs(0)))
    nnx.update(model, checkpoint.restore_params(workdir, nnx.state(model, nnx.Param)))
    return model, cfg


DECODES = ("scored", "greedy", "sample")  # chord rows scored whole (chord_decode) | argmax per token | sampled
OPEN_MODES = ("joint", "greedy")  # scored: a chord opens when it beats "no chord" | when p(open) >= 0.5
SCORED_BASSES = 4  # scored: candidate rows under the 4 likeliest bass pitch classes (12 = every candidate)


def _sample(model: nnx.Module, reference: np.ndarray, prompt: np.ndarray | None, n_frames: int, rng: jax.Array,
            temperature: float, decode: str = "sample", open_mode: str = "joint") -> np.ndarray:
    """Target tokens [B, F0 + n_frames, L] for reference [B, F, L] after prompt [B, F0, L] (the one model call)."""
    from m4mjax import linked

    return np.asarray(linked.generate(model, reference, rng, n_frames=n_frames, prompt=prompt,
                                      temperature=0.0 if decode == "greedy" else temperature, top_p=1.0,
                                      scored=(open_mode, SCORED_BASSES) if decode == "scored" else None))


# ------------------------------------------------------------------------------------------ windows
def window_starts(n_frames: int, frames: int, context: int) -> list[int]:
    """Start frames of the windows covering [0, n_frames): stride ``frames - context``, the last one ending at
    the song's end (so it may overlap its predecessor by more than ``context``)."""
    starts = [0]
    while starts[-1] + frames < n_frames:
        starts.append(min(starts[-1] + frames - context, n_frames - frames))
    return starts


def label_songs(model: nnx.Module, songs: Sequence[Song], frames: int, *, context: int = 0, batch_size: int = 8,
                temperature: float = 0.0, seed: int = 0, decode: str = "scored", open_mode: str = "joint",
                label_prompt: int = 0) -> Iterator[Result]:
    """Analyse ``songs`` (one Result per song, yielded in the given order). Songs are batched by length, so a
    batch's short songs do not wait idle through its longest one's windows. ``decode``: 'scored' (chords chosen
    whole, ``m4mjax.chord_decode``; beats greedy), 'greedy' (argmax token by token) or 'sample' (``temperature``).
    ``label_prompt`` > 0: each song's first that many frames of TRUE labels (``Song.labels``) are given as the
    first window's target prompt and kept (the official evaluation protocol)."""
    if not 0 <= context < frames:
        raise cli.UserError(f"must be in [0, {frames}) (the run's window is {frames} frames)", f"--context={context}")
    if decode not in DECODES:
        raise cli.UserError(f"must be one of {', '.join(DECODES)}", f"--decode={decode}")
    if open_mode not in OPEN_MODES:
        raise cli.UserError(f"must be one of {', '.join(OPEN_MODES)}", f"--open={open_mode}")
    if not 0 <= label_prompt < frames or (label_prompt and any(s.labels is None for s in songs)):
        raise cli.UserError(f"must be in [0, {frames}) and needs songs with true labels", f"label_prompt={label_prompt}")
    L = int(model.cfg.max_frame_tokens)
    B = max(1, min(int(batch_size), 1 << max(len(songs) - 1, 0).bit_length()))  # few shapes: few compiles
    rng = jax.random.key(seed)
    order = sorted(range(len(songs)), key=lambda i: songs[i].n_frames)
    done: dict[int, Result] = {}
    nxt = 0  # next song (in the given order) to yield
    for g in range(0, len(songs), B):
        members = order[g:g + B]
        group = [songs[i] for i in members]
        plans = [window_starts(s.n_frames, frames, context) for s in group]
        out = [np.full((max(s.n_frames, frames), L), tok.PAD, np.int32) for s in group]
        known = [label_prompt] * len(group)  # frames of each song's target decided so far
        if label_prompt:
            for i, s in enumerate(group):
                out[i][:label_prompt] = tok.notes_to_tokens(s.labels, 0, label_prompt, L, song_frames=s.n_frames,
                                                            row_format=model.cfg.get("row_format", "eos"))
        for r in range(max(len(p) for p in plans)):
            given = context if r else label_prompt  # target frames at the window's start that are already decided
            ref = np.full((B, frames, L), tok.PAD, np.int32)
            prompt = np.full((B, given, L), tok.PAD, np.int32)
            live = [i for i, p in enumerate(plans) if r < len(p)]
            for i in live:
                s, st = group[i], plans[i][r]
                ref[i] = tok.notes_to_tokens(s.notes, st, frames, L, song_frames=s.n_frames,
                                             row_format=model.cfg.get("row_format", "eos"))
                prompt[i] = out[i][st:st + given]
            gen = _sample(model, ref, prompt if given else None, frames - given,
                          jax.random.fold_in(rng, g * 100003 + r), temperature, decode, open_mode)
            for i in live:
                st = plans[i][r]
                new = max(known[i], st)  # frames already decided keep their labels
                out[i][new:st + frames] = gen[i][new - st:frames]
                known[i] = st + frames
        for i, s, toks in zip(members, group, out):
            done[i] = decode_tokens(toks[:s.n_frames], s.n_frames)
        while nxt in done:
            yield done.pop(nxt)
            nxt += 1


def decode_tokens(target_tokens: np.ndarray, n_frames: int) -> Result:
    """Label tokens [n_frames, L] -> chord segments (frames, 'N' gaps), downbeat frames and the label notes."""
    notes = tok.tokens_to_notes(target_tokens)
    chord = notes[notes[:, tok.INSTRUMENT] != tok.DRUM]
    chord[:, tok.TRACK] = labels.CHORD_TRACK
    beat = notes[notes[:, tok.INSTRUMENT] == tok.DRUM]
    beat[:, tok.TRACK] = labels.BEAT_TRACK
    return Result(labels.track_to_chords(chord, None, n_frames=n_frames), labels.track_to_downbeats(beat, None),
                  np.concatenate([chord, beat]))


# ------------------------------------------------------------------------------------------------ files
def read_song(path: str) -> tuple[Song, object, dict]:
    """(Song of the music, symusic Score, timing) of a MIDI file; tracks analyze added earlier are skipped.
    ValueError naming the file when it is unreadable, not MIDI, or has no notes."""
    score = tok.load_midi(path)
    kept = [t for t in score.tracks if t.name not in (CHORD_NAME, BEAT_NAME)]
    if len(kept) != len(score.tracks):
        score.tracks = kept
    if score.note_num() == 0:
        raise ValueError(f"{path}: no notes")
    notes, n = tok.midi_to_notes(score, name=str(path))
    return Song(notes, n), score, tok.timing_of(score)


def write_outputs(stem: Path, score, timing: dict, result: Result, n_frames: int) -> list[str]:
    """Write STEM.mid (input + label tracks), STEM.lab and STEM.beats (seconds through the file's tempo map)."""
    tpq = int(score.ticks_per_quarter)
    score = score.copy()
    for name, sel in ((CHORD_NAME, result.notes[:, tok.INSTRUMENT] != tok.DRUM),
                      (BEAT_NAME, result.notes[:, tok.INSTRUMENT] == tok.DRUM)):
        n = result.notes[sel]
        start = n[:, tok.FRAME].astype(np.int64)
        end = np.minimum(start + tok.DURATION_FRAMES[n[:, tok.DURATION]], n_frames)
        track = symusic.Track(name=name, program=0, is_drum=name == BEAT_NAME)
        t0 = np.round(start * tpq / tok.FRAMES_PER_QUARTER).astype(np.int32)
        t1 = np.round(end * tpq / tok.FRAMES_PER_QUARTER).astype(np.int32)
        track.notes = symusic.Note.from_numpy(
            time=t0, duration=np.maximum(t1 - t0, 1).astype(np.int32), pitch=n[:, tok.PITCH].astype(np.int8),
            velocity=np.clip(n[:, tok.VELOCITY], 1, 127).astype(np.int8))
        score.tracks.append(track)
    with io.atomic_path(f"{stem}.mid") as tmp:
        Path(tmp).write_bytes(score.dumps_midi())
    labels.write_lab(f"{stem}.lab", labels.segments_to_seconds(result.segments, timing))
    beats = labels.frames_to_seconds(result.downbeats, timing) if len(result.downbeats) else []
    io.atomic_write(f"{stem}.beats", "".join(f"{float(t):.6f}\n" for t in beats))
    return [f"{stem}.mid", f"{stem}.lab", f"{stem}.beats"]


def analyze_files(workdir: str, paths: Sequence[str], out: str, *, context: int | None = None,
                  batch_size: int | None = None, temperature: float | None = None, seed: int = 0,
                  progress: bool = True, decode: str | None = None) -> tuple[list[str], list[tuple[str, str]]]:
    """Analyse MIDI files into ``out``; returns (files written, [(bad file, reason)]). Bad files are reported
    on stderr as they are found and skipped; every good file is written."""
    from m4mjax.run import metrics

    model, cfg = load_run(workdir)
    opts = cfg.get("analyze", {})
    frames = int(cfg.data.frames)
    context = int(opts.get("context", frames // 4) if context is None else context)
    batch_size = int(opts.get("batch_size", 8) if batch_size is None else batch_size)
    temperature = float(opts.get("temperature", 0.0) if temperature is None else temperature)
    decode = str(opts.get("decode", "scored") if decode is None else decode)
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise cli.UserError(f"cannot create the output folder ({e.strerror or e})", out) from None
    good, bad, stems = [], [], {}
    for p in paths:
        stem = Path(out) / Path(p).stem
        try:
            if str(stem) in stems:
                raise ValueError(f"{p}: same output name as {stems[str(stem)]}")
            song, score, timing = read_song(p)
        except ValueError as e:
            ue = cli.user_error(e, str(p))
            bad.append((str(p), ue.what))
            print(f"m4mjax.analyze: error: {ue}", file=sys.stderr, flush=True)
            continue
        stems[str(stem)] = p
        good.append((stem, song, score, timing))
    results = label_songs(model, [g[1] for g in good], frames, context=context, batch_size=batch_size,
                          temperature=temperature, seed=seed, decode=decode)
    if progress:
        results = metrics.progress_bar(results, len(good), "analyze: files")
    written = []
    for (stem, song, score, timing), res in zip(good, results):
        written += write_outputs(stem, score, timing, res, song.n_frames)
    return written, bad


def main(argv: list[str] | None = None) -> None:
    """Command line: see the module docstring."""
    ap = cli.ArgumentParser(prog="m4mjax.analyze", description=__doc__.split("\n")[0])
    ap.add_argument("midi", nargs="+", help="MIDI files to analyse")
    ap.add_argument("--workdir", default="", help="analysis run directory or shipped model folder (default: the "
                    "shipped analyser, pretrained/analysis)")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--context", type=int, default=None, help="frames of label prompt per window (run's default)")
    ap.add_argument("--batch_size", type=int, default=None, help="songs decoded together (run's default)")
    ap.add_argument("--decode", default=None, choices=None,
                    help="scored (default: each chord row chosen whole by its probability) | greedy | sample")
    ap.add_argument("--temperature", type=float, default=None, help="--decode=sample: softmax temperature")
    ap.add_argument("--seed", type=int, default=0)
    with cli.report_errors("m4mjax.analyze"):
        args = ap.parse_args(argv)
        if not args.workdir and not (SHIPPED / "config.json").is_file():
            raise cli.UserError("no shipped analyser in this checkout; give --workdir=RUN", str(SHIPPED))
        written, bad = analyze_files(args.workdir or str(SHIPPED), args.midi, args.out, context=args.context,
                                     batch_size=args.batch_size, temperature=args.temperature, seed=args.seed,
                                     decode=args.decode)
        print(f"wrote {len(written)} files for {len(written) // 3} songs into {args.out}")
        cli.raise_if_bad(bad, len(args.midi), "analysed")


if __name__ == "__main__":
    main()
