"""Chord-labelled data from installable packages, as a prepare-style folder with a recorded split: the library
under ``python -m m4mjax.datasets.chords`` (``build``).

Each song's notes = its music (tracks < 250) + the chord track (``labels.CHORD_TRACK``) + the beat track
(``labels.BEAT_TRACK``); read it with ``data.name='prepared'``, ``data.dir=OUT``, ``data.reference='notrack:...'``
style selectors. ``OUT/labels.json`` holds the exact labels per song id (Harte segments in frames and seconds,
downbeats, beats, tempo map, group, split) so evaluation scores against them, not against the rendered track.
Groups (docs/DATA.md): ``synth/mma`` (generated charts rendered by mma, labels exact; split = piece index mod
10), ``romantext/bach`` and ``romantext/monteverdi`` (music21's human RomanText analyses; all 'test': the real-
music evaluation set), ``auto/corpus`` (Debian game MIDI + Bach chorales labelled by chorder's Dechorder; split =
the embedded corpus's recorded split, so songs held out from the LM stay held out). Resumable like prepare.
"""
from __future__ import annotations

import functools
import re
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from m4mjax import labels
from m4mjax import tokenizer as tok
from m4mjax.datasets import chords_synth, convert, records
from m4mjax.datasets.chord_songs import label_path, make_song

GROUPS = {"synth": ("synth/mma",), "romantext": ("romantext/bach", "romantext/monteverdi"), "auto": ("auto/corpus",)}
# Harte quality of a pitch-class set (intervals above the root); anything else is labelled 'X'
_HARTE = {frozenset(iv): q for q, (_, iv) in chords_synth.QUALITIES.items()}
_HARTE.update({frozenset(i % 12 for i in iv): q for q, (_, iv) in chords_synth.QUALITIES.items()})
_HARTE.update({frozenset((0, 4, 8, 10)): "aug(b7)", frozenset((0, 4, 8, 11)): "aug(7)", frozenset((0, 7)): "5"})
_CHORDER = {"M": "maj", "m": "min", "o": "dim", "+": "aug", "7": "7", "M7": "maj7", "m7": "min7", "o7": "dim7",
            "/o7": "hdim7", "sus2": "sus2", "sus4": "sus4"}


def harte_of_pcs(root: int, pcs: Sequence[int], bass: int | None) -> str:
    """Harte label of a root, its pitch classes and bass; 'X' when the set is no mir_eval-nameable quality."""
    quality = _HARTE.get(frozenset((int(p) - root) % 12 for p in pcs))
    if quality is None:
        return "X"
    return chords_synth.harte(root, quality, None if bass is None else (int(bass) - root) % 12)


def load_item(item: dict[str, Any]) -> list[dict[str, Any]]:
    """Convert one item (kind synth | romantext | auto_midi | auto_music21) to its song (ValueError if bad)."""
    kind = item["kind"]
    if kind == "synth":
        return chords_synth.load_synth(item)
    if kind == "romantext":
        return load_romantext(item)
    if kind in ("auto_midi", "auto_music21"):
        return load_auto(item)
    raise ValueError(f"{item.get('key')}: unknown item kind {kind!r}")


# ----------------------------------------------------------------------------------------------- music21
def measure_grid(score: Any) -> tuple[dict[int, float], list[float], list[float], float]:
    """(measure number -> offset, downbeats, beats, end) in quarters from a music21 score's first part.

    A short first measure is a pickup: no downbeat, its beats counted back from its end."""
    from music21 import meter

    part = score.parts[0] if score.parts else score
    offsets: dict[int, float] = {}
    downs, beats, end = [], [], 0.0
    for i, m in enumerate(part.getElementsByClass("Measure")):
        off, dur = float(m.offset), float(m.duration.quarterLength)
        offsets.setdefault(int(m.number), off)
        ts = m.getContextByClass(meter.TimeSignature)
        bar = float(ts.barDuration.quarterLength) if ts else 4.0
        step = float(ts.beatDuration.quarterLength) if ts else 1.0
        if i == 0 and dur < bar - 1e-6:
            beats += [off + dur - k * step for k in range(1, int(dur / step + 1e-6) + 1)]
        else:
            downs.append(off)
            beats += [off + k * step for k in range(int(np.ceil(dur / step - 1e-6)))]
        end = max(end, off + dur)
    return offsets, downs, sorted(beats), end


