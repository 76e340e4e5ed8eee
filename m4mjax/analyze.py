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

import os
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import symusic

from m4mjax import labels
from m4mjax import tokenizer as tok
from m4mjax.run import cli, io
from m4mjax.runs import TWO_STREAMS, load_run
from m4mjax.windows import BEAT_NAME, CHORD_NAME, Result, Song, label_songs

SHIPPED = Path(__file__).resolve().parents[1] / "pretrained" / "analysis"  # the analyser used without --workdir


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
                  progress: bool = True, decode: str | None = None, transpose: Sequence[int] | None = None
                  ) -> tuple[list[str], list[tuple[str, str]]]:
    """Analyse MIDI files into ``out``; returns (files written, [(bad file, reason)]). Bad files are reported
    on stderr as they are found and skipped; every good file is written. ``transpose``: semitone shifts of a
    transposition ensemble (``windows.vote``; default: the run's ``analyze.transpose``, else none)."""
    from m4mjax.run import metrics

    model, cfg = load_run(workdir, streams=TWO_STREAMS)
    opts = cfg.get("analyze", {})
    frames = int(cfg.data.frames)
    context = int(opts.get("context", frames // 4) if context is None else context)
    batch_size = int(opts.get("batch_size", 8) if batch_size is None else batch_size)
    temperature = float(opts.get("temperature", 0.0) if temperature is None else temperature)
    decode = str(opts.get("decode", "scored") if decode is None else decode)
    transpose = tuple(int(k) for k in (opts.get("transpose", (0,)) if transpose is None else transpose))
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
                          temperature=temperature, seed=seed, decode=decode, transpose=transpose)
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
    ap.add_argument("--transpose", default=None, help="comma list of semitone shifts, e.g. 0,4,-4,2,-3: analyse "
                    "each song once per shift and vote per frame (slower, steadier; default: the run's)")
    ap.add_argument("--seed", type=int, default=0)
    with cli.report_errors("m4mjax.analyze"):
        args = ap.parse_args(argv)
        if not args.workdir and not (SHIPPED / "config.json").is_file():
            raise cli.UserError("no shipped analyser in this checkout; give --workdir=RUN", str(SHIPPED))
        written, bad = analyze_files(args.workdir or str(SHIPPED), args.midi, args.out, context=args.context,
                                     batch_size=args.batch_size, temperature=args.temperature, seed=args.seed,
                                     decode=args.decode, transpose=None if args.transpose is None
                                     else cli.int_list(args.transpose, "--transpose"))
        print(f"wrote {len(written)} files for {len(written) // 3} songs into {args.out}")
        cli.raise_if_bad(bad, len(args.midi), "analysed")


if __name__ == "__main__":
    main()
