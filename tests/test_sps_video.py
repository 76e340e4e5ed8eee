"""SPS on video: ball physics, renderer, dataset cache, groups, metric, the :tiny run end to end, summary, notebook."""
from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

from sps_fixtures import REPO
from symmetry import ball, data, metrics

VIDEO = str(REPO / "experiments/symmetry/sps_video.py")


# --- physics (§3.1): numbers worked out by hand ----------------------------------------------------------

def test_height_closed_form_by_hand():
    t = np.array([0.0, 0.2, 0.8])
    y = ball.height(np.array([1.0]), np.array([0.0]), t)[0]
    # dropped from 1 m: 1 - 5 t^2 until t1 = sqrt(0.2); rebound at 0.9 * sqrt(20) m/s
    t1, u = math.sqrt(0.2), 0.9 * math.sqrt(20.0)
    assert y[0] == pytest.approx(1.0) and y[1] == pytest.approx(0.8)
    assert y[2] == pytest.approx(u * (0.8 - t1) - 5 * (0.8 - t1) ** 2)
    assert y[2] == pytest.approx(0.79765, abs=1e-4)
    # thrown up at 5 m/s: apex 1 + 25/20 = 2.25 m at t = 0.5
    assert ball.height(np.array([1.0]), np.array([5.0]), np.array([0.5]))[0, 0] == pytest.approx(2.25)


def test_bounce_keeps_81_percent_of_energy():
    """Each rebound apex is 0.81 of the previous one (19 % energy loss per bounce)."""
    t = np.linspace(0, 12, 240_001)
    y = ball.height(np.array([1.0]), np.array([3.0]), t)[0]
    contacts = np.flatnonzero((y[1:-1] <= y[:-2]) & (y[1:-1] < y[2:]) & (y[1:-1] < 1e-3)) + 1
    apexes = [y[a:b].max() for a, b in zip(contacts[:-1], contacts[1:])]
    first = 1 + 9 / 20                                                   # 1 + v^2 / 2g
    np.testing.assert_allclose(apexes[:4], first * 0.81 ** np.arange(1, 5), rtol=1e-3)
    assert y.min() >= 0.0


def test_initial_states_and_trajectories():
    pos0, vel0 = ball.initial_states(np.random.default_rng(0), 3000)
    assert np.all(pos0[:, 1] == 1.0)
    in_region = np.zeros(3000, bool)
    for (xr, zr, vxr, vyr, vzr) in ball.REGIONS:
        ok = np.ones(3000, bool)
        for v, (lo, hi) in zip((pos0[:, 0], pos0[:, 2], vel0[:, 0], vel0[:, 1], vel0[:, 2]), (xr, zr, vxr, vyr, vzr)):
            ok &= (v >= lo) & (v <= hi)
        in_region |= ok
    assert in_region.all()
    traj = ball.trajectories(pos0[:5], vel0[:5])
    assert traj.shape == (5, 20, 3)
    np.testing.assert_allclose(traj[:, 7, 0], pos0[:5, 0] + 1.4 * vel0[:5, 0])   # constant horizontal velocity
    np.testing.assert_allclose(traj[:, 7, 2], pos0[:5, 2] + 1.4 * vel0[:5, 2])
    np.testing.assert_array_equal(ball.make_trajectories(4, 3), ball.make_trajectories(4, 3))


# --- renderer (§3.2) ---------------------------------------------------------------------------------------

def test_ball_pixels_where_the_camera_puts_them():
    """Ball at (0, 1, 0): eye (0,4,2) -> offset (0,-3,-2); forward (0,-4,-7)/sqrt65 gives depth 26/sqrt65, camera
    up (0,7,-4)/sqrt65 gives -13/sqrt65 -> y_ndc = -0.5/0.8 = -0.625 -> row 26.0, col 16 of 32."""
    np.testing.assert_allclose(ball.project(ball.to_gl(np.array([0.0, 1.0, 0.0])), 32), [26.0, 16.0], atol=1e-9)
    np.testing.assert_allclose(ball.camera_depth(np.array([[0.0, 1.0, 0.0], [0.0, 1.0, 1.0]])),
                               [26 / math.sqrt(65), 33 / math.sqrt(65)], atol=1e-12)   # physics z=1 is GL -1: deeper
    img = ball.render(np.array([[0.0, 1.0, 0.0]]))[0].astype(int)
    for r, c in ((26, 16), (25, 15), (24, 17)):
        assert img[r, c, 1] > 200 and img[r, c, 0] < 40 and img[r, c, 2] < 40, (r, c, img[r, c])
    assert img[..., 1].max() >= 250                                   # lit face: min(1, 0.9 * (0.2 + 1))
    bg = np.round(ball.background(32) * 255).astype(int)
    far = np.abs(np.arange(32)[:, None] - 26) + np.abs(np.arange(32)[None] - 16) > 10
    np.testing.assert_array_equal(img[far], bg[far])                   # nothing else changed
    assert (bg[0] == 102).all()                                        # above the far-clipped grid: grey 0.4
    assert bg[20:].min() < 90                                          # grid lines on the floor
    far_away = ball.render(np.array([[0.0, 1.0, 40.0]]))[0]            # beyond the far plane (depth > 15)
    np.testing.assert_array_equal(far_away, bg)