def score_tempos(score: Any) -> list[tuple[int, float]]:
    """(frame, qpm) tempo changes of a music21 score (music21's default 120 qpm when it has none)."""
    out = []
    for start, _, mm in score.metronomeMarkBoundaries():
        qpm = mm.getQuarterBPM() if mm is not None else None
        out.append((int(round(float(start) * tok.FRAMES_PER_QUARTER)), float(qpm or 120.0)))
    return out or [(0, 120.0)]


def score_music(score: Any, name: str) -> tuple[np.ndarray, int]:
    """A music21 score's notes on the frame grid (any chord-symbol track dropped: labels come from elsewhere)."""
    from music21 import harmony

    from m4mjax.datasets import sources

    for cs in list(score.recurse().getElementsByClass(harmony.ChordSymbol)):
        cs.activeSite.remove(cs)  # stray letters some editions carry; the labels come from elsewhere
    notes, n, _ = sources.score_to_notes(score, name)
    return notes, n


def roman_to_harte(rn: Any) -> str:
    """Harte label of a music21 RomanNumeral from its realised pitches; 'X' if its quality is not nameable."""
    try:
        root, bass = rn.root().pitchClass, rn.bass().pitchClass
        pcs = {p.pitchClass for p in rn.pitches}
    except Exception:
        return "X"
    return harte_of_pcs(root, pcs, bass if bass != root else None)


def romantext_segments(analysis: Any, measure_offsets: dict[int, float], end: float
                       ) -> tuple[list[tuple[int, int, str]], int]:
    """(start_frame, end_frame, Harte) of a RomanText analysis aligned to a score by measure number and offset
    within the measure; also the count of numerals whose measure the score lacks (dropped)."""
    from music21 import roman

    starts: dict[float, str] = {}
    missing = 0
    for rn in analysis.recurse().getElementsByClass(roman.RomanNumeral):
        m = rn.getContextByClass("Measure")
        if m is None or int(m.number) not in measure_offsets:
            missing += 1
            continue
        starts[measure_offsets[int(m.number)] + float(rn.getOffsetBySite(m))] = roman_to_harte(rn)
    times = sorted(t for t in starts if t < end)
    fpq = tok.FRAMES_PER_QUARTER
    segs = [(int(round(a * fpq)), int(round(b * fpq)), starts[a]) for a, b in zip(times, times[1:] + [end])]
    return [s for s in segs if s[1] > s[0]], missing


def load_romantext(item: dict[str, Any]) -> list[dict[str, Any]]:
    """A music21 score paired with its human RomanText analysis -> song with exact (human) labels."""
    import music21

    try:
        score = music21.converter.parse(item["score"], forceSource=True)
        analysis = music21.converter.parse(item["analysis"], format="romantext", forceSource=True)
    except Exception as e:
        raise ValueError(f"{item['key']}: music21 cannot parse ({type(e).__name__}: {e})") from None
    return romantext_song(item, score, analysis)


def romantext_song(item: dict[str, Any], score: Any, analysis: Any) -> list[dict[str, Any]]:
    """The song of a parsed (score, RomanText analysis) pair (see load_romantext)."""
    music, n = score_music(score, item["key"])
    offsets, downs, beats, end = measure_grid(score)
    segments, missing = romantext_segments(analysis, offsets, end)
    if not segments:
        raise ValueError(f"{item['key']}: no Roman numeral aligned to the score")
    fpq = tok.FRAMES_PER_QUARTER
    return make_song(item, music, n, segments, [round(d * fpq) for d in downs], [round(b * fpq) for b in beats],
                     score_tempos(score), source="human RomanText analysis (music21 corpus)",
                     unaligned_numerals=missing, n_x=sum(s[2] == "X" for s in segments))


