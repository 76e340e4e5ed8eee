"""Synthetic chord-labelled band arrangements: generated chord charts rendered by Debian's `mma` (group synth/mma).

A chart (key, progression, meter, tempo, groove, humanised timing) is drawn deterministically from (seed,
index); `mma` (GPL-2+, so its MIDI is generated at build time, never committed) turns it into a full band
arrangement, drums included. The chord labels are exact: they come from the chart, on mma's quarter-note beat
grid (mma writes 192 ticks per quarter; a bar holds the groove's ``Time`` quarter beats).
"""
from __future__ import annotations

import functools
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from m4mjax import labels
from m4mjax import tokenizer as tok
from m4mjax.datasets.chord_songs import make_song

MMA_LIB = Path("/usr/share/mma/lib/stdlib")
NAMES = labels.NAMES  # spellings mma, mir_eval and the chord-track decoder share
# Harte quality -> (mma chord-type suffix, intervals above the root); every entry exists in mma's chordtable
QUALITIES = {
    "maj": ("", (0, 4, 7)), "min": ("m", (0, 3, 7)), "dim": ("mb5", (0, 3, 6)), "aug": ("aug", (0, 4, 8)),
    "7": ("7", (0, 4, 7, 10)), "maj7": ("M7", (0, 4, 7, 11)), "min7": ("m7", (0, 3, 7, 10)),
    "dim7": ("dim7", (0, 3, 6, 9)), "hdim7": ("m7b5", (0, 3, 6, 10)), "minmaj7": ("mM7", (0, 3, 7, 11)),
    "maj6": ("6", (0, 4, 7, 9)), "min6": ("m6", (0, 3, 7, 9)), "sus4": ("sus4", (0, 5, 7)),
    "sus2": ("sus2", (0, 2, 7)), "9": ("9", (0, 4, 7, 10, 14)), "maj9": ("M9", (0, 4, 7, 11, 14)),
    "min9": ("m9", (0, 3, 7, 10, 14)), "sus4(b7)": ("7sus", (0, 5, 7, 10)),
}
DEGREE_NAMES = ["1", "b2", "2", "b3", "3", "4", "b5", "5", "b6", "6", "b7", "7"]
_SKIP_GROOVES = re.compile("intro|end|fill|metronome|break|count|tag|sync", re.I)
_NO_INVERSION = {"sus2", "sus4", "sus4(b7)", "dim7", "aug", "maj6", "min6"}  # notes name another chord inverted
TICKS_PER_QUARTER = 192  # mma's MIDI resolution
_METERS = {(4, "4/4"), (3, "3/4"), (2, "6/8"), (6, "6/8")}  # (quarter beats per bar, time signature) kept


def harte(root: int, quality: str, bass: int | None = None) -> str:
    """Harte label (mir_eval syntax) of a chord; ``bass`` is the inversion's interval in semitones above the root."""
    label = f"{NAMES[root % 12]}:{quality}"
    return label + (f"/{DEGREE_NAMES[bass % 12]}" if bass else "")


def mma_name(root: int, quality: str, bass: int | None = None) -> str:
    """mma chord name of a chord (slash chords name the bass note, which must be a chord tone)."""
    name = NAMES[root % 12] + QUALITIES[quality][0]
    return name + (f"/{NAMES[(root + bass) % 12]}" if bass else "")


@functools.lru_cache(maxsize=None)
def grooves(lib: str = str(MMA_LIB)) -> tuple[tuple[str, int, str], ...]:
    """(groove, quarter beats per bar, time signature) of mma's stdlib grooves fit for whole songs, sorted."""
    out = []
    for f in sorted(Path(lib).glob("*.mma")):
        time, sig = 4, "4/4"
        for line in f.read_text(errors="replace").splitlines():
            w = line.split("//")[0].split()
            if not w:
                continue
            k = w[0].lower()
            if k == "time" and len(w) > 1 and w[1].isdigit():
                time = int(w[1])
            elif k == "timesig" and len(w) > 1:
                sig = "/".join(" ".join(w[1:]).replace("/", " ").split()[:2])
            elif k == "defgroove" and len(w) > 1 and not _SKIP_GROOVES.search(w[1]) and (time, sig) in _METERS:
                out.append((w[1], time, sig))
    if not out:
        raise ValueError(f"{lib}: no mma grooves found (is the Debian package `mma` installed?)")
    return tuple(sorted(set(out)))


# ------------------------------------------------------------------------------------------ progressions
# scale degrees (semitones above the tonic) -> (triad quality, seventh quality), per mode
_MAJOR = {0: ("maj", "maj7"), 2: ("min", "min7"), 4: ("min", "min7"), 5: ("maj", "maj7"), 7: ("maj", "7"),
          9: ("min", "min7"), 11: ("dim", "hdim7")}
_MINOR = {0: ("min", "min7"), 2: ("dim", "hdim7"), 3: ("maj", "maj7"), 5: ("min", "min7"), 7: ("maj", "7"),
          8: ("maj", "maj7"), 10: ("maj", "7"), 11: ("dim", "dim7")}
