"""Songs of any length through a two-stream (reference -> target) run, one window of the run's ``data.frames`` at
a time: the library under ``m4mjax.analyze``, ``m4mjax.generate`` and their evaluations.

A song is cut into windows that overlap by ``context`` frames (``window_starts``): each window after the first
gets the target already decided for its first frames as the prompt, so the output carries across window seams,
and the last window ends at the song's end. ``sample_target`` is the one model call; ``label_songs`` labels many
songs (chords and downbeats, batched by length) and ``generate_song`` samples one song's target several times.
"""
from __future__ import annotations

import dataclasses
from typing import Iterator, Sequence

import jax
import numpy as np
from flax import nnx

from m4mjax import labels
from m4mjax import tokenizer as tok
from m4mjax.run.errors import UserError

CHORD_NAME, BEAT_NAME = "m4m chords", "m4m beats"  # names of the tracks analyze adds (skipped when re-read)


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


DECODES = ("scored", "greedy", "sample")  # chord rows scored whole (chord_decode) | argmax per token | sampled
OPEN_MODES = ("joint", "greedy")  # scored: a chord opens when it beats "no chord" | when p(open) >= 0.5
SCORED_BASSES = 4  # scored: candidate rows under the 4 likeliest bass pitch classes (12 = every candidate)


def sample_target(model: nnx.Module, reference: np.ndarray, prompt: np.ndarray | None, n_frames: int,
                  rng: jax.Array, temperature: float, top_p: float = 1.0, scale: float | None = None, *,
                  decode: str = "sample", open_mode: str = "joint") -> np.ndarray:
    """Target tokens [B, F0 + n_frames, L] for reference [B, F, L] after prompt [B, F0, L] (the one model call).
    ``decode``: 'sample' (``temperature``, ``top_p``), 'greedy' (argmax) or 'scored' (chord rows chosen whole,
    ``open_mode``); ``scale`` multiplies FA_cross adapter outputs (None: the run's ``link.adapter_scale``)."""
    from m4mjax import linked

    return np.asarray(linked.generate(model, reference, rng, n_frames=n_frames, prompt=prompt,
                                      temperature=0.0 if decode == "greedy" else temperature, top_p=top_p,
                                      scale=scale, scored=(open_mode, SCORED_BASSES) if decode == "scored" else None))


def window_starts(n_frames: int, frames: int, context: int) -> list[int]:
    """Start frames of the windows covering [0, n_frames): stride ``frames - context``, the last one ending at
    the song's end (so it may overlap its predecessor by more than ``context``)."""
    starts = [0]
    while starts[-1] + frames < n_frames:
        starts.append(min(starts[-1] + frames - context, n_frames - frames))
    return starts


def label_songs(model: nnx.Module, songs: Sequence[Song], frames: int, *, context: int = 0, batch_size: int = 8,
                temperature: float = 0.0, seed: int = 0, decode: str = "scored", open_mode: str = "joint",
                label_prompt: int = 0, transpose: Sequence[int] = (0,)) -> Iterator[Result]:
    """Analyse ``songs`` (one Result per song, yielded in the given order). Songs are batched by length, so a
    batch's short songs do not wait idle through its longest one's windows. ``decode``: 'scored' (chords chosen
    whole, ``m4mjax.chord_decode``; beats greedy), 'greedy' (argmax token by token) or 'sample' (``temperature``).
    ``label_prompt`` > 0: each song's first that many frames of TRUE labels (``Song.labels``) are given as the
    first window's target prompt and kept (the official evaluation protocol). ``transpose``: the songs are analysed
    once per shift (semitones) and each song's analyses are combined by ``vote`` (a transposition ensemble: the
    model was trained on every key, and its mistakes differ from key to key)."""
    if tuple(transpose) != (0,):
        from m4mjax.datasets.pipeline import shift_song

        if not transpose or len(set(transpose)) != len(transpose):
            raise UserError("must be distinct semitone shifts", f"transpose={list(transpose)}")
        runs = [label_songs(model, [dataclasses.replace(s, notes=shift_song(s.notes, k), labels=None if s.labels is None
                                                        else shift_song(s.labels, k)) for s in songs],
                            frames, context=context, batch_size=batch_size, temperature=temperature, seed=seed,
                            decode=decode, open_mode=open_mode, label_prompt=label_prompt) for k in transpose]
        for song, results in zip(songs, zip(*runs)):
            yield vote(results, transpose, song.n_frames)
        return
    if not 0 <= context < frames:
        raise UserError(f"must be in [0, {frames}) (the run's window is {frames} frames)", f"--context={context}")
    if decode not in DECODES:
        raise UserError(f"must be one of {', '.join(DECODES)}", f"--decode={decode}")
    if open_mode not in OPEN_MODES:
        raise UserError(f"must be one of {', '.join(OPEN_MODES)}", f"--open={open_mode}")
    if not 0 <= label_prompt < frames or (label_prompt and any(s.labels is None for s in songs)):
        raise UserError(f"must be in [0, {frames}) and needs songs with true labels", f"label_prompt={label_prompt}")
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
            gen = sample_target(model, ref, prompt if given else None, frames - given,
                                jax.random.fold_in(rng, g * 100003 + r), temperature, decode=decode, open_mode=open_mode)
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