# --------------------------------------------------------------------------------------------- auto/corpus
def chorder_segments(music: np.ndarray, n_frames: int) -> list[tuple[int, int, str]]:
    """Per-beat chords of chorder's Dechorder on the non-drum notes (one quarter-note beat = 4 frames)."""
    import miditoolkit
    from chorder import Dechorder

    mel = music[music[:, tok.INSTRUMENT] != tok.DRUM]
    midi = miditoolkit.MidiFile(ticks_per_beat=tok.FRAMES_PER_QUARTER)
    for t in np.unique(mel[:, tok.TRACK]):
        sel = mel[mel[:, tok.TRACK] == t]
        inst = miditoolkit.Instrument(program=int(sel[0, tok.INSTRUMENT]), is_drum=False)
        ends = sel[:, tok.FRAME] + tok.DURATION_FRAMES[sel[:, tok.DURATION]]
        inst.notes = [miditoolkit.Note(velocity=int(v), pitch=int(p), start=int(s), end=int(e))
                      for s, p, v, e in zip(sel[:, tok.FRAME], sel[:, tok.PITCH], sel[:, tok.VELOCITY], ends)]
        midi.instruments.append(inst)
    midi.max_tick = int(n_frames)
    segs: list[tuple[int, int, str]] = []
    for i, c in enumerate(Dechorder.dechord(midi) if len(mel) else []):
        if c.root_pc is None or c.quality not in _CHORDER:
            lab = "N"
        else:
            bass = None if c.bass_pc is None or c.bass_pc == c.root_pc else (c.bass_pc - c.root_pc) % 12
            lab = chords_synth.harte(c.root_pc, _CHORDER[c.quality], bass)
        s = i * tok.FRAMES_PER_QUARTER
        if segs and segs[-1][2] == lab and segs[-1][1] == s:
            segs[-1] = (segs[-1][0], s + tok.FRAMES_PER_QUARTER, lab)
        else:
            segs.append((s, s + tok.FRAMES_PER_QUARTER, lab))
    return segs


def load_auto(item: dict[str, Any]) -> list[dict[str, Any]]:
    """An embedded-corpus song (Debian MIDI / WAD lump, or a music21 chorale) labelled by Dechorder."""
    fpq = tok.FRAMES_PER_QUARTER
    if item["kind"] == "auto_midi":
        blob = None
        if item.get("offset") is not None:
            with open(item["path"], "rb") as f:
                f.seek(item["offset"])
                blob = f.read(item["size"])
        score = tok.load_midi(item["key"], data=blob) if blob is not None else tok.load_midi(item["path"])
        music, n = tok.midi_to_notes(score, name=item["key"])
        timing = tok.timing_of(score)
        downs, beats = labels.meter_grid(timing["time_signatures"], n)
        tempos = timing["tempos"]
    else:
        import music21

        try:
            score = music21.converter.parse(item["path"], forceSource=True)
        except Exception as e:
            raise ValueError(f"{item['key']}: music21 cannot parse ({type(e).__name__}: {e})") from None
        music, n = score_music(score, item["key"])
        _, d, b, _ = measure_grid(score)
        downs, beats, tempos = [round(x * fpq) for x in d], [round(x * fpq) for x in b], score_tempos(score)
    if not (music[:, tok.INSTRUMENT] != tok.DRUM).any():
        raise ValueError(f"{item['key']}: drums only, nothing to label")
    return make_song(item, music, n, chorder_segments(music, n), downs, beats, tempos,
                     source="chorder 0.1.4 Dechorder (rule-based, drums removed)", corpus_id=item["corpus_id"])


# ------------------------------------------------------------------------------------------------ build
def romantext_items(out: str) -> list[dict[str, Any]]:
    """Items pairing music21's RomanText analyses with their scores (Bach by BWV number, Monteverdi by name)."""
    from music21 import corpus

    from m4mjax.datasets.corpus import music21_root

    root, items = music21_root(), []
    for a in sorted((root / "bach" / "choraleAnalyses").glob("*.rntxt")):
        m = re.search(r"^BWV:\s*(\S+)", a.read_text(errors="replace"), re.M)
        score = None
        bwv = m.group(1) if m else ""
        for cand in (bwv, bwv.rstrip("s"), re.sub(r"^(\d+)\((\d+)\)\.(\d+)$", r"\1.\3-\2", bwv)):
            try:
                found = corpus.getWork("bach/bwv" + cand)
            except Exception:
                continue
            found = [str(f) for f in (found if isinstance(found, list) else [found]) if str(f).endswith(".mxl")]
            if found:
                score = found[0]
                break
        if score:
            items.append({"key": f"romantext/bach/{a.stem}", "kind": "romantext", "group": "romantext/bach",
                          "analysis": str(a), "score": score, "out": out})
    for a in sorted((root / "monteverdi").glob("*.rntxt")):
        if a.with_suffix(".mxl").exists():
            items.append({"key": f"romantext/monteverdi/{a.stem}", "kind": "romantext", "out": out,
                          "group": "romantext/monteverdi", "analysis": str(a), "score": str(a.with_suffix(".mxl"))})
    return items


