"""Scores of MIDI chord & downbeat analysis against exact labels, and the rule-based baselines' scores on the
same songs with the same scorer (m4mjax.chord_eval): the library under ``m4mjax.analysis_eval`` and the
analysis task's evaluation (``m4mjax.tasks``, run by ``m4mjax.evaluate``).

Sets (the chord data's labels.json groups): ``synth_test`` = held-out ('test' split) synthetic mma
arrangements, ``romantext`` = music21's RomanText analyses of Bach chorales and Monteverdi madrigals (all
held out). Each song's music (tracks < 250) is analysed exactly as ``m4mjax.analyze`` does (windows of the
run's frames, label prompts across seams, chords decoded scored by default, ``--decode``); its chord segments and downbeats go to seconds
through the song's own tempo map and are scored against labels.json: mir_eval root, thirds, majmin, mirex,
sevenths (duration-weighted over the set; an estimated X never counts as correct) and downbeat F-measure
(+-70 ms, pooled). Baselines: the 24-triad template matcher per bar and per beat (bar and beat boundaries
from the file's metre, which is what the labels' bars are) and chorder's Dechorder (per quarter note).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from m4mjax import chord_eval, labels
from m4mjax.run import io
from m4mjax.run.errors import UserError
from m4mjax.runs import TWO_STREAMS, load_run
from m4mjax.windows import Song, label_songs

SETS = {"synth_test": ("synth/mma",), "romantext": ("romantext/bach", "romantext/monteverdi")}
OFFICIAL_PROMPT, OFFICIAL_SAMPLES = 16, 8  # --decode=official: true-label prompt frames, samples averaged


def read_labels(data_dir: str) -> dict[str, Any]:
    """labels.json of a chord-data folder (m4mjax.datasets.chords): exact labels per song id."""
    path = Path(data_dir) / "labels.json"
    if not path.is_file():
        raise UserError("no labels.json: build it with `python -m m4mjax.datasets.chords --out=...`", str(data_dir))
    return json.loads(path.read_text())


def held_out_songs(data_dir: str, groups: Sequence[str], split: str = "test", max_songs: int = 0,
                   table: dict[str, Any] | None = None) -> list[tuple[str, Song, dict[str, Any]]]:
    """(song id, its music as a Song, its labels) of every ``split`` song in ``groups`` (``max_songs`` > 0:
    that many, evenly spaced over the set)."""
    from m4mjax.datasets import convert, pipeline

    table = read_labels(data_dir) if table is None else table
    try:
        src = convert.ShardSource(data_dir, split)
    except ValueError as e:
        raise UserError(str(e), str(data_dir)) from None
    idx = [i for i, sid in enumerate(src.ids) if sid in table and table[sid]["group"] in groups]
    if 0 < max_songs < len(idx):
        idx = [idx[int(round(k))] for k in np.linspace(0, len(idx) - 1, max_songs)]
    out = []
    for i in idx:
        song = src[i]
        music = pipeline.select_stream(song["notes"], "music")
        out.append((src.ids[i], Song(music, int(song["n_frames"]), pipeline.select_stream(song["notes"], "labels")),
                    table[src.ids[i]]))
    return out


def score_song(rec: dict[str, Any], segments: Sequence[tuple[int, int, str]],
               downbeats: Sequence[int] | None = None) -> dict[str, Any]:
    """Scores of one song's estimate (segments and downbeats in frames) against its labels.json record."""
    tempo_map = {"tempos": rec["tempos"]}
    out = chord_eval.score_chords([tuple(s) for s in rec["segments_s"]], labels.segments_to_seconds(segments, tempo_map))
    if downbeats is not None:
        est = labels.frames_to_seconds(np.asarray(downbeats, np.float64), tempo_map) if len(downbeats) else []
        out.update(chord_eval.score_downbeats(rec["downbeats_s"], est))
    return out


