"""A small prepared MIDI dataset (generated songs -> `m4mjax.prepare`) and the `:tiny` LM config on it,
shared by the m4m entry-point tests."""
from __future__ import annotations

import os
import pathlib

import numpy as np
import pytest
import symusic

REPO = pathlib.Path(__file__).resolve().parents[1]


def one_device_env() -> dict[str, str]:
    """The environment for an entry-point subprocess: no fake devices and XLA's default optimisation (the test
    session's -O0 made test_resume_after_kill's 3 x 60 training steps slower: 175 s against 121 s), one CPU
    device, as a user's command runs."""
    return dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")


def write_song(path: pathlib.Path, rng: np.random.Generator, n_frames: int = 200) -> None:
    """A two-track (melody + drums) song on the 16th grid at 96 ticks per quarter."""
    score = symusic.Score(96)
    mel = symusic.Track(program=int(rng.integers(0, 100)))
    drums = symusic.Track(is_drum=True)
    for f in range(0, n_frames, 2):
        mel.notes.append(symusic.Note(f * 24, 48, int(rng.integers(50, 80)), 80))
        drums.notes.append(symusic.Note(f * 24, 24, 42, 80))
    score.tracks.extend([mel, drums])
    path.parent.mkdir(parents=True, exist_ok=True)
    score.dump_midi(str(path))


def random_frames(cfg, B: int, F: int, seed: int = 0):
    """Valid token rows [B, F, L] for a model config: 0-3 random notes (2 tokens each), EOS, PAD..."""
    import jax.numpy as jnp

    rng = np.random.default_rng(seed)
    out = np.full((B, F, cfg.max_frame_tokens), cfg.pad_id, np.int32)
    for b in range(B):
        for f in range(F):
            k = rng.integers(0, 4)
            out[b, f, :2 * k] = rng.integers(0, 3328, 2 * k)
            out[b, f, 2 * k] = cfg.eos_id
    return jnp.asarray(out)


@pytest.fixture(scope="session")
def prepared_dir(tmp_path_factory) -> pathlib.Path:
    from m4mjax import prepare

    midi = tmp_path_factory.mktemp("m4m_midi")
    rng = np.random.default_rng(0)
    for i in range(30):
        write_song(midi / f"song{i:02d}.mid", rng, n_frames=96 + 8 * i)
    out = tmp_path_factory.mktemp("m4m_prepared")
    prepare.prepare(midi, out, workers=1, shard_size=8, progress=False)
    return out


def tiny_config(prepared: pathlib.Path, experiment: str = "lm_pretrain", arg: str = "tiny", **overrides):
    """experiments/m4m/<experiment>.py:<arg> (default tiny) on the dataset folder ``prepared``, on ONE device (a
    1-device mesh compiles a fraction of the 8-device program; the sharding tests set their meshes), with
    dotted-key overrides."""
    from experiments.sweep import load_experiment

    cfg = load_experiment(str(REPO / f"experiments/m4m/{experiment}.py")).get_config(arg)
    cfg.data.name, cfg.data.dir = "prepared", str(prepared)
    cfg.mesh.update(data=1, fsdp=1, tensor=1)
    for k, v in overrides.items():
        node = cfg
        *path, last = k.split(".")
        for p in path:
            node = node[p]
        node[last] = v
    return cfg