def auto_items(out: str, debian_dir: str, exclude_scores: set[str]) -> list[dict[str, Any]]:
    """Items of the embedded corpus to auto-label: Debian game MIDI and Bach chorales (minus the RomanText ones)."""
    from m4mjax.datasets import corpus

    items = []
    for group, its in corpus.group_items(debian_dir).items():
        for it in its:
            if group.startswith("debian/"):
                items.append({**it, "kind": "auto_midi", "key": f"auto/{it['key']}", "corpus_id": it["key"],
                              "group": "auto/corpus", "out": out})
            elif group == "music21/bach" and it["path"].endswith(".mxl") and it["path"] not in exclude_scores:
                items.append({**it, "kind": "auto_music21", "key": f"auto/{it['key']}", "corpus_id": it["key"] + "#0",
                              "group": "auto/corpus", "out": out})
    return items


@functools.lru_cache(maxsize=1)
def _corpus_splits() -> dict[str, str]:
    from m4mjax.datasets import corpus

    return corpus.split_table()


def song_split(song_id: str, item_index: int = 0) -> str:
    """The recorded split rule, a function of the song id alone: synth piece index mod 10 (0 test, 1 valid);
    RomanText all 'test'; auto = the embedded corpus's recorded split of the same song (corpus.split_of)."""
    from m4mjax.datasets import corpus

    if song_id.startswith("synth/"):
        return records.split_of_index(int(song_id.rsplit("/", 1)[1]))
    if song_id.startswith("romantext/"):
        return "test"
    cid = song_id.split("/", 1)[1]
    return corpus.split_of(cid + "#0" if cid.startswith("music21/") else cid, _corpus_splits())


def build(out: str | Path, n_synth: int = 1000, seed: int = 0, workers: int = 2, groups: Sequence[str] = tuple(GROUPS),
          debian_dir: str = "data/debian_midi", shard_size: int = 16, progress: bool = True) -> dict[str, Any]:
    """Build (or resume) the chord-labelled folder ``out``; returns the summary (also OUT/summary.json)."""
    out = str(out)
    bad = sorted(set(groups) - set(GROUPS))
    if bad:
        raise ValueError(f"--groups: unknown {bad}; choose from {sorted(GROUPS)}")
    items: list[dict[str, Any]] = []
    rt = romantext_items(out)
    if "romantext" in groups:
        items += rt
    if "auto" in groups:
        items += auto_items(out, debian_dir, {it["score"] for it in rt})
    if "synth" in groups and n_synth > 0:
        chords_synth.grooves()  # fails early, naming the missing package
        items += [{"key": f"synth/mma/{seed}/{i:05d}", "kind": "synth", "group": "synth/mma", "seed": seed, "index": i,
                   "out": out} for i in range(n_synth)]
    if not items:
        raise ValueError("nothing to build (no groups selected, or --n_synth=0 with only synth)")
    t0 = time.time()
    rep = convert.convert(items, load_item, out, shard_size=shard_size, workers=workers, split_fn=song_split,
                          desc="chords", progress=progress)
    return gather(out, rep, time.time() - t0)


def gather(out: str | Path, report: dict[str, Any], seconds: float) -> dict[str, Any]:
    """Collect every song's labels into OUT/labels.json and OUT/splits.json; count pieces/labels/hours."""
    out = Path(out)
    all_labels, splits, counts = {}, {}, {}
    for m in convert.load_markers(out):
        for split, songs in m["songs"].items():
            for s in songs:
                rec = records.read_json(label_path(out, s["id"]))
                rec["split"] = split
                all_labels[s["id"]], splits[s["id"]] = rec, split
                c = counts.setdefault(rec["group"], {}).setdefault(split, {"pieces": 0, "labels": 0, "labels_x": 0,
                                                                            "hours": 0.0})
                c["pieces"] += 1
                c["labels"] += sum(seg[2] not in ("N", "X") for seg in rec["segments"])
                c["labels_x"] += sum(seg[2] == "X" for seg in rec["segments"])
                c["hours"] += rec["seconds"] / 3600
    for g in counts.values():
        for c in g.values():
            c["hours"] = round(c["hours"], 3)
    records.write_json(out / "labels.json", dict(sorted(all_labels.items())))
    records.write_json(out / "splits.json", dict(sorted(splits.items())))
    summary = {"counts": counts, "bad_items": report["bad_items"], "seconds": round(seconds, 1),
               "split_rule": song_split.__doc__.split(": ", 1)[1].replace("\n", " ").replace("    ", " ")}
    records.write_json(out / "summary.json", summary)
    return summary
