"""SPS audio datasets (spec §2.1/§2.2): major-scale runs rendered with FluidSynth, cached as TFDS array_record.

`build_audio_dataset(cfg_data, split)` returns plain in-memory numpy arrays (the data is tiny):
    x           float32 [N, T=15, F, W=5]  normalised features (y = log2(1 + |X|*1024) / 12.5 for the STFT)
    pitch       float32 [N, T]             MIDI pitch of every note (fractional in the 'bend' split)
    start_pitch float32 [N]                first-note pitch (= start + bend)
    program     int32   [N]                GM program (0-based)
    scored      bool    [N]                start_pitch in [60, 84]: the sequences the §7.1 metrics use
Splits: 'train' (integer start pitches), 'bend' (each scale shifted by b = round(U(0,1), 2), seeded by
data.test_bend_seed), 'unseen' (the train scales rendered with data.unseen_soundfont).
The first build renders and writes `{data.dir}/sps_audio/{split}_{hash}/`; later builds read it back.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Any, Mapping

import numpy as np

from symmetry import audio

CACHE_FORMAT = 1  # bump when rendering/feature code changes the stored arrays
SPLITS = ("train", "bend", "unseen")
SCORED_RANGE = (60.0, 84.0)  # encodeLatticeZ.py: only start pitches in [60, 84] are scored


def default_data_config() -> Any:
    """ml_collections defaults for `cfg.data` (the camera-ready accordion setting)."""
    import ml_collections

    return ml_collections.ConfigDict(dict(
        soundfont=audio.FLUID_R3,           # training soundfont (FluidR3_GM, as in the paper)
        unseen_soundfont=audio.TIMGM6MB,    # 'unseen' split: same programs, a different soundfont
        instruments=("Accordion",),         # music21 class names -> GM program + pre-rendered range
        start_pitches=(),                   # () = every integer start in each instrument's range (58..83)
        sample_rate=audio.SAMPLE_RATE,      # 16 kHz
        feature="stft",                     # 'stft' (the paper) or 'cqt'
        n_bins=0,                           # 0 = all (513 STFT / 129 CQT); e.g. 257 = lowest STFT bins, 0-4 kHz
        test_bend_seed=0,                   # seed of the random fractional offsets of the 'bend' split
        train_fade="official",              # training split only ('bend'/'unseen' always as the paper): 'official' =
                                            # integer notes of the instrument's range get the 512-sample fade-out,
                                            # on-demand notes (84-95, every fractional test note) do not (spec §2.1);
                                            # 'none' = no training note is faded, like the fractional test notes
        dir="data/sps",                     # cache root (TFDS array_record)
    ))


def _get(cfg: Any, key: str) -> Any:
    """cfg.key with the default when missing; a clear error names unknown keys elsewhere."""
    defaults = default_data_config()
    if isinstance(cfg, Mapping):
        return cfg.get(key, defaults[key])
    return getattr(cfg, key, defaults[key])


def _check_keys(cfg: Any) -> None:
    """Reject unknown data.* keys (typos would otherwise silently use defaults)."""
    keys = cfg.keys() if isinstance(cfg, Mapping) or hasattr(cfg, "keys") else []
    unknown = sorted(set(keys) - set(default_data_config().keys()))
    if unknown:
        raise ValueError(f"unknown data config key(s) {unknown}; known: {sorted(default_data_config().keys())}")


def scale_specs(cfg: Any, split: str) -> tuple[str, list[dict]]:
    """(soundfont, list of sequence specs) for a split; a spec = instrument, program, pitches, fade range."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r} must be one of {SPLITS}")
    soundfont = _get(cfg, "unseen_soundfont" if split == "unseen" else "soundfont")
    rng = np.random.default_rng(int(_get(cfg, "test_bend_seed")))
    fade = _get(cfg, "train_fade")
    if fade not in ("official", "none"):
        raise ValueError(f"data.train_fade={fade!r} must be 'official' or 'none'")
    specs = []
    for name in _get(cfg, "instruments"):
        program, (lo, hi) = audio.instrument(name)
        fade_range = None if split == "train" and fade == "none" else (lo, hi)
        starts = [int(s) for s in _get(cfg, "start_pitches")] or list(range(lo, hi))
        for start in starts:
            bend = round(float(rng.random()), 2) if split == "bend" else 0.0
            pitches = np.round(audio.scale_pitches(start + bend), 6)
            specs.append(dict(instrument=name, program=program, pitches=pitches, fade=fade_range))
    return soundfont, specs


def render_examples(cfg: Any, split: str, renderer: audio.NoteRenderer | None = None) -> dict[str, np.ndarray]:
    """Render + featurise every sequence of a split (no cache) -> the arrays described in the module doc."""
    from tqdm import tqdm

    soundfont, specs = scale_specs(cfg, split)
    renderer = renderer or audio.NoteRenderer(int(_get(cfg, "sample_rate")))
    feature, n_bins = _get(cfg, "feature"), int(_get(cfg, "n_bins"))
    xs = []
    for spec in tqdm(specs, desc=f"render sps audio [{split}]", leave=False):
        wav = audio.render_sequence(renderer, soundfont, spec["program"], spec["pitches"], spec["fade"])
        xs.append(audio.sequence_features(wav, len(spec["pitches"]), feature, n_bins, renderer.sample_rate))
    pitch = np.stack([s["pitches"] for s in specs]).astype(np.float32)
    return dict(x=np.stack(xs).astype(np.float32), pitch=pitch, start_pitch=pitch[:, 0].copy(),
                program=np.array([s["program"] for s in specs], np.int32))