# functional Markov chain over degrees: tonic -> anything, predominant -> dominant, dominant -> tonic
_NEXT = {0: [5, 7, 9, 2, 4, 11], 2: [7, 11, 5], 4: [9, 5], 5: [7, 0, 2, 11], 7: [0, 9, 5], 9: [2, 5, 4, 7],
         11: [0], 3: [5, 8, 10], 8: [2, 7, 5], 10: [3, 0]}
_TEMPLATES = {  # common loops, degrees in semitones (major unless noted)
    "pop": [[0, 7, 9, 5], [9, 5, 0, 7], [0, 9, 5, 7], [0, 5, 9, 7], [0, 5, 7, 5]],
    "jazz": [[2, 7, 0, 0], [9, 2, 7, 0], [0, 9, 2, 7], [4, 9, 2, 7]],
    "classical": [[0, 5, 7, 0], [0, 7, 9, 4, 5, 0, 5, 7], [0, 2, 7, 0], [0, 5, 11, 0]],
    "blues": [[0, 0, 0, 0, 5, 5, 0, 0, 7, 5, 0, 7]],
}


def random_chart(rng: np.random.Generator, beats_per_bar: int) -> dict[str, Any]:
    """A chord chart: key, style and bars of (beat, root pc, Harte quality, bass interval or None)."""
    key, minor = int(rng.integers(12)), bool(rng.random() < 0.3)
    style = str(rng.choice(["pop", "jazz", "classical", "blues"], p=[0.35, 0.25, 0.25, 0.15]))
    if style == "blues":
        minor = False
    scale = _MINOR if minor else _MAJOR
    n_bars = int(rng.choice([8, 12, 16])) if style != "blues" else 12
    if style != "blues" and rng.random() < 0.5 and not minor:
        loop = _TEMPLATES[style][int(rng.integers(len(_TEMPLATES[style])))]
        degrees = [loop[i % len(loop)] for i in range(n_bars * 2)]
    elif style == "blues":
        degrees = list(_TEMPLATES["blues"][0])
    else:
        degrees, d = [0], 0
        for _ in range(n_bars * 2 - 1):
            options = [x for x in _NEXT[d] if x in scale] or [0]
            d = int(options[int(rng.integers(len(options)))])
            degrees.append(d)
    p7 = {"pop": 0.15, "jazz": 0.8, "classical": 0.25, "blues": 1.0}[style]
    bars, di = [], 0
    for _ in range(n_bars):
        split = beats_per_bar in (4, 6) and style != "blues" and rng.random() < 0.3
        starts = [0, beats_per_bar // 2] if split else [0]
        bar = []
        for beat in starts:
            deg = degrees[di % len(degrees)]
            di += 1
            triad, seventh = scale.get(deg, ("maj", "7"))
            quality = "7" if style == "blues" else (seventh if rng.random() < p7 else triad)
            r = rng.random()
            if deg == 7 and r < 0.12:
                quality = str(rng.choice(["sus4", "sus4(b7)", "9", "aug"]))
            elif quality in ("maj", "min") and r < 0.12:
                colour = {"maj": ["sus2", "sus4", "maj6", "maj9"], "min": ["min6", "min9", "sus2"]}[quality]
                quality = str(rng.choice(colour if style == "jazz" else colour[:3]))
            elif quality == "dim" and r < 0.3:
                quality = "dim7"
            elif quality == "min7" and style == "jazz" and r < 0.1:
                quality = "minmaj7"
            bass = None
            if rng.random() < (0.3 if style == "classical" else 0.1) and quality not in _NO_INVERSION:
                tones = [i % 12 for i in QUALITIES[quality][1][1:4]]
                bass = int(tones[int(rng.integers(len(tones)))])
            bar.append((beat, (key + deg) % 12, quality, bass))
        bars.append(bar)
    return {"key": f"{NAMES[key]}:{'min' if minor else 'maj'}", "style": style, "bars": bars}


def piece_params(seed: int, index: int, lib: str = str(MMA_LIB)) -> dict[str, Any]:
    """Every random choice of synthetic piece ``index`` (deterministic in (seed, index))."""
    rng = np.random.default_rng([seed, index])
    table = grooves(lib)
    groove, time, sig = table[int(rng.integers(len(table)))]
    alt = [g for g in table if g[1] == time and g[0] != groove and g[0].lower().startswith(groove.lower()[:4])]
    chart = random_chart(rng, time)
    tempo = int(rng.integers(70, 170))
    return {"groove": groove, "beats_per_bar": time, "timesig": sig, "tempo": tempo, **chart,
            "groove2": alt[int(rng.integers(len(alt)))][0] if alt and rng.random() < 0.3 else None,
            "tempo2": int(tempo * rng.uniform(0.8, 1.2)) if rng.random() < 0.2 else None,
            "rtime": int(rng.choice([0, 0, 4, 8, 16])), "rvolume": int(rng.choice([0, 10, 20])),
            "mma_seed": int(rng.integers(1 << 31))}  # mma's own randomness (grooves' RTime, RSkip...) seeded too


def chart_text(p: dict[str, Any]) -> str:
    """The mma source of a piece: groove, tempo, humanisation, then one line per bar, one token per beat."""
    def humanise() -> list[str]:
        return ([f"AllTracks RTime {p['rtime']}"] if p["rtime"] else []) + (
            [f"AllTracks RVolume {p['rvolume']}"] if p["rvolume"] else [])

    lines = [f"// m4mjax synthetic piece: key {p['key']}, style {p['style']}", f"RndSeed {p.get('mma_seed', 0)}",
             f"Tempo {p['tempo']}",
             f"Groove {p['groove']}"] + humanise()
    half = len(p["bars"]) // 2
    for i, bar in enumerate(p["bars"]):
        if i == half and p.get("groove2"):
            lines += [f"Groove {p['groove2']}"] + humanise()
        if i == half and p.get("tempo2"):
            lines.append(f"Tempo {p['tempo2']}")
        toks = ["/"] * p["beats_per_bar"]
        for beat, root, quality, bass in bar:
            toks[beat] = mma_name(root, quality, bass)
        lines.append(f"{i + 1} " + " ".join(toks))
    return "\n".join(lines) + "\n"


def chart_segments(p: dict[str, Any]) -> list[tuple[int, int, str]]:
    """Exact (start_frame, end_frame, Harte label) of a piece's chart, merged where a chord repeats."""
    fpb = 4  # frames per mma beat (a quarter note)
    bar_frames = p["beats_per_bar"] * fpb
    segs: list[tuple[int, int, str]] = []
    for i, bar in enumerate(p["bars"]):
        for j, (beat, root, quality, bass) in enumerate(bar):
            start = i * bar_frames + beat * fpb
            end = i * bar_frames + (bar[j + 1][0] * fpb if j + 1 < len(bar) else bar_frames)
            label = harte(root, quality, bass)
            if segs and segs[-1][2] == label and segs[-1][1] == start:
                segs[-1] = (segs[-1][0], end, label)
            else:
                segs.append((start, end, label))
    return segs


def render(p: dict[str, Any], midi_path: str | Path) -> None:
    """Run mma on the piece's chart, writing ``midi_path`` (ValueError with mma's message on failure)."""
    exe = shutil.which("mma")
    if exe is None:
        raise ValueError("the `mma` program is not installed (Debian package mma; `make install` adds it)")
    midi_path = Path(midi_path)
    midi_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "chart.mma"
        src.write_text(chart_text(p))
        tmp = Path(d) / "out.mid"
        r = subprocess.run([exe, src.name, "-f", tmp.name], cwd=d, capture_output=True, text=True, timeout=120)
        if r.returncode != 0 or not tmp.exists():
            msg = (r.stderr.strip() or r.stdout.strip()).splitlines()[-1:] or ["no output"]
            raise ValueError(f"mma failed on groove {p['groove']}: {msg[0]}")
        shutil.move(str(tmp), midi_path)


# ------------------------------------------------------------------------------------------------- songs
def synth_beats(beats_per_bar: int, n_bars: int) -> tuple[list[int], list[int]]:
    """(downbeat frames, beat frames) of an mma piece: bars of ``beats_per_bar`` quarters; compound 6/8 grooves
    (mma's Time 6 = two dotted halves of 3 quarters) beat every 3 quarters."""
    bar = 4 * beats_per_bar
    step = 12 if beats_per_bar == 6 else 4
    downs = [b * bar for b in range(n_bars)]
    return downs, [d + k for d in downs for k in range(0, bar, step)]


def load_synth(item: dict[str, Any]) -> list[dict[str, Any]]:
    """Render generated chart ``index`` of ``seed`` with mma and label it exactly from the chart."""
    return synth_song(item, piece_params(item["seed"], item["index"]))


def synth_song(item: dict[str, Any], p: dict[str, Any]) -> list[dict[str, Any]]:
    """Render a chart (``piece_params``' dict) with mma into OUT/synth_midi; its song."""
    midi = Path(item["out"]) / "synth_midi" / f"{item['index']:05d}.mid"
    render(p, midi)
    score = tok.load_midi(midi)
    music, n = tok.midi_to_notes(score, name=item["key"])
    segments = chart_segments(p)
    end, bar = segments[-1][1], 4 * p["beats_per_bar"]
    if not end - bar <= n <= end + 2 * bar:  # the groove's Time was misread: the labels would not match
        raise ValueError(f"{item['key']}: mma piece lasts {n} frames, the chart {end} (groove {p['groove']})")
    downs, beats = synth_beats(p["beats_per_bar"], len(p["bars"]))
    return make_song(item, music, n, segments, downs, beats, tok.timing_of(score)["tempos"],
                     **{k: p[k] for k in ("groove", "groove2", "key", "style", "tempo", "tempo2", "timesig",
                                          "beats_per_bar", "rtime", "rvolume")})
