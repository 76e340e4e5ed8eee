"""The m4m input pipeline: song records -> batches of token windows ``tokens: int32[B, F, L]``.

Training: this process's share of the split's songs, shuffled and repeated; each element is a window of
``data.frames`` frames at a random start (official ``FramedDataset``), transposed by a random shift inside the
song's valid range clipped to ``data.pitch_shift`` (drums never move). Eval: every song cut into fixed
consecutive windows, one pass, the last batch padded with all-PAD windows (``mask`` marks real ones).

Config fields (ml_collections ``cfg.data``): name ('m4m_default/demo' | 'm4m_default/full' | an ``m4mjax.prepare``
output folder | 'prepared'), dir (TFDS data_dir, or the prepare output for 'prepared'), frames, batch_size (global;
split over processes), max_frame_tokens, pitch_shift ((lo, hi) semitones for training; (0, 0) = off; a chord track
moves by pitch class inside its registers), drop_short (drop songs shorter than a window, as the paper; else pad),
reference / target (optional stream selectors: 'all', 'music', 'labels', 'drums', 'others', 'music_drums',
'music_others', 'track:K', 'notrack:K' -> extra 'reference' and 'target' windows for the two-stream tasks), num_threads, duplicates (how the corpus
stores exact duplicate notes, 'longest' | 'keep': a prepared folder that records another value is an error).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import grain
import numpy as np

from m4mjax import tokenizer as tok
from m4mjax.datasets import convert, records
from m4mjax.run import data as run_data


LABEL_TRACKS = 250  # tracks >= this hold labels written as music (m4mjax.labels: 250 chords, 251 beats)


def select_stream(notes: np.ndarray, selector: str) -> np.ndarray:
    """Notes of one stream: 'all', 'music' (tracks < 250), 'labels' (chord + beat tracks, >= 250), 'drums',
    'others', 'music_drums' / 'music_others' (the same, label tracks left out: the beat track is drums and the
    chord track is not), 'track:K' or 'notrack:K'."""
    if selector in ("", "all"):
        return notes
    if selector in ("music_drums", "music_others"):
        return select_stream(select_stream(notes, "music"), selector.split("_", 1)[1])
    if selector in ("music", "labels"):
        music = notes[:, tok.TRACK] < LABEL_TRACKS
        return notes[music if selector == "music" else ~music]
    if selector == "drums":
        return notes[notes[:, tok.INSTRUMENT] == tok.DRUM]
    if selector == "others":
        return notes[notes[:, tok.INSTRUMENT] != tok.DRUM]
    kind, _, k = selector.partition(":")
    if kind in ("track", "notrack") and k.lstrip("-").isdigit():
        same = notes[:, tok.TRACK] == int(k)
        return notes[same if kind == "track" else ~same]
    raise ValueError(f"data.reference/target: unknown stream selector {selector!r}")


def shift_song(notes: np.ndarray, k: int) -> np.ndarray:
    """Transpose a song by k semitones (drums never move); a chord track's notes move by pitch class inside
    their register (bass 36-47, tones 48-59, extensions 60-71), so transposed labels keep their layout. The
    result is in storage order (``tok.sort_notes``), as every song record is."""
    out = tok.pitch_shift(notes, k)
    from m4mjax import labels

    chord = (notes[:, tok.TRACK] == labels.CHORD_TRACK) & (notes[:, tok.INSTRUMENT] != tok.DRUM)
    if chord.any():
        p = notes[chord, tok.PITCH]
        low = labels.BASS_LOW + (p - labels.BASS_LOW) // 12 * 12  # the register's lowest pitch
        in_layout = (p >= labels.BASS_LOW) & (p < labels.EXT_LOW + 12)
        out[chord, tok.PITCH] = np.where(in_layout, low + (p - low + k) % 12, p + k)
        # pitch classes wrap inside a register, so the moved notes leave storage order: sort again, or the
        # token order of a chord row would depend on the (hidden) shift
        out = tok.sort_notes(out)
    return out


class _DecodedTfds:
    """Adapter: a TFDS data source -> songs with str ids (same dicts as ShardSource)."""

    def __init__(self, src: Any):
        self._src = src

    def __len__(self) -> int:
        return len(self._src)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return records.from_example(self._src[int(i)])


def prepared_dir(cfg_data: Any) -> str | None:
    """The ``m4mjax.prepare`` output folder the config names, or None for the embedded corpus.

    ``data.name`` may be that folder itself (``--config.data.name=data/mine``) or 'prepared' with the folder
    in ``data.dir``. A name that is an existing folder but not a prepare output is an error naming it."""
    name = str(cfg_data.name)
    if name == "prepared":
        return str(cfg_data.dir)
    if name.startswith("m4m_default/") and not Path(name).is_dir():
        return None
    if Path(name).is_dir():
        if not (Path(name) / "shards").is_dir():
            raise ValueError(f"data.name={name!r}: a folder, but not one written by `python -m m4mjax.prepare` "
                             "(no shards/ inside)")
        return name
    return None


def _check_duplicates(corpus: str, built: str | None, wanted: str) -> None:
    """One-line error when the corpus was built with another duplicates setting than data.duplicates says."""
    if built is not None and built != wanted:
        from m4mjax.run.errors import UserError

        raise UserError(f"{corpus} was built with --duplicates={built}, but data.duplicates={wanted!r}; set "
                        f"--config.data.duplicates={built}, or prepare a folder with --duplicates={wanted}",
                        "data.duplicates")


def open_split(cfg_data: Any, split: str) -> tuple[Any, np.ndarray]:
    """(random-access song source, song lengths in frames) of one split of the configured dataset."""
    if split not in records.SPLITS:
        raise ValueError(f"split must be one of {records.SPLITS}, got {split!r}")
    duplicates = cfg_data.get("duplicates", "longest")
    if duplicates not in tok.DUPLICATES:
        from m4mjax.run.errors import UserError

        raise UserError(f"must be one of {', '.join(tok.DUPLICATES)}", f"data.duplicates={duplicates!r}")
    prepared = prepared_dir(cfg_data)
    if prepared is not None:
        src = convert.ShardSource(prepared, split)
        _check_duplicates(prepared, src.settings.get("duplicates"), duplicates)  # None: prepared before recorded
        return src, src.lengths
    if cfg_data.name.startswith("m4m_default/"):
        _check_duplicates(cfg_data.name, "longest", duplicates)  # the embedded corpus is built 'longest'
        from m4mjax.datasets import corpus

        variant = cfg_data.name.split("/", 1)[1]
        b = corpus.builder(variant, cfg_data.dir)
        if not Path(b.data_dir).joinpath("dataset_info.json").exists():
            from m4mjax.run.errors import UserError

            raise UserError(f"{cfg_data.name} is not built under {cfg_data.dir}; run `python -m "
                            f"m4mjax.datasets.default --variant={variant} --data_dir={cfg_data.dir}`", "data.name")
        src = _DecodedTfds(b.as_data_source()[split])
        side = Path(b.data_dir) / f"lengths-{split}.json"
        if side.exists():
            lengths = np.asarray(records.read_json(side), np.int64)
        else:
            lengths = np.array([src[i]["n_frames"] for i in range(len(src))], np.int64)
            try:
                records.write_json(side, lengths.tolist())
            except OSError:
                pass  # read-only dataset directory: recompute next time
        if len(lengths) != len(src):
            raise ValueError(f"{side}: {len(lengths)} lengths for {len(src)} records; delete it to recompute")
        return src, lengths
    raise ValueError(f"data.name: unknown dataset {cfg_data.name!r}, and no such folder (use "
                     "'m4m_default/demo', 'm4m_default/full', a folder written by `python -m m4mjax.prepare`, "
                     "or 'prepared' with data.dir)")


def _window(cfg_data: Any, song: dict[str, Any], start: int, shift: int) -> dict[str, np.ndarray]:
    """Token windows (tokens, and reference/target when configured) of one song at one start frame."""
    notes = shift_song(song["notes"], shift) if shift else song["notes"]
    f, length, n = int(cfg_data.frames), int(cfg_data.max_frame_tokens), int(song["n_frames"])
    rows = dict(song_frames=n, row_format=cfg_data.get("row_format", "eos"))
    out = {"tokens": tok.notes_to_tokens(notes, start, f, length, **rows)}
    ref, tgt = cfg_data.get("reference", ""), cfg_data.get("target", "")
    if ref and tgt:
        out["reference"] = tok.notes_to_tokens(select_stream(notes, ref), start, f, length, **rows)
        out["target"] = tok.notes_to_tokens(select_stream(notes, tgt), start, f,
                                            int(cfg_data.get("target_frame_tokens", 0)) or length, **rows)
    out["mask"] = np.bool_(True)
    return out


def eval_windows(cfg_data: Any, lengths: np.ndarray) -> np.ndarray:
    """(song, start frame) rows of a split's fixed evaluation windows, in split order: consecutive windows of
    ``data.frames`` per kept song (``lengths`` from ``open_split``)."""
    frames = int(cfg_data.frames)
    keep = lengths >= frames if cfg_data.get("drop_short", True) else lengths > 0
    starts = [(s, st) for s in np.nonzero(keep)[0] for st in range(0, max(int(lengths[s]) - frames, 0) + 1, frames)]
    return np.array(starts, np.int64).reshape(-1, 2)


def group_mask(ids: Sequence[str] | None, n: int, groups: tuple[str, ...]) -> np.ndarray:
    """Bool [n]: the songs whose id starts with one of ``groups`` (``data.train_groups``, the training mix: e.g.
    ``("synth/",)`` = the synthetic arrangements only, ``("synth/", "auto/")`` = + the auto-labelled corpus songs of
    m4mjax.datasets.chords); every song when ``groups`` is empty. A ValueError when none matches or the source has
    no ids."""
    if not groups:
        return np.ones(n, bool)
    if ids is None:
        raise ValueError(f"data.train_groups={list(groups)}: this dataset's songs have no ids to select by")
    out = np.array([any(str(i).startswith(g) for g in groups) for i in ids], bool)
    if not out.any():
        raise ValueError(f"data.train_groups={list(groups)}: no training song's id starts with any of them "
                         f"(ids look like {ids[0]!r})")
    return out


def make_dataset(cfg_data: Any, split: str, seed: int, *, shard_options: grain.sharding.ShardOptions | None = None,
                 train: bool | None = None, spread: int = 0) -> grain.DatasetIterator:
    """Iterator of dicts ``tokens: int32[B, F, L]`` (+ ``mask: bool[B]``) for this process; state is JSON-able.

    B = data.batch_size // process_count. Train split: random windows, repeated forever; other splits: fixed
    windows, one pass (``spread`` > 0: only that many, evenly spaced over the split). ``train`` overrides that
    choice (e.g. fixed windows of the train split for statistics).
    """
    train = split == "train" if train is None else train
    src, lengths = open_split(cfg_data, split)
    frames = int(cfg_data.frames)
    options = shard_options or run_data.process_shard_options(drop_remainder=train)
    local_batch = int(cfg_data.batch_size) // options.shard_count
    if local_batch < 1 or int(cfg_data.batch_size) % options.shard_count:
        raise ValueError(f"data.batch_size={cfg_data.batch_size} must be a multiple of {options.shard_count} processes")
    keep = lengths >= frames if cfg_data.get("drop_short", True) else lengths > 0
    if train:
        keep &= group_mask(getattr(src, "ids", None), len(lengths), tuple(cfg_data.get("train_groups", ())))
    songs = np.nonzero(keep)[0]
    if len(songs) == 0:
        raise ValueError(f"{cfg_data.name} '{split}': no song has >= data.frames={frames} frames "
                         f"(longest {int(lengths.max()) if len(lengths) else 0}); lower data.frames or set drop_short=False")
    threads = int(cfg_data.get("num_threads", 2))
    if train:
        lo, hi = (tuple(cfg_data.get("pitch_shift", (-5, 6))) + (0, 0))[:2]
        start_frac = float(cfg_data.get("song_start_frac", 0.0))

        def sample(index: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
            song = src[index]
            start = int(rng.integers(0, max(song["n_frames"] - frames, 0) + 1))
            if start_frac and rng.random() < start_frac:  # drawn after the start: 0 leaves the stream as it was
                start = 0
            s_lo, s_hi = tok.pitch_shift_range(song["notes"], lo, hi)
            shift = int(rng.integers(s_lo, s_hi + 1)) if s_hi >= s_lo else 0
            return _window(cfg_data, song, start, shift)

        if cfg_data.get("sampling", "song") == "length":  # one slot per window-length of song, as the
            # official FramedDataset (every start at a stride): long multi-track songs are not undersampled
            songs = np.repeat(songs, np.maximum(lengths[songs] // frames, 1))
        elif cfg_data.get("sampling", "song") != "song":
            raise ValueError(f"data.sampling={cfg_data.sampling!r}: expected 'song' or 'length'")
        ds = run_data.sharded_dataset(songs, options)
        return run_data.batched_iterator(ds, local_batch, seed, random_map=sample, num_threads=threads)

    windows = eval_windows(cfg_data, lengths)
    if 0 < spread < len(windows):  # a sample of the split: ``spread`` windows evenly spaced over all of it
        windows = windows[np.linspace(0, len(windows) - 1, spread).round().astype(np.int64)]
    ds = grain.MapDataset.source(windows[run_data.shard_indices(len(windows), options)])

    def fixed(pair: np.ndarray) -> dict[str, np.ndarray]:
        return _window(cfg_data, src[int(pair[0])], int(pair[1]), 0)

    def pad(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = local_batch - len(batch["mask"])
        if missing <= 0:
            return batch
        return {k: np.concatenate([v, np.full((missing,) + v.shape[1:], tok.PAD if k != "mask" else False, v.dtype)])
                for k, v in batch.items()}

    ds = ds.map(fixed).batch(local_batch, drop_remainder=False).map(pad)
    return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=2 * threads)))


def count_eval_windows(cfg_data: Any, split: str) -> int:
    """How many fixed eval windows a split has (all processes together)."""
    _, lengths = open_split(cfg_data, split)
    f = int(cfg_data.frames)
    ok = lengths >= f if cfg_data.get("drop_short", True) else lengths > 0
    return int(sum(max(int(n) - f, 0) // f + 1 for n in lengths[ok]))

