"""Does a trained SPS audio encoder key on the training notes' fade-out?

  python -m experiments.symmetry.fade_probe workdirs/sweeps/sps_audio_cpu/sps_vae_k4

Renders single notes of the run's first training instrument (integer MIDI 60-84 and 25 fractional pitches in that range), each with and
without the 512-sample fade the paper's data gives integer training notes (spec §2.1; fractional test notes are
never faded), encodes them with every seed of the workdir and prints the first-note embedding R² per seed for
each case. An encoder that learned pitch scores the same with and without the fade.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from m4mjax.run import cli
from symmetry import audio, metrics
from symmetry import evaluate as evaluate_lib


def probe(workdir: str) -> dict[str, np.ndarray]:
    cfg, _, graphdef, params = evaluate_lib.load_seeds(workdir)
    renderer, (program, _) = audio.NoteRenderer(), audio.instrument(cfg.data.instruments[0])
    encode = jax.jit(lambda p, x: jax.vmap(lambda q: nnx.merge(graphdef, q).encode(x)[0])(p))

    def first_z(pitches, fade):
        x = np.stack([audio.note_features(renderer.render(cfg.data.soundfont, program, float(p), fade=fade),
                                          cfg.data.feature, cfg.data.n_bins) for p in pitches])
        return np.asarray(encode(params, jnp.asarray(x[:, None])))[:, :, 0, 0]     # [seeds, N]

    integer = np.arange(60.0, 85.0)
    fractional = np.round(60 + np.random.default_rng(0).uniform(0, 24, 25), 2)
    return {f"{name} {'faded' if fade else 'unfaded'}": metrics.embedding_r2(p, first_z(p, fade))
            for name, p in (("integer", integer), ("fractional", fractional)) for fade in (True, False)}


def main(argv: list[str] | None = None) -> None:
    """CLI: print the four R² rows of one workdir (a bad workdir is one line, exit 2)."""
    p = cli.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("workdir", help="an SPS audio run directory (symmetry.train)")
    with cli.report_errors("experiments.symmetry.fade_probe"):
        a = p.parse_args(argv)
        cli.load_config(a.workdir)  # fail fast: not a run directory
        results = probe(a.workdir)
    for case, r2 in results.items():
        print(f"{case:18s} R² per seed {np.array2string(r2, precision=3)}  mean {np.nanmean(r2):.3f}")


if __name__ == "__main__":
    main()
