"""Scores of the conditional-generation tasks on held-out songs (issue: generation tables): the library under
``m4mjax.gen_eval`` and the generation tasks' evaluation (``m4mjax.tasks``, run by ``m4mjax.evaluate``).

Each held-out ('test' split) song's reference stream (the task's selector, m4mjax.tasks) is given to the run and
its target is sampled exactly as ``m4mjax.generate`` does (windows of the run's frames, the previous window's
output as the prompt, the run's temperature / top-p); the sample is compared with the song's own target stream.
Per task (every number a mean over songs; ``main`` names the one a table ranks by):

* melody_to_chord: mir_eval root / majmin / sevenths of the sampled chord track against the true chord track
  (both read with ``labels.track_to_chords``; durations weighted in frames) -- main: majmin;
* chord_to_melody: chord-tone ratio of the melody against the reference chords (overall and on strong beats),
  pitch-class and interval histogram distances to the true melody, notes per bar -- main: chord_tone_strong;
* drums_to_others / others_to_drums: onset F1 (exact 16th) and groove similarity against the true target,
  instruments used; others_to_drums also the drum pattern's bar-to-bar repetition -- main: onset_f1.

Baselines (``--baselines``, same songs and scorer): ``truth`` (the held-out target itself: the ceiling),
``rule`` (melody_to_chord: the best triad per bar, ``gen_metrics.harmonise``) and, with ``--lm``, ``lm_floor``:
the foundation LM sampled with no reference, its notes of the target stream kept (the unconditioned floor).
Bars are 16 frames (4/4 on the 16th grid): the chorales and the corpus songs are mostly 4/4.
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable

import jax
import numpy as np

from m4mjax import chord_eval, gen_metrics, labels
from m4mjax import tokenizer as tok
from m4mjax.run import io
from m4mjax.run.errors import UserError
from m4mjax.runs import LM_STREAMS, TWO_STREAMS, load_run
from m4mjax.windows import generate_song

MAIN = {"melody_to_chord": "majmin", "chord_to_melody": "chord_tone_strong", "drums_to_others": "onset_f1",
        "others_to_drums": "onset_f1"}
DEFAULT_SONGS = 24  # songs per evaluation unless told (sampling on this CPU: ~1-2 min per 1,000 frames)


def held_out(data_dir: str, task, max_songs: int = 0) -> list[tuple[str, np.ndarray, np.ndarray, int]]:
    """(song id, reference notes, true target notes, n_frames) of the 'test' songs that have both streams
    (``max_songs`` > 0: that many, evenly spaced)."""
    from m4mjax.datasets import convert, pipeline

    try:
        src = convert.ShardSource(data_dir, "test")
    except ValueError as e:
        raise UserError(str(e), str(data_dir)) from None
    out = []
    for i in range(len(src.ids)):
        song = src[i]
        ref = pipeline.select_stream(song["notes"], task.reference)
        tgt = pipeline.select_stream(song["notes"], task.target)
        if len(ref) and len(tgt):
            out.append((src.ids[i], tok.sort_notes(ref), tok.sort_notes(tgt), int(song["n_frames"])))
    if 0 < max_songs < len(out):
        out = [out[int(round(k))] for k in np.linspace(0, len(out) - 1, max_songs)]
    return out


def score(task_name: str, ref: np.ndarray, est: np.ndarray, truth: np.ndarray, n: int) -> dict[str, float]:
    """One song's metrics (module docstring) of the estimated target ``est`` (notes)."""
    if task_name == "melody_to_chord":
        got = chord_eval.score_chords(labels.track_to_chords(truth, None, n_frames=n),
                                      labels.track_to_chords(est, None, n_frames=n))
        return {k: float(got[k]) for k in ("root", "majmin", "sevenths")} | {"weight": float(n)}
    if task_name == "chord_to_melody":
        ctr = gen_metrics.chord_tone_ratio(est, labels.track_to_chords(ref, None, n_frames=n))
        return {"chord_tone": ctr["overall"], "chord_tone_strong": ctr["strong"],
                "pc_distance": gen_metrics.histogram_distance(gen_metrics.pitch_class_histogram(est),
                                                              gen_metrics.pitch_class_histogram(truth)),
                "interval_distance": gen_metrics.histogram_distance(gen_metrics.interval_histogram(est),
                                                                    gen_metrics.interval_histogram(truth)),
                "notes_per_bar": gen_metrics.note_density(est, n)}
    out = {"onset_f1": gen_metrics.onset_f1(est, truth), "groove": gen_metrics.groove_similarity(est, truth, n),
           "instruments": float(gen_metrics.instruments_count(est))}
    if task_name == "others_to_drums":
        out["drum_repeat_prev"] = gen_metrics.drum_pattern_repetition(est, n)["repeat_prev"]
    return out


def summarize(task_name: str, rows: list[dict[str, float]]) -> dict[str, Any]:
    """Mean over songs (NaN-skipping; chord scores weighted by song length, as mir_eval's duration weighting)."""
    out: dict[str, Any] = {"main": MAIN[task_name], "songs": len(rows)}
    keys = [k for k in (rows[0] if rows else {}) if k != "weight"]
    w = np.array([r.get("weight", 1.0) for r in rows])
    for k in keys:
        v = np.array([r[k] for r in rows], np.float64)
        ok = ~np.isnan(v)
        out[k] = round(float(np.average(v[ok], weights=w[ok])), 4) if ok.any() else float("nan")
    return out


