"""SPS datasets, picked by ``data.kind``: 'audio' (spec §2.1/§2.2, major-scale runs rendered with FluidSynth)
or 'ball' (spec §3, the bouncing-ball videos of symmetry.ball), cached as TFDS array_record keyed by settings.

`build_dataset(cfg_data, split)` dispatches; both return plain in-memory numpy arrays.

Ball (`build_ball_dataset`; splits 'train' = the first data.train_size trajectories of a pool of
data.train_pool, so the 256/512/1024/2048 subsets share one render, and 'eval' = data.eval_size held-out ones):
    x           uint8   [N, T=20, 32, 32, 3]  RGB frames (the paper's PNGs; /255 in the train step)
    position    float32 [N, T, 3]             true ball centre (x, y = height, z = depth) of every frame
    visible     bool    [N]                   every frame has a pixel with a channel > 0.5 (the authors' filter)

Audio (`build_audio_dataset`):
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

import fcntl
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
        kind="audio",                       # 'audio' | 'ball' (each kind has its own data keys)
    ))


def ball_data_config() -> Any:
    """ml_collections defaults for `cfg.data` of the bouncing-ball task (spec §3)."""
    import ml_collections

    return ml_collections.ConfigDict(dict(
        kind="ball",
        train_pool=2048,                    # trajectories rendered for training; every train_size uses its first n
        train_size=512,                     # training trajectories (paper: 512; data-size study 256..2048)
        eval_size=512,                      # held-out evaluation trajectories (paper: a multiple of 256, size unknown)
        train_seed=0,                       # seed of the training pool's initial states
        eval_seed=1,                        # seed of the evaluation set's initial states
        frames=20,                          # T
        dt=0.2,                             # seconds between frames
        image_size=32,                      # output pixels (the scene is drawn for 320x320, box-filtered)
        supersample=4,                      # rays per output pixel per axis for the ball
        drop_invisible=False,               # drop trajectories with a frame where the ball is not visible
        dir="data/sps",                     # cache root (TFDS array_record)
    ))


def kind_of(cfg: Any) -> str:
    """data.kind ('audio' when absent: configs written before the ball task)."""
    kind = cfg.get("kind", "audio") if isinstance(cfg, Mapping) else getattr(cfg, "kind", "audio")
    if kind not in ("audio", "ball"):
        raise ValueError(f"data.kind={kind!r} must be 'audio' or 'ball'")
    return kind


def _defaults_of(cfg: Any) -> Any:
    return ball_data_config() if kind_of(cfg) == "ball" else default_data_config()


def _get(cfg: Any, key: str) -> Any:
    """cfg.key with the default when missing; a clear error names unknown keys elsewhere."""
    defaults = _defaults_of(cfg)
    if isinstance(cfg, Mapping):
        return cfg.get(key, defaults[key])
    return getattr(cfg, key, defaults[key])


def _check_keys(cfg: Any) -> None:
    """Reject unknown data.* keys (typos would otherwise silently use defaults)."""
    keys = cfg.keys() if isinstance(cfg, Mapping) or hasattr(cfg, "keys") else []
    known = set(_defaults_of(cfg).keys())
    unknown = sorted(set(keys) - known)
    if unknown:
        raise ValueError(f"unknown data config key(s) {unknown} for data.kind={kind_of(cfg)!r}; known: {sorted(known)}")


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


_BUILDERS: dict[str, type] = {}


def _builder_cls(name: str = "SpsAudio") -> type:
    """A TFDS GeneratorBasedBuilder class named ``name`` (TFDS name: snake case, e.g. sps_audio), whose
    features are given per instance as {key: (shape, numpy dtype)}; defined lazily (importing TFDS is slow)."""
    if name in _BUILDERS:
        return _BUILDERS[name]
    import tensorflow_datasets as tfds

    def __init__(self, *, arrays: dict | None = None, features: dict | None = None, split: str = "train", **kw):
        self._arrays, self._features, self._split = arrays, dict(features or {}), split
        tfds.core.GeneratorBasedBuilder.__init__(self, **kw)

    def _info(self) -> Any:
        f = tfds.features
        spec = dict(index=f.Scalar(np.int64))
        for key, (shape, dtype) in self._features.items():
            spec[key] = f.Scalar(dtype) if shape == () else f.Tensor(shape=tuple(shape), dtype=dtype)
        return self.dataset_info_from_configs(features=f.FeaturesDict(spec))

    def _split_generators(self, dl_manager: Any) -> dict:
        return {self._split: self._generate_examples()}

    def _generate_examples(self):
        for i in range(len(next(iter(self._arrays.values())))):
            yield i, dict(index=i, **{k: v[i] for k, v in self._arrays.items()})

    cls = type(name, (tfds.core.GeneratorBasedBuilder,), dict(
        __doc__=f"SPS {name} examples; one builder config per (split, settings hash).",
        VERSION=tfds.core.Version("1.0.0"),
        code_path=None,  # no checksums file; also avoids TFDS's importlib_resources lookup (absent on 3.11)
        __init__=__init__, _info=_info, _split_generators=_split_generators,
        _generate_examples=_generate_examples, __module__=__name__))
    _BUILDERS[name] = cls
    return cls


def _cached(builder_name: str, cfg: Any, split: str, name: str, settings: dict, features: dict,
            make: Any) -> dict[str, np.ndarray]:
    """Every feature of a split, read from the TFDS cache under cfg.dir, or made by make() and written first."""
    import tensorflow_datasets as tfds

    cls = _builder_cls(builder_name)
    kw = dict(data_dir=os.path.abspath(_get(cfg, "dir")), features=features, split=split,
              config=tfds.core.BuilderConfig(name=name, description=json.dumps(settings, sort_keys=True)),
              file_format="array_record")
    builder = cls(**kw)
    if not builder.is_prepared():
        # one writer per cache entry: processes sharing data.dir (test workers, vmapped-seed launches) wait here,
        # then read what the first one wrote (TFDS's own rename fails when the folder appears meanwhile)
        lock_dir = os.path.join(kw["data_dir"], ".locks")
        os.makedirs(lock_dir, exist_ok=True)
        with open(os.path.join(lock_dir, f"{builder_name}-{name}.lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            builder = cls(**kw)
            if not builder.is_prepared():
                builder = cls(arrays=make(), **kw)
                builder.download_and_prepare(file_format="array_record")
                logging.info("wrote SPS cache %s", builder.data_dir)
    source = builder.as_data_source()[split]
    rows = sorted((source[i] for i in range(len(source))), key=lambda r: int(r["index"]))
    return {k: np.stack([np.asarray(r[k]) for r in rows]).astype(dtype) for k, (_, dtype) in features.items()}


def _shape(cfg: Any) -> tuple[int, int, int]:
    """(T, F, W) of one example under these settings."""
    return (len(audio.MAJOR_SCALE), audio.feature_size(_get(cfg, "feature"), int(_get(cfg, "n_bins"))),
            audio.FRAMES_PER_NOTE)


def build_audio_dataset(cfg: Any, split: str = "train") -> dict[str, np.ndarray]:
    """Load a split from the TFDS cache under cfg.dir, rendering and writing it on first use."""
    name, settings = settings_key(cfg, split)
    shape = _shape(cfg)
    features = dict(x=(shape, np.float32), pitch=(shape[:1], np.float32), start_pitch=((), np.float32),
                    program=((), np.int32))
    out = _cached("SpsAudio", cfg, split, name, settings, features, lambda: render_examples(cfg, split))
    out["scored"] = (out["start_pitch"] >= SCORED_RANGE[0]) & (out["start_pitch"] <= SCORED_RANGE[1])
    return out


# ----------------------------------------------------------------------------------------------
# Ball

BALL_SPLITS = ("train", "eval")
BALL_CACHE_FORMAT = 1  # bump when symmetry.ball changes the stored arrays


def ball_settings_key(cfg: Any, split: str) -> tuple[str, dict]:
    """Cache name `{split}_{hash}` of every setting that changes a ball split's arrays."""
    _check_keys(cfg)
    if split not in BALL_SPLITS:
        raise ValueError(f"ball split {split!r} must be one of {BALL_SPLITS}")
    n = int(_get(cfg, "train_pool" if split == "train" else "eval_size"))
    size = int(_get(cfg, "image_size"))
    if n < 1 or int(_get(cfg, "frames")) < 2 or size < 8 or 320 % size:
        raise ValueError(f"ball data: need train_pool/eval_size >= 1 (got {n}), frames >= 2, image_size dividing 320 "
                         f"(got {size})")
    settings = dict(format=BALL_CACHE_FORMAT, split=split, trajectories=n,
                    seed=int(_get(cfg, "train_seed" if split == "train" else "eval_seed")),
                    frames=int(_get(cfg, "frames")), dt=float(_get(cfg, "dt")), image_size=size,
                    supersample=int(_get(cfg, "supersample")))
    digest = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    return f"{split}_{digest}", settings


