"""KV-cache sampling: determinism, EOS/PAD layout, batching, and agreement with full forward passes."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from m4m_fixtures import random_frames
from m4mjax.model import M4MTransformer, model_config
from m4mjax.sampling import generate, sample_logits


def tiny_cfg():
    cfg = model_config(0)
    cfg.update(width=32, layers=2, heads=2, ffn=64, local_layers=1, local_heads=2, local_ffn=32, max_frame_tokens=7)
    return cfg


@pytest.fixture(scope="module")
def model():
    return M4MTransformer(tiny_cfg(), rngs=nnx.Rngs(0))


def prompts(cfg, B=3, F0=4, seed=0):
    return random_frames(cfg, B, F0, seed)


def check_layout(rows, cfg):
    for row in np.asarray(rows).reshape(-1, cfg.max_frame_tokens):
        eos = np.flatnonzero(row == cfg.eos_id)
        assert len(eos) == 1, row
        assert (row[eos[0] + 1:] == cfg.pad_id).all(), row
        assert (row[:eos[0]] < cfg.sos_id).all(), row  # only normal tokens before EOS


def test_generate_deterministic_layout_and_prompt_kept(model):
    cfg = model.cfg
    p = prompts(cfg)
    a = generate(model, p, 5, jax.random.key(0))
    b = generate(model, p, 5, jax.random.key(0))
    c = generate(model, p, 5, jax.random.key(1))
    assert a.shape == (3, 9, cfg.max_frame_tokens)
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()
    np.testing.assert_array_equal(a[:, :4], p)
    check_layout(a[:, 4:], cfg)
    # the same program as above (temperature and top_p are traced; n_frames and shapes are not)
    check_layout(generate(model, p, 5, jax.random.key(2), temperature=1.5, top_p=0.9)[:, 4:], cfg)


def test_greedy_matches_full_forward_and_single_prompts(model):
    """Cached greedy decoding == argmax of teacher-forced full passes; a batch == its prompts one by one."""
    cfg = model.cfg
    p = prompts(cfg, seed=1)
    n, L = 5, cfg.max_frame_tokens  # the batch's program is test_generate_deterministic...'s (same shapes)
    out = np.asarray(generate(model, p, n, jax.random.key(0), temperature=0.0))
    fwd = nnx.jit(lambda m, t: m(t))
    buf = np.concatenate([np.asarray(p), np.full((3, n, L), cfg.pad_id, np.int32)], 1)
    done = np.zeros(3, bool)
    for f in range(4, 4 + n):
        done[:] = False
        for i in range(L):
            logits = np.array(fwd(model, jnp.asarray(buf))[:, f, i])
            logits[:, [cfg.sos_id, cfg.pad_id]] = -np.inf
            tok = np.where(i == L - 1, cfg.eos_id, logits.argmax(-1))
            tok = np.where(done, cfg.pad_id, tok)
            buf[:, f, i] = tok
            done |= tok == cfg.eos_id
    np.testing.assert_array_equal(out, buf)
    for b in range(3):
        single = generate(model, p[b:b + 1], n, jax.random.key(0), temperature=0.0)
        np.testing.assert_array_equal(single[0], out[b])


def test_empty_prompt_and_bad_input(model):
    cfg = model.cfg
    out = generate(model, jnp.zeros((2, 0, cfg.max_frame_tokens), jnp.int32), 2, jax.random.key(0))
    assert out.shape == (2, 2, cfg.max_frame_tokens)
    check_layout(out, cfg)
    with pytest.raises(ValueError, match="prompt"):
        generate(model, jnp.zeros((2, 3, 5), jnp.int32), 2, jax.random.key(0))


@jax.jit
def _draws(logits, keys, temperature, top_p):
    """sample_logits(logits [1,V]) once per key, in one compiled program (shared by the tests below)."""
    return jax.vmap(lambda k: sample_logits(logits, k, temperature, top_p))(keys)


def test_top_p_keeps_only_the_nucleus():
    logits = jnp.asarray(np.log(np.array([[0.6, 0.3, 0.05, 0.05]], np.float32)))
    keys = jax.random.split(jax.random.key(0), 200)
    draws = _draws(logits, keys, jnp.float32(1.0), jnp.float32(0.8))
    assert set(np.unique(draws)) == {0, 1}
    greedy = _draws(logits, keys, jnp.float32(0.0), jnp.float32(1.0))  # temperature 0: the argmax, every key
    assert (np.asarray(greedy) == 0).all()


def _nucleus_by_sorting(p: np.ndarray, top_p: float) -> set[int]:
    """Independent reference: sort descending, keep the shortest prefix whose mass reaches top_p (+ ties)."""
    order = np.argsort(-p, kind="stable")
    n = int(np.searchsorted(np.cumsum(p[order]), top_p) + 1)
    return set(np.flatnonzero(p >= p[order][n - 1] - 1e-9).tolist())


@pytest.mark.parametrize("spread", [4.0, 0.05])  # peaked row (top-64 fast path) / flat row (bisection fallback)
def test_sampled_frequencies_follow_the_renormalised_nucleus(spread):
    rng = np.random.default_rng(0)
    V, top_p, n = 300, 0.9, 6000
    logits = (rng.normal(size=V) * spread).astype(np.float32)
    p = np.exp(logits - logits.max())
    p /= p.sum()
    kept = _nucleus_by_sorting(p, top_p)
    assert (len(kept) > 64) == (spread < 1)  # the flat row really needs the fallback
    draws = np.asarray(_draws(jnp.asarray(logits[None]), jax.random.split(jax.random.key(1), n), jnp.float32(1.0),
                              jnp.float32(top_p)))
    assert set(np.unique(draws)) <= kept
    want = np.zeros(V)
    want[list(kept)] = p[list(kept)] / p[list(kept)].sum()
    got = np.bincount(draws.ravel(), minlength=V) / n
    assert 0.5 * np.abs(got - want).sum() < (0.06 if spread > 1 else 0.2)  # total variation (flat: 270 cells)
    if spread < 1:  # the draws reach beyond the 64 most likely tokens
        assert len(set(np.unique(draws)) - set(np.argsort(-p)[:64].tolist())) > 50
    # temperature 2 flattens the same row: the top token's share drops toward its tempered probability
    hot = np.asarray(_draws(jnp.asarray(logits[None]), jax.random.split(jax.random.key(2), n), jnp.float32(2.0),
                            jnp.float32(1.0)))
    q = np.exp(logits / 2 - (logits / 2).max())
    q /= q.sum()
    assert abs((hot == p.argmax()).mean() - q.max()) < 4 * np.sqrt(q.max() * (1 - q.max()) / n) + 1e-3


def test_inverse_cdf_never_returns_a_zero_weight_token():
    from m4mjax.sampling import _inverse_cdf

    _inverse_cdf = jax.jit(_inverse_cdf)  # one program per shape (eager: one per primitive)
    w = np.zeros((3, 3331), np.float32)  # like banned SOS/PAD at the end of the vocabulary
    w[0, [5, 700, 3300]] = [0.2, 0.3, 0.5]
    w[1, :3328] = 1.0
    w[2, 64] = 1.0  # one token, first of its block
    for u in (0.0, 0.2 - 1e-7, 0.2, 0.5, 1.0 - 1e-7, np.nextafter(np.float32(1), np.float32(0))):
        got = np.asarray(_inverse_cdf(jnp.asarray(w), jnp.full((3,), u, jnp.float32)))
        assert (w[np.arange(3), got] > 0).all(), (u, got)
    want0 = [5, 5, 700, 700, 3300, 3300]  # the CDF written out: [0, .2) -> 5, [.2, .5) -> 700, [.5, 1) -> 3300
    got0 = [int(_inverse_cdf(jnp.asarray(w[:1]), jnp.full((1,), u, jnp.float32))[0])
            for u in (0.0, 0.19, 0.21, 0.49, 0.51, 0.999)]
    assert got0 == want0


# ------------------------------------------------------------------------------------ the written MIDI file
# Hand-written from the official DURATION_TEMPLATES (16th-note frames per duration class).
CLASS_FRAMES = {0: 1, 3: 4, 7: 16, 19: 1024}


def _row(pairs, L=33):
    """One frame's token row: (instrument, pitch, duration class) notes, then EOS, then PAD."""
    row = [x for ins, p, d in pairs for x in (ins, p + (d + 1) * 128)] + [3329]
    return row + [3330] * (L - len(row))