def test_window_render_equals_full_frame_and_visibility():
    pos = ball.make_trajectories(6, 0)
    a = ball.render(pos).astype(int)
    b = ball.render(pos, window=32).astype(int)
    assert a.shape == (6, 20, 32, 32, 3) and np.abs(a - b).max() <= 1
    high = np.array([[[0.0, 4.2, 0.0]]])                               # nearest to the camera: the largest ball
    np.testing.assert_allclose(ball.render(high).astype(int), ball.render(high, window=32).astype(int), atol=1)
    v = ball.visible(np.stack([a[0].astype(np.uint8), np.full_like(a[0], 102, dtype=np.uint8)]))
    assert v.tolist() == [True, False]


# --- dataset cache ----------------------------------------------------------------------------------------

def test_ball_dataset_cache_and_splits(tmp_path):
    cfg = data.ball_data_config()
    cfg.update(dir=str(tmp_path), train_pool=6, train_size=4, eval_size=3, frames=5)
    tr = data.build_dataset(cfg, "train")
    assert tr["x"].shape == (4, 5, 32, 32, 3) and tr["x"].dtype == np.uint8 and tr["position"].shape == (4, 5, 3)
    np.testing.assert_allclose(tr["position"], ball.make_trajectories(6, 0, frames=5)[:4], rtol=1e-6)
    np.testing.assert_array_equal(tr["x"], ball.render(tr["position"].astype(np.float64)))
    key = data.ball_settings_key(cfg, "train")[0]
    cfg.train_size = 6                                                 # same pool, same cache
    assert data.ball_settings_key(cfg, "train")[0] == key
    again = data.build_dataset(cfg, "train")
    np.testing.assert_array_equal(again["x"][:4], tr["x"])
    assert len(list((tmp_path / "sps_ball").iterdir())) == 1
    ev = data.build_dataset(cfg, "eval")
    assert ev["x"].shape == (3, 5, 32, 32, 3) and not np.allclose(ev["position"][:, 0], again["position"][:3, 0])
    k1 = data.ball_settings_key(cfg, "train")[0]
    cfg.train_seed = 5
    assert data.ball_settings_key(cfg, "train")[0] != k1
    cfg.train_size = 7
    with pytest.raises(ValueError, match="train_size=7"):
        data.build_dataset(cfg, "train")
    bad = data.ball_data_config()
    bad.soundfont = "x"
    with pytest.raises(ValueError, match="soundfont"):
        data.ball_settings_key(bad, "train")


# --- groups and losses (§5.2-5.3, §7.4) ------------------------------------------------------------------