def render_ball_examples(settings: dict) -> dict[str, np.ndarray]:
    """Simulate + render the trajectories of one split's settings (no cache)."""
    from symmetry import ball

    pos = ball.make_trajectories(settings["trajectories"], settings["seed"], settings["frames"], settings["dt"])
    x = ball.render(pos, settings["image_size"], settings["supersample"],
                    progress=f"render sps ball [{settings['split']}, {settings['trajectories']} trajectories]")
    return dict(x=x, position=pos.astype(np.float32), visible=ball.visible(x))


def build_ball_dataset(cfg: Any, split: str = "train") -> dict[str, np.ndarray]:
    """A ball split (module doc), rendered and cached on first use; 'train' is cut to data.train_size."""
    name, settings = ball_settings_key(cfg, split)
    size, t = settings["image_size"], settings["frames"]
    features = dict(x=((t, size, size, 3), np.uint8), position=((t, 3), np.float32), visible=((), np.bool_))
    out = _cached("SpsBall", cfg, split, name, settings, features, lambda: render_ball_examples(settings))
    if _get(cfg, "drop_invisible"):
        out = {k: v[out["visible"]] for k, v in out.items()}
    if split == "train":
        n = int(_get(cfg, "train_size"))
        if not 1 <= n <= len(out["x"]):
            raise ValueError(f"data.train_size={n} must be in [1, {len(out['x'])}] (the rendered pool "
                             f"data.train_pool={settings['trajectories']}"
                             + (", after drop_invisible" if _get(cfg, "drop_invisible") else "") + ")")
        out = {k: v[:n] for k, v in out.items()}
    return out


def build_dataset(cfg: Any, split: str) -> dict[str, np.ndarray]:
    """The split of whichever kind cfg.kind names."""
    return build_ball_dataset(cfg, split) if kind_of(cfg) == "ball" else build_audio_dataset(cfg, split)