def _run_songs(name: str, songs, fn: Callable[[int, np.ndarray, int], np.ndarray], task_name: str) -> dict:
    from m4mjax.run import metrics

    rows = [score(task_name, ref, fn(i, ref, n), truth, n)
            for i, (_, ref, truth, n) in enumerate(metrics.progress_bar(songs, len(songs), f"{name}: songs"))]
    res = summarize(task_name, rows)
    print(f"{name}: " + "  ".join(f"{k} {v:.3f}" for k, v in res.items() if isinstance(v, float)), flush=True)
    return res


def evaluate(workdir: str, cfg: Any = None, max_batches: int = 0, max_songs: int = 0, seed: int = 0,
             data_dir: str | None = None) -> dict[str, Any]:
    """Sample every held-out song's target with the run ``workdir``; writes and returns W/eval.json
    (``max_batches`` from ``m4mjax.evaluate`` counts songs here; 0 = DEFAULT_SONGS)."""
    from m4mjax import tasks
    from m4mjax.run import checkpoint

    model, cfg = load_run(workdir, streams=TWO_STREAMS)
    task = tasks.get_task(cfg.task)
    opts, frames = cfg.get("generate", {}), int(cfg.data.frames)
    data_dir = data_dir or cfg.data.dir
    songs = held_out(data_dir, task, max_songs or max_batches or DEFAULT_SONGS)
    if not songs:
        raise UserError(f"no held-out song has both the {task.reference!r} and {task.target!r} streams",
                            str(data_dir))
    rng = jax.random.key(seed)

    def sample(i: int, ref: np.ndarray, n: int) -> np.ndarray:
        toks = generate_song(model, ref, n, frames, context=int(opts.get("context", frames // 4)),
                             num_samples=1, temperature=float(opts.get("temperature", 1.0)),
                             top_p=float(opts.get("top_p", 1.0)), rng=jax.random.fold_in(rng, i))[0]
        notes = tok.tokens_to_notes(toks)
        return notes[notes[:, tok.FRAME] < n]

    out = {"workdir": os.path.abspath(workdir), "step": checkpoint.latest_step(workdir), "task": task.name,
           "link": cfg.link.kind, "train": cfg.link.train, "data_dir": os.path.abspath(data_dir), "seed": seed,
           "test": _run_songs(task.name, songs, sample, task.name)}
    io.atomic_write(os.path.join(workdir, "eval.json"), json.dumps(out, indent=2))
    print(f"wrote {os.path.join(workdir, 'eval.json')}")
    return out


def lm_floor_sampler(lm_workdir: str, task, seed: int = 0) -> Callable[[int, np.ndarray, int], np.ndarray]:
    """The unconditioned floor: the foundation LM samples ``n`` frames from nothing (its own run settings,
    windows continued from the previous one's last quarter); only its notes of the task's target stream count."""
    from m4mjax import sampling
    from m4mjax.datasets import pipeline

    model, cfg = load_run(lm_workdir, streams=LM_STREAMS)
    frames, L = int(cfg.data.frames), int(cfg.model.max_frame_tokens)
    context = frames // 4

    def fn(i: int, ref: np.ndarray, n: int) -> np.ndarray:
        key = jax.random.fold_in(jax.random.key(seed), i)
        out = np.zeros((0, L), np.int32)
        while len(out) < n:  # windows of the LM's frames, each continuing the last `context` frames
            prompt = out[-context:] if len(out) else out
            gen = np.asarray(sampling.generate(model, prompt[None], frames - len(prompt),
                                               jax.random.fold_in(key, len(out))))[0]
            out = np.concatenate([out, gen[len(prompt):]])
        notes = tok.tokens_to_notes(out[:n])
        return tok.sort_notes(pipeline.select_stream(notes, task.target))

    return fn


def baselines(task_name: str, data_dir: str, max_songs: int = 0, lm_workdir: str = "", seed: int = 0) -> dict:
    """``truth``, ``rule`` (melody_to_chord) and ``lm_floor`` (with ``lm_workdir``) on the held-out songs."""
    from m4mjax import tasks

    task = tasks.get_task(task_name)
    if task_name not in MAIN:
        raise UserError(f"not a generation task; one of {sorted(MAIN)}", f"--task={task_name}")
    songs = held_out(data_dir, task, max_songs or DEFAULT_SONGS)
    out: dict[str, Any] = {"task": task_name, "data_dir": os.path.abspath(data_dir), "songs": len(songs)}
    out["truth"] = _run_songs("truth", songs, lambda i, ref, n: songs[i][2], task_name)
    if task_name == "melody_to_chord":
        def rule(i: int, ref: np.ndarray, n: int) -> np.ndarray:
            return labels.chord_track(gen_metrics.harmonise(ref, n), n, list(range(0, n, 16)))
        out["rule"] = _run_songs("rule", songs, rule, task_name)
    if lm_workdir:
        out["lm_floor"] = _run_songs("lm_floor", songs, lm_floor_sampler(lm_workdir, task, seed), task_name)
    return out