def test_ball_group_paths_and_wrong_groups():
    import jax
    import jax.numpy as jnp

    from symmetry.groups import make_group
    from symmetry.losses import make_groups
    from symmetry.model import ball_config

    paths = dict(make_groups(ball_config()))
    assert list(paths) == ["translate", "rotate_y"]                     # two separate paths, never composed
    z = jax.random.normal(jax.random.key(0), (5, 4, 3))
    t = paths["translate"].sample(jax.random.key(1), 5)
    np.testing.assert_array_equal(paths["translate"].apply(t, z)[..., 1], z[..., 1])          # height untouched
    r = paths["rotate_y"].sample(jax.random.key(2), 5)
    zr = paths["rotate_y"].apply(r, z)
    c, s = np.cos(np.asarray(r))[:, None], np.sin(np.asarray(r))[:, None]
    np.testing.assert_allclose(zr[..., 0], c * z[..., 0] + s * z[..., 2], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(zr[..., 2], -s * z[..., 0] + c * z[..., 2], rtol=1e-5, atol=1e-6)
    # T1R2 = translate z0, then rotate (z0, z2); its inverse undoes both in reverse order
    g = make_group("T1R2", 3, t_range=1.0)
    (tp, th) = g.sample(jax.random.key(3), 5)
    manual = make_group("R2", 3).apply(th, make_group("T1", 3, t_range=1.0).apply(tp, z))
    np.testing.assert_allclose(g.apply((tp, th), z), manual, rtol=1e-6)
    np.testing.assert_allclose(g.inverse((tp, th), g.apply((tp, th), z)), z, atol=1e-5)
    # T2 of the wrong-group study translates (z0, z1) (spec §5.6), unlike the main path's (z0, z2)
    t2 = make_group("T2", 3, t_range=1.0).sample(jax.random.key(4), 100)
    assert float(jnp.abs(t2[:, 2]).max()) == 0 and float(jnp.abs(t2[:, 1]).max()) > 0.5
    for name in ("T2", "R2", "T1R2", "T3R2", "T2R3"):
        cfg = ball_config(groups=(name,), K=1, ball_channels=(4, 8, 8), rnn_hidden=8)
        assert [n for n, _ in make_groups(cfg)] == [name]


def test_wrong_group_loss_terms():
    """One augmentation path named after the group, with the prediction-to-prediction (SRS) term (traced only)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from symmetry.losses import sps_loss
    from symmetry.model import SPSModel, ball_config

    cfg = ball_config(groups=("T2R3",), K=1, ball_channels=(4, 8, 8), rnn_hidden=8, variant="ae")
    x = jax.ShapeDtypeStruct((2, 6, 32, 32, 3), jnp.float32)
    fn = lambda x: sps_loss(SPSModel(cfg, rngs=nnx.Rngs(0)), x, jnp.int32(0), jax.random.key(1), cfg)  # noqa: E731
    _, terms = jax.eval_shape(fn, x)
    assert {k for k in terms if "/" in k} == {"sym_z/T2R3", "sym_x/T2R3", "srs/T2R3"}


# --- metric (§7.2) ------------------------------------------------------------------------------------------

def test_per_axis_linear_projection():
    rng = np.random.default_rng(0)
    pos = rng.normal(size=(2000, 3)) * [1.0, 3.0, 0.5] + 4
    z = np.stack([2 * pos[:, 0] - pos[:, 1], pos[:, 1] + 7, rng.normal(size=2000)], -1)    # z axis unexplained
    out = metrics.linear_projection_mse(z, pos)
    np.testing.assert_allclose(out["per_axis"][:2], 0, atol=1e-12)
    assert out["per_axis"][2] == pytest.approx(1.0, abs=0.01) and out["mean"] == pytest.approx(1 / 3, abs=0.01)


# --- experiment file ----------------------------------------------------------------------------------------

def test_video_config_and_sweep():
    from experiments.sweep import commands, load_experiment
    from m4mjax.run.cli import UserError

    exp = load_experiment(VIDEO)
    flat = lambda c: {f"{g}.{k}": v for g in ("data", "model", "train") for k, v in c[g].items()}  # noqa: E731
    paper, cpu = flat(exp.get_config("paper")), flat(exp.get_config("cpu"))
    changed = {k for k in paper if paper[k] != cpu[k]} - {"train.log_every", "train.ckpt_every"}
    assert changed and changed <= set(exp.REDUCTIONS), changed - set(exp.REDUCTIONS)
    p = exp.get_config("paper")
    assert (p.model.batch_size, p.model.K, p.model.w_sym_z, p.model.w_srs, p.model.base_len, p.model.ss_beta,
            p.train.steps, p.data.train_size, p.model.groups) == (32, 4, 2.0, 2.0, 5, 6000.0, 80_001, 512,
                                                                  ("translate", "rotate_y"))
    with pytest.raises(UserError):
        exp.get_config("bogus")
    cmds = commands(f"{VIDEO}:paper", "w")
    names = [c[4].split("=", 1)[1] for c in cmds]
    assert len(cmds) == 5 + 16 + 11 + 4 + 2
    assert "w/sps_video_paper/data_size_k/n2048_k16" in names and "w/sps_video_paper/wrong_group/T2R3_k4" in names
    t2r3 = cmds[names.index("w/sps_video_paper/wrong_group/T2R3_k4")]
    assert "--config.model.groups=('T2R3',)" in t2r3 and "--config.num_seeds=6" in t2r3
    assert "--config.train.steps=150001" in t2r3 and "--config.model.ss_beta=8000.0" in t2r3
    assert all("--config.train.steps" not in a for a in commands(f"{VIDEO}:cpu", "w")[0])


# --- the :tiny run end to end: train, evaluate, summary, notebook -----------------------------------------

@pytest.fixture(scope="module")
def ball_root(tmp_path_factory):
    """ROOT/groups/sps_vae_k4: 2 seeds x 3 steps of :tiny through the real entry points, evaluated."""
    from experiments.sweep import load_experiment
    from symmetry import evaluate, train

    cfg = load_experiment(VIDEO).get_config("tiny")
    cfg.data.dir = str(REPO / "data/sps")
    cfg.mesh.fsdp = 2  # one fake device per seed (the default mesh would replicate 2 seeds on all 8)
    root = tmp_path_factory.mktemp("sps_video")
    train.train(cfg, str(root / "groups/sps_vae_k4"))
    evaluate.evaluate(str(root / "groups/sps_vae_k4"))
    return root


def test_tiny_run_eval_json(ball_root):
    wd = ball_root / "groups/sps_vae_k4"
    ev = json.loads((wd / "eval.json").read_text())
    assert ev["kind"] == "ball" and ev["num_seeds"] == 2 and ev["sequences"] == 8
    lp = ev["linear_proj_mse"]
    for axis in ("x", "y", "z", "mean"):
        assert len(lp[axis]["per_seed"]) == 2 and 0 <= lp[axis]["mean"] <= 1.0 + 1e-9
    np.testing.assert_allclose(np.mean([lp[a]["per_seed"] for a in "xyz"], 0), lp["mean"]["per_seed"])
    with np.load(wd / "eval_latents.npz") as d:
        assert d["mu"].shape == (2, 4, 8, 3) and d["position"].shape == (4, 8, 3)
    assert len(ev["depth_exponent"]["per_seed"]) == 2 and np.all(np.isfinite(ev["depth_exponent"]["per_seed"]))
    rows = [json.loads(line) for line in (wd / "metrics.jsonl").read_text().splitlines()]
    assert {"train/srs/translate", "train/sym_x/rotate_y"} <= set(rows[-1])


def _fake_point(src, dst, mean, **overrides):
    """A copy of a workdir whose config and eval.json say `overrides` and per-seed mean MSE `mean`."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("checkpoints", "tb"))
    cfg = json.loads((dst / "config.json").read_text())
    for k, v in overrides.items():
        sec, key = k.split(".")
        cfg[sec][key] = v
    (dst / "config.json").write_text(json.dumps(cfg))
    ev = json.loads((dst / "eval.json").read_text())
    ev["linear_proj_mse"]["mean"]["per_seed"] = list(mean)
    (dst / "eval.json").write_text(json.dumps(ev))


def test_summary_tables_and_box_plots(ball_root, tmp_path):
    from symmetry import summary

    src = ball_root / "groups/sps_vae_k4"
    root = tmp_path / "sweep"
    shutil.copytree(src, root / "groups/sps_vae_k4", ignore=shutil.ignore_patterns("checkpoints", "tb"))
    for n in (256, 512):
        for k in (0, 4):
            _fake_point(src, root / f"data_size_k/n{n}_k{k}", [0.5 - k / 10, 0.4 - k / 10], **{"data.train_size": n,
                                                                                               "model.K": k})
    _fake_point(src, root / "wrong_group/T2_k4", [0.3, 0.2], **{"model.groups": ["T2"]})
    md = summary.summarize(str(root), str(tmp_path / "out"))
    assert "Table C." in md and "| SPS_VAE, K=4 (ours) [groups/sps_vae_k4] |" in md
    ev = json.loads((src / "eval.json").read_text())["linear_proj_mse"]["x"]
    assert f"{ev['mean']:.3f} ± {ev['std']:.3f}" in md
    assert "| train_size = 256 | K=4 | 0.050 [0.000–0.100] | 0.050 ± 0.050 | 2 |" in md
    for study in ("groups", "data_size_k", "wrong_group"):
        png = (tmp_path / "out" / f"box_{study}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5_000
    from symmetry import summary_ball
    rows = [r for r in summary.collect(str(root))[0] if summary_ball.is_ball(r.runs[0].config)]
    panels = summary_ball.boxes("data_size_k", summary_ball.studies(rows, str(root))["data_size_k"], str(root))
    assert [p for p, _ in panels] == ["train_size = 256", "train_size = 512"]
    assert [n for n, _ in panels[0][1]] == ["K=0", "K=4"]


nbformat = pytest.importorskip("nbformat")


def test_ball_notebook(ball_root, monkeypatch, tmp_path):
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    src = ball_root / "groups/sps_vae_k4"
    sweep = tmp_path / "sweep"
    for n, k in ((256, 0), (256, 4)):
        _fake_point(src, sweep / f"data_size_k/n{n}_k{k}", [0.4 - k / 20, 0.3], **{"data.train_size": n, "model.K": k})
    monkeypatch.setenv("SPS_BALL_WORKDIR", str(src))
    monkeypatch.setenv("SPS_BALL_SWEEP", str(sweep))
    nb = nbformat.read(REPO / "notebooks/ball_latents.ipynb", as_version=4)
    assert any("parameters" in c.metadata.get("tags", []) for c in nb.cells)
    nbclient.NotebookClient(nb, timeout=600, startup_timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(REPO / "notebooks")}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 3   # 3-D latents, traversals, K x data size