def _prompt_midi(path):
    """A hand-made prompt: 90 qpm and 3/4 at the start, 100 qpm from beat 3 (frame 8), 4/4 only at frame 40."""
    import symusic

    s = symusic.Score(96)
    s.tempos.extend([symusic.Tempo(0, qpm=90.0), symusic.Tempo(2 * 96, qpm=100.0)])
    s.time_signatures.extend([symusic.TimeSignature(0, 3, 4), symusic.TimeSignature(10 * 96, 4, 4)])
    t = symusic.Track(program=33)
    for q in range(12):  # a quarter note on every beat, 48 frames
        t.notes.append(symusic.Note(q * 96, 96, 40 + q, 90))
    s.tracks.append(t)
    s.dump_midi(str(path))


def test_sampled_file_has_prompt_timing_cut_notes_and_sampled_length(tmp_path):
    from m4mjax.sampling import load_prompt, write_samples
    from smf import read_smf

    _prompt_midi(tmp_path / "prompt.mid")
    prompt, timing = load_prompt(str(tmp_path / "prompt.mid"), 16, 33)
    assert prompt.shape == (16, 33)
    # the prompt's 4 quarter notes (class 3 = 4 frames) at frames 0, 4, 8, 12, program 33
    assert [list(prompt[f, :3]) for f in (0, 4)] == [[33, 40 + 4 * 128, 3329], [33, 41 + 4 * 128, 3329]]
    sampled = [_row([])] * 8
    sampled[4] = _row([(33, 30, 19), (0, 72, 7)])  # frame 20: a 1024-frame bass note and a 16-frame note
    sampled[6] = _row([(127, 36, 0), (0, 60, 3)])  # frame 22: a drum hit (1 frame) and a 4-frame note
    tokens = np.concatenate([prompt, np.array(sampled, np.int32)])[None].repeat(2, 0)
    paths = write_samples(tokens, str(tmp_path / "out.mid"), timing)
    assert paths == [str(tmp_path / "out.mid"), str(tmp_path / "out_1.mid")]
    for p in paths:
        smf = read_smf(p)
        tick = smf.tpq // 4  # ticks per frame
        assert smf.tempos == [(0, 666667), (8 * tick, 600000)]  # 90 then 100 qpm, in microseconds per quarter
        assert smf.time_signatures == [(0, 3, 4)]               # the 4/4 at frame 40 is past the prompt
        assert smf.end == 24 * tick                             # 16 prompt + 8 sampled frames, not a note more
        got = sorted((pitch, on // tick, (off - on) // tick) for ch, pitch, on, off in smf.notes)
        want = sorted([(40 + q, 4 * q, 4) for q in range(4)] + [(30, 20, 4), (72, 20, 4), (36, 22, 1), (60, 22, 2)])
        assert got == want
        for pitch, on, length in got:
            cls = {30: 19, 72: 7, 36: 0, 60: 3}.get(pitch, 3)
            assert length <= CLASS_FRAMES[cls]
        assert all(off <= smf.end for *_, off in smf.notes)


def test_sampled_file_without_prompt_is_120_qpm_4_4(tmp_path):
    from m4mjax.sampling import write_samples
    from smf import read_smf

    tokens = np.array([_row([(0, 60, 19)])] + [_row([])] * 3, np.int32)[None]
    (path,) = write_samples(tokens, str(tmp_path / "s.mid"))
    smf = read_smf(path)
    assert smf.tempos == [(0, 500000)] and smf.time_signatures == [(0, 4, 4)]
    assert smf.end == 4 * smf.tpq // 4 and smf.notes == [(0, 60, 0, smf.end)]


@pytest.mark.slow  # trains a :tiny run (~1 min on 2 busy cores); the writer itself is tested above
@pytest.mark.integration
def test_sample_command_writes_playable_midi(tmp_path):
    """`python -m m4mjax.sample --prompt=...` on a trained :tiny run: the prompt's tempo and metre, the file
    ends at prompt + sampled frames, no note outlasts its duration class."""
    import subprocess
    import sys

    from m4m_fixtures import REPO, tiny_config, write_song
    from m4mjax import prepare, train as train_lib
    from smf import read_smf

    rng = np.random.default_rng(0)
    for i in range(10):
        write_song(tmp_path / "midi" / f"s{i}.mid", rng, n_frames=64)
    prepare.prepare(tmp_path / "midi", tmp_path / "prepared", workers=1, shard_size=8, progress=False)
    wd = tmp_path / "run"
    train_lib.train(tiny_config(tmp_path / "prepared", **{"train.steps": 1, "train.eval_every": 0}), str(wd))
    _prompt_midi(tmp_path / "prompt.mid")
    r = subprocess.run([sys.executable, "-m", "m4mjax.sample", f"--workdir={wd}", f"--prompt={tmp_path}/prompt.mid",
                        f"--out={tmp_path}/s.mid", "--prompt_frames=16", "--n_frames=6"], cwd=REPO,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    smf = read_smf(tmp_path / "s.mid")
    tick = smf.tpq // 4
    assert smf.tempos == [(0, 666667), (8 * tick, 600000)] and smf.time_signatures == [(0, 3, 4)]
    assert smf.end == 22 * tick
    assert all(off - on <= 1024 * tick and off <= smf.end for _, _, on, off in smf.notes)