def settings_key(cfg: Any, split: str) -> tuple[str, dict]:
    """Cache name `{split}_{hash}` of every setting that changes the arrays (incl. soundfont size)."""
    _check_keys(cfg)
    soundfont = _get(cfg, "unseen_soundfont" if split == "unseen" else "soundfont")
    if not os.path.isfile(soundfont):
        raise ValueError(f"data soundfont {soundfont} does not exist (split {split!r})")
    settings = dict(
        format=CACHE_FORMAT, split=split, soundfont=os.path.abspath(soundfont),
        soundfont_bytes=os.path.getsize(soundfont), instruments=list(_get(cfg, "instruments")),
        start_pitches=[int(s) for s in _get(cfg, "start_pitches")], sample_rate=int(_get(cfg, "sample_rate")),
        feature=_get(cfg, "feature"), n_bins=int(_get(cfg, "n_bins")),
        test_bend_seed=int(_get(cfg, "test_bend_seed")) if split == "bend" else None,
    )
    if split == "train" and _get(cfg, "train_fade") != "official":  # caches made before the switch keep their names
        settings["train_fade"] = _get(cfg, "train_fade")
    digest = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    return f"{split}_{digest}", settings


_BUILDER_CLS = None


def _builder_cls() -> type:
    """The TFDS GeneratorBasedBuilder (defined lazily: importing TFDS costs time)."""
    global _BUILDER_CLS
    if _BUILDER_CLS is not None:
        return _BUILDER_CLS
    import tensorflow_datasets as tfds

    class SpsAudio(tfds.core.GeneratorBasedBuilder):
        """Rendered SPS scale runs; one builder config per (split, settings hash)."""

        VERSION = tfds.core.Version("1.0.0")
        code_path = None  # no checksums file; also avoids TFDS's importlib_resources lookup (absent on 3.11)

        def __init__(self, *, arrays: dict | None = None, shape: tuple = (), split: str = "train", **kw):
            self._arrays, self._shape, self._split = arrays, tuple(shape), split
            super().__init__(**kw)

        def _info(self) -> Any:
            f = tfds.features
            return self.dataset_info_from_configs(features=f.FeaturesDict(dict(
                index=f.Scalar(np.int64), x=f.Tensor(shape=self._shape, dtype=np.float32),
                pitch=f.Tensor(shape=self._shape[:1], dtype=np.float32),
                start_pitch=f.Scalar(np.float32), program=f.Scalar(np.int32))))

        def _split_generators(self, dl_manager: Any) -> dict:
            return {self._split: self._generate_examples()}

        def _generate_examples(self):
            for i in range(len(self._arrays["x"])):
                yield i, dict(index=i, **{k: v[i] for k, v in self._arrays.items()})

    _BUILDER_CLS = SpsAudio
    return SpsAudio


def _shape(cfg: Any) -> tuple[int, int, int]:
    """(T, F, W) of one example under these settings."""
    return (len(audio.MAJOR_SCALE), audio.feature_size(_get(cfg, "feature"), int(_get(cfg, "n_bins"))),
            audio.FRAMES_PER_NOTE)


def build_audio_dataset(cfg: Any, split: str = "train") -> dict[str, np.ndarray]:
    """Load a split from the TFDS cache under cfg.dir, rendering and writing it on first use."""
    import tensorflow_datasets as tfds

    name, settings = settings_key(cfg, split)
    cls = _builder_cls()
    kw = dict(data_dir=os.path.abspath(_get(cfg, "dir")), shape=_shape(cfg), split=split,
              config=tfds.core.BuilderConfig(name=name, description=json.dumps(settings, sort_keys=True)),
              file_format="array_record")
    builder = cls(**kw)
    if not builder.is_prepared():
        arrays = render_examples(cfg, split)
        builder = cls(arrays=arrays, **kw)
        builder.download_and_prepare(file_format="array_record")
        logging.info("wrote SPS audio cache %s", builder.data_dir)
    source = builder.as_data_source()[split]
    rows = sorted((source[i] for i in range(len(source))), key=lambda r: int(r["index"]))
    out = {k: np.stack([np.asarray(r[k]) for r in rows]) for k in ("x", "pitch", "start_pitch", "program")}
    out["x"], out["pitch"] = out["x"].astype(np.float32), out["pitch"].astype(np.float32)
    out["start_pitch"], out["program"] = out["start_pitch"].astype(np.float32), out["program"].astype(np.int32)
    out["scored"] = (out["start_pitch"] >= SCORED_RANGE[0]) & (out["start_pitch"] <= SCORED_RANGE[1])
    return out