def summarize(scores: Sequence[dict[str, Any]], recs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Set-level scores (chord_eval.aggregate) plus how much music they cover and ``labels_sha1``, a fingerprint
    of the songs' labels (frames and segments, in order): two rows are on the same songs only if it is equal (the
    synthetic set is rendered on each machine, and a build elsewhere may differ)."""
    out = {k: round(v, 4) for k, v in chord_eval.aggregate(scores).items()}
    out.update(songs=len(scores), hours=round(sum(r["seconds"] for r in recs) / 3600, 3),
               labels_sha1=labels_fingerprint(recs))
    return out


def labels_fingerprint(recs: Sequence[dict[str, Any]]) -> str:
    """12 hex digits of sha1 over each labels.json record's n_frames and frame segments, in order."""
    import hashlib

    text = json.dumps([[int(r["n_frames"]), [[int(a), int(b), str(lab)] for a, b, lab in r["segments"]]] for r in recs])
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def evaluate(workdir: str, cfg: Any = None, max_batches: int = 0, sets: Sequence[str] = tuple(SETS),
             data_dir: str | None = None, max_songs: int = 0, decode: str | None = None,
             out_name: str = "eval.json", step: int | None = None, transpose: Sequence[int] | None = None
             ) -> dict[str, Any]:
    """Analyse every held-out song of ``sets`` with the run ``workdir``; writes and returns W/<out_name>.
    ``max_songs`` (or ``max_batches`` batches of songs) > 0: that many songs per set, evenly spaced. ``decode``:
    'scored' | 'greedy' | 'sample' (default: the run's ``analyze.decode``, else 'scored'), or 'official' (the
    official protocol: each song's first 16 frames of true labels as prompt, temperature 1, scores averaged over
    8 samples). ``step``: that checkpoint's weights (default: the latest). ``transpose``: semitone shifts of a
    transposition ensemble (``windows.vote``; default: the run's ``analyze.transpose``, else none;
    under 'official' none)."""
    from m4mjax.run import checkpoint, metrics

    model, cfg = load_run(workdir, streams=TWO_STREAMS, step=step)
    opts = cfg.get("analyze", {})
    bs = int(opts.get("batch_size", 8))
    data_dir = data_dir or cfg.data.dir
    table = read_labels(data_dir)
    decode = str(opts.get("decode", "scored") if decode is None else decode)
    if transpose is None:  # the official protocol is one analysis per sample: the run's ensemble is not its default
        transpose = (0,) if decode == "official" else opts.get("transpose", (0,))
    transpose = tuple(int(k) for k in transpose)
    out: dict[str, Any] = {"workdir": os.path.abspath(workdir), "step": checkpoint.latest_step(workdir) if step is None else step,
                           "task": "analysis", "data_dir": os.path.abspath(data_dir), "decode": decode,
                           "transpose": list(transpose), "sets": {}}
    for name in sets:
        songs = held_out_songs(data_dir, SETS[name], max_songs=max_songs or max_batches * bs, table=table)
        if not songs:
            print(f"{name}: no held-out songs in {data_dir}; skipped", file=sys.stderr)
            continue
        recs = [rec for *_, rec in songs]
        context = int(opts.get("context", int(cfg.data.frames) // 4))
        if decode == "official":  # the official protocol: 16 frames of true labels, temperature 1, 8 samples
            runs = [summarize([score_song(rec, r.segments, r.downbeats) for rec, r in zip(recs, label_songs(
                model, [s for _, s, _ in songs], int(cfg.data.frames), context=context, batch_size=bs,
                temperature=1.0, seed=k, decode="sample", label_prompt=OFFICIAL_PROMPT, transpose=transpose))],
                recs)
                for k in range(OFFICIAL_SAMPLES)]
            out["sets"][name] = {k: (round(float(np.mean([r[k] for r in runs])), 4) if isinstance(v, float) else v)
                                 for k, v in runs[0].items()}
        else:
            results = label_songs(model, [s for _, s, _ in songs], int(cfg.data.frames), context=context,
                                  batch_size=bs, temperature=float(opts.get("temperature", 0.0)), decode=decode,
                                  transpose=transpose)
            scores = [score_song(rec, r.segments, r.downbeats)
                      for rec, r in zip(recs, metrics.progress_bar(results, len(songs), f"{name}: songs"))]
            out["sets"][name] = summarize(scores, recs)
        print(f"{name}: " + "  ".join(f"{k} {v:.3f}" for k, v in out["sets"][name].items() if isinstance(v, float)))
    io.atomic_write(os.path.join(workdir, out_name), json.dumps(out, indent=2))
    print(f"wrote {os.path.join(workdir, out_name)}")
    return out


# ------------------------------------------------------------------------------------------- baselines
def _baseline_fns() -> dict[str, Callable[[Song, dict[str, Any]], list[tuple[int, int, str]]]]:
    return {
        "template_bar": lambda s, rec: chord_eval.template_chords(s.notes, rec["downbeats"], s.n_frames),
        "template_beat": lambda s, rec: chord_eval.template_chords(s.notes, rec["beats"], s.n_frames),
        "chorder": lambda s, rec: chord_eval.dechorder_chords(s.notes, s.n_frames),
    }


def baselines(data_dir: str, sets: Sequence[str] = tuple(SETS), max_songs: int = 0) -> dict[str, Any]:
    """Scores of the rule-based analysers on the held-out sets (same songs and scorer as ``evaluate``)."""
    from m4mjax.run import metrics

    table = read_labels(data_dir)
    out: dict[str, Any] = {"data_dir": os.path.abspath(data_dir), "sets": {}}
    for name in sets:
        songs = held_out_songs(data_dir, SETS[name], max_songs=max_songs, table=table)
        scores: dict[str, list] = {b: [] for b in _baseline_fns()}
        for _, song, rec in metrics.progress_bar(songs, len(songs), f"{name}: songs"):
            for b, fn in _baseline_fns().items():
                scores[b].append(score_song(rec, fn(song, rec)))
        recs = [rec for *_, rec in songs]
        out["sets"][name] = {b: summarize(s, recs) for b, s in scores.items()} if songs else {}
        for b, r in out["sets"][name].items():
            print(f"{name} {b}: " + "  ".join(f"{k} {v:.3f}" for k, v in r.items() if isinstance(v, float)))
    return out