def frame_labels(segments: Sequence[tuple[int, int, str]], n_frames: int) -> list[str]:
    """One label per frame of [0, n_frames) from (start, end, label) segments ('N' where none)."""
    out = ["N"] * n_frames
    for s, e, lab in segments:
        out[max(int(s), 0):min(int(e), n_frames)] = [lab] * (min(int(e), n_frames) - max(int(s), 0))
    return out


def vote(results: Sequence[Result], shifts: Sequence[int], n_frames: int) -> Result:
    """One analysis from analyses of the same song transposed by ``shifts`` semitones: each frame takes the chord
    most of them give, moved back by its shift (a tie goes to the earliest shift), and the downbeats are the first
    shift's; the label notes are re-rendered from the result (quarter-note beats)."""
    per = [[labels.transpose_label(lab, -k) for lab in frame_labels(r.segments, n_frames)]
           for r, k in zip(results, shifts)]
    voted = []
    for f in range(n_frames):
        column = [p[f] for p in per]
        voted.append(max(column, key=lambda lab: (column.count(lab), -column.index(lab))))
    segments = list(_runs(voted))
    downbeats = np.asarray(results[0].downbeats, np.int64)  # metre does not move with the key: the first shift's
    # (a frame-wise majority drops the downbeats of a bar whose phase the analyses disagree on: RomanText F 0.88 -> 0.83)
    chords = labels.chord_track([x for x in segments if x[2] not in ("N", "X")], n_frames, downbeats)
    return Result(segments, downbeats, np.concatenate([chords, labels.beat_track(downbeats, None, n_frames)]))


def _runs(seq: Sequence[str]):
    """(start, end, value) per run of equal consecutive values."""
    import itertools

    start = 0
    for value, group in itertools.groupby(seq):
        end = start + sum(1 for _ in group)
        yield start, end, value
        start = end


def decode_tokens(target_tokens: np.ndarray, n_frames: int) -> Result:
    """Label tokens [n_frames, L] -> chord segments (frames, 'N' gaps), downbeat frames and the label notes."""
    notes = tok.tokens_to_notes(target_tokens)
    chord = notes[notes[:, tok.INSTRUMENT] != tok.DRUM]
    chord[:, tok.TRACK] = labels.CHORD_TRACK
    beat = notes[notes[:, tok.INSTRUMENT] == tok.DRUM]
    beat[:, tok.TRACK] = labels.BEAT_TRACK
    return Result(labels.track_to_chords(chord, None, n_frames=n_frames), labels.track_to_downbeats(beat, None),
                  np.concatenate([chord, beat]))


def generate_song(model, ref: np.ndarray, n_frames: int, frames: int, *, context: int, num_samples: int,
                  temperature: float, top_p: float, rng: jax.Array, scale: float | None = None) -> np.ndarray:
    """Target tokens [num_samples, n_frames, L] for one song's reference notes, window by window (stitched);
    ``scale`` multiplies FA_cross adapter outputs (None: the run's ``link.adapter_scale``)."""
    if not 0 <= context < frames:
        raise UserError(f"must be in [0, {frames}) (the run's window is {frames} frames)", f"--context={context}")
    L = int(model.cfg.max_frame_tokens)
    rows = dict(song_frames=n_frames, row_format=model.cfg.get("row_format", "eos"))
    out = np.full((num_samples, max(n_frames, frames), L), tok.PAD, np.int32)
    known = 0
    for r, st in enumerate(window_starts(n_frames, frames, context)):
        window = tok.notes_to_tokens(ref, st, frames, L, **rows)
        reference = np.broadcast_to(window, (num_samples, frames, L))
        f0 = min(context, known - st) if r else 0  # frames of this window already sampled (prompt)
        prompt = out[:, st:st + f0] if f0 else None
        gen = sample_target(model, reference, prompt, frames - f0, jax.random.fold_in(rng, r), temperature, top_p,
                            scale)
        out[:, st + f0:st + frames] = gen[:, f0:frames]
        known = st + frames
    return out[:, :n_frames]
