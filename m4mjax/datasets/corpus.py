"""The embedded default corpus as a TFDS dataset (array_record): music21's bundled scores + Debian game MIDI.

Built by ``python -m m4mjax.datasets.default`` (the command over this module). Read:
``builder(variant, data_dir).as_data_source()[split]``. Groups (one per source) are kept apart in the ``group``
field. Splits are fixed in ``splits/default.json`` (song id -> split; within each group, songs in id order,
index mod 10: 0 test, 1 valid, else train); a song missing from that file (other music21 version) falls back to
crc32(id) mod 10 and is counted in the build report.
"""
from __future__ import annotations

import time
import zlib
from pathlib import Path
from typing import Any

import tensorflow_datasets as tfds

from m4mjax.datasets import convert, records, sources

SPLITS_FILE = Path(__file__).parent / "splits" / "default.json"
DEBIAN_GROUPS = {  # group -> (package dir, files under it)
    "debian/simutrans": ("simutrans-data", "usr/share/games/simutrans/music"),
    "debian/openmsx": ("openttd-openmsx", "usr/share/games/openttd/baseset/openmsx"),
    "debian/blupi": ("planetblupi-music-midi", "usr/share/planetblupi/music"),
    "debian/freedoom": ("freedoom", "usr/share/games/doom"),
}
MUSIC21_FULL = ("nottingham-dataset", "bach", "oneills1850", "ryansMammoth", "essenFolksong", "airdsAirs",
                "josquin", "miscFolk", "palestrina", "*")  # "*" = every other collection
VARIANTS = {
    "demo": ("debian/*", "music21/nottingham-dataset", "music21/bach", "music21/oneills1850"),
    "full": ("debian/*", "music21/*"),
}


def music21_root() -> Path:
    """The directory of music21's bundled corpus."""
    import music21.corpus

    return Path(music21.corpus.__file__).parent


def group_items(debian_dir: str | Path) -> dict[str, list[dict[str, Any]]]:
    """Every source group of the full corpus -> its items (sorted by key)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    debian_dir = Path(debian_dir)
    for group, (pkg, sub) in DEBIAN_GROUPS.items():
        d = debian_dir / pkg / sub
        if not d.is_dir():
            continue
        if group == "debian/freedoom":
            seen: set[str] = set()
            groups[group] = [it for w in sorted(d.glob("*.wad"))
                             for it in sources.wad_midi_items(w, group, f"freedoom/{w.name}", seen)]
        else:
            groups[group] = [{"key": f"{group.split('/')[1]}/{p.name}", "kind": "midi", "path": str(p), "group": group}
                             for p in sorted(d.iterdir()) if p.suffix.lower() in (".mid", ".midi")]
    root = music21_root()
    for p in sorted(root.rglob("*")):
        if p.suffix.lower() not in sources.MUSIC21_FORMATS or not p.is_file():
            continue
        rel = p.relative_to(root)
        coll = rel.parts[0] if len(rel.parts) > 1 else "misc"
        group = f"music21/{coll if coll in MUSIC21_FULL else 'other'}"
        groups.setdefault(group, []).append({"key": f"music21/{rel.as_posix()}", "kind": "music21", "path": str(p),
                                             "group": group})
    return groups


def variant_groups(variant: str, debian_dir: str | Path) -> dict[str, list[dict[str, Any]]]:
    """The groups (and items) of one variant."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown default-corpus variant {variant!r}; choose from {sorted(VARIANTS)}")
    pats = VARIANTS[variant]
    out = {}
    for g, items in group_items(debian_dir).items():
        if any(g == p or (p.endswith("/*") and g.startswith(p[:-1])) for p in pats):
            out[g] = items
    return out


def _all_split(song_id: str, index: int) -> str:
    return "all"


def build_cache(variant: str, cache_dir: str | Path, debian_dir: str | Path, workers: int,
                progress: bool = True) -> dict[str, Any]:
    """Convert every group of a variant into cache_dir/<group> (skips finished chunks); returns per-group reports."""
    reports = {}
    for group, items in variant_groups(variant, debian_dir).items():
        multi_tune = ("music21/essenFolksong", "music21/airdsAirs", "music21/oneills1850", "music21/miscFolk")
        size = 64 if group.startswith("debian/") else (1 if group in multi_tune else 8)
        t0 = time.time()
        rep = convert.convert(items, sources.load_item, Path(cache_dir) / group, shard_size=size, workers=workers,
                              split_fn=_all_split, desc=group, progress=progress)
        rep["wall_seconds"] = round(time.time() - t0, 2)
        reports[group] = {k: v for k, v in rep.items() if k != "splits"}
    return reports


def split_table() -> dict[str, str]:
    """The recorded song id -> split table (empty if the file is absent)."""
    return records.read_json(SPLITS_FILE) if SPLITS_FILE.exists() else {}


def split_of(song_id: str, table: dict[str, str]) -> str:
    """Recorded split of a song, or the crc32 fallback for songs the table does not list."""
    return table.get(song_id) or records.split_of_index(zlib.crc32(song_id.encode()))


class M4mDefault(tfds.core.GeneratorBasedBuilder):
    """music21 bundled scores + Debian General MIDI game soundtracks, one record per song."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=v, description=f"variant {v}: {VARIANTS[v]}") for v in VARIANTS]

    def __init__(self, *, cache_dir: str = "data/cache/default", debian_dir: str = "data/debian_midi",
                 workers: int = 2, **kwargs: Any):
        self._cache_dir, self._debian_dir, self._workers = cache_dir, debian_dir, workers
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(builder=self, features=records.FEATURES,
                                     description="Embedded default corpus of m4mjax (see m4mjax/datasets/default.py).")

    def _split_generators(self, dl_manager: Any) -> dict[str, Any]:
        self.cache_reports = build_cache(self.builder_config.name, self._cache_dir, self._debian_dir, self._workers)
        return {s: self._generate_examples(s) for s in records.SPLITS}

    def _generate_examples(self, split: str):
        table = split_table()
        for group in self.cache_reports:
            src_dir = Path(self._cache_dir) / group
            for m in convert.load_markers(src_dir):
                if not m["songs"].get("all"):
                    continue
                path = src_dir / "shards" / f"{m['chunk']:05d}.all.array_record"
                from array_record.python.array_record_module import ArrayRecordReader

                reader = ArrayRecordReader(str(path))
                try:
                    for i, meta in enumerate(m["songs"]["all"]):
                        if split_of(meta["id"], table) == split:
                            song = records.decode_song(reader.read([i])[0])
                            yield song["id"], records.to_example(song)
                finally:
                    reader.close()


def builder(variant: str = "demo", data_dir: str = "data/tfds", **kwargs: Any) -> M4mDefault:
    """The TFDS builder of one variant (``as_data_source()`` reads it once built)."""
    return M4mDefault(config=variant, data_dir=data_dir, **kwargs)


def write_splits(cache_dir: str | Path) -> dict[str, str]:
    """Record the split table from a full cache: per group, songs in id order, index mod 10."""
    table = {}
    for group_dir in sorted(p.parent for p in Path(cache_dir).rglob("plan.json")):
        ids = sorted(x["id"] for m in convert.load_markers(group_dir) for x in m["songs"].get("all", []))
        table.update({i: records.split_of_index(k) for k, i in enumerate(ids)})
    records.write_json(SPLITS_FILE, dict(sorted(table.items())))
    return table
