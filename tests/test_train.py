"""m4m run infrastructure through the real entry points: sharding equivalence (1 vs 2x2x2 devices),
large parameters sharded, checkpoint round trip / restore onto another mesh, resume after kill -9,
--dry_run, config typos."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from m4m_fixtures import REPO, one_device_env, tiny_config
from m4mjax import steps as steps_lib, train as train_lib
from m4mjax.run import checkpoint, cli, mesh as mesh_lib, metrics


def _losses(workdir) -> dict[int, float]:
    return {r["step"]: r["train/loss"] for r in metrics.read_metrics(str(workdir)) if "train/loss" in r}


_ONE_VS_EIGHT = {"model.dropout": 0.0, "train.eval_every": 0, "train.ckpt_every": 0}  # ckpt 0: only the final one


@pytest.fixture(scope="module")
def one_device_run(prepared_dir, tmp_path_factory):
    """3 steps of :tiny on one device, dropout and in-training eval off, one (final) checkpoint: the 1-device side
    of test_one_vs_eight_devices_same_loss and the run test_evaluate_and_sample_entry_points scores (one training
    for both: each is compile-bound). Tests using it carry xdist_group("test_train"), so one worker trains it."""
    wd = tmp_path_factory.mktemp("one_device") / "run"
    train_lib.train(tiny_config(prepared_dir, **_ONE_VS_EIGHT), str(wd))
    return wd


@pytest.mark.integration
@pytest.mark.xdist_group("test_train")
def test_one_vs_eight_devices_same_loss(prepared_dir, one_device_run, tmp_path):
    """Same data, same init: 3 steps on 1 device and on a 2x2x2 mesh agree to 1e-4 (f32, dropout off)."""
    cfg = tiny_config(prepared_dir, **_ONE_VS_EIGHT)
    cfg.mesh.update(data=2, fsdp=2, tensor=2)
    train_lib.train(cfg, str(tmp_path / "eight"))
    runs = {"one": _losses(one_device_run), "eight": _losses(tmp_path / "eight")}
    assert json.loads((one_device_run / "config.json").read_text())["mesh"] == dict(data=1, fsdp=1, tensor=1)
    assert sorted(runs["one"]) == [1, 2, 3]
    np.testing.assert_allclose([runs["eight"][s] for s in (1, 2, 3)], [runs["one"][s] for s in (1, 2, 3)],
                               rtol=1e-4)
    assert runs["one"][3] < runs["one"][1]  # it learns


@pytest.mark.integration  # train(dry_run=True)
def test_large_parameters_are_sharded_and_dry_run(prepared_dir, tmp_path, capsys):
    cfg = tiny_config(prepared_dir)
    cfg.mesh.update(data=1, fsdp=4, tensor=2)
    mesh = mesh_lib.make_mesh(cfg.mesh)
    with mesh_lib.use_mesh(mesh):
        s = steps_lib.Setup(cfg, mesh)
    for path, x in jax.tree_util.tree_leaves_with_path(s.abstract[0]):
        if x.size >= 4096:  # "large": >= 16 KiB in f32 (the 3,331-entry head bias is not)
            assert x.sharding.shard_shape(x.shape) != x.shape, f"{jax.tree_util.keystr(path)} {x.shape} replicated"
    info = train_lib.train(cfg, str(tmp_path / "dry"), dry_run=True)
    assert info["param_bytes_per_device"] < 4 * info["params"]  # f32 bytes, divided over devices
    assert info["optimizer_bytes_per_device"] > 0 and '"compile_s"' in capsys.readouterr().out


def test_checkpoint_round_trip_onto_another_mesh(tmp_path):
    x = {"w": jnp.arange(64.0).reshape(8, 8), "layers": {"0": jnp.ones((16,))}}
    mesh_a = mesh_lib.make_mesh(dict(data=8, fsdp=1, tensor=1))
    xa = {"w": jax.device_put(x["w"], mesh_lib.named_sharding(mesh_a, ("batch", None))), "layers": x["layers"]}
    ck = checkpoint.Checkpointer(str(tmp_path), every=5, keep=2)
    assert not ck.save(3, {"params": xa})          # off the interval
    assert ck.save(5, {"params": xa}, {"pos": 7})
    assert ck.save(6, {"params": xa}, force=True)
    ck.close()
    mesh_b = mesh_lib.make_mesh(dict(data=1, fsdp=2, tensor=4))
    sh = mesh_lib.named_sharding(mesh_b, ("mlp", "embed"), (8, 8))
    abstract = {"w": jax.ShapeDtypeStruct((8, 8), jnp.float32, sharding=sh),
                "layers": {"0": jax.ShapeDtypeStruct((16,), jnp.float32, sharding=mesh_lib.named_sharding(mesh_b, ()))}}
    step, items, data = checkpoint.Checkpointer(str(tmp_path), every=5).restore({"params": abstract}, step=5)
    assert step == 5 and data == {"pos": 7}
    assert items["params"]["w"].sharding == sh
    np.testing.assert_array_equal(items["params"]["w"], x["w"])
    np.testing.assert_array_equal(checkpoint.restore_params(str(tmp_path))["w"], x["w"])  # latest = step 6
    with pytest.raises(cli.UserError, match="no such run directory"):
        checkpoint.restore_params(str(tmp_path / "nowhere"))
    with pytest.raises(cli.UserError, match="does not match the model"):
        checkpoint.restore_params(str(tmp_path), {"w": jax.ShapeDtypeStruct((8, 4), jnp.float32)})


def test_keep_every_keeps_every_nth_step_and_a_missing_step_names_those_kept(tmp_path):
    """keep=2, keep_every=4 over steps 1..10: the latest two (9, 10) and the multiples of 4 (4, 8) stay; asking
    restore_params for a step that was not kept is one line listing the kept steps."""
    ck = checkpoint.Checkpointer(str(tmp_path), every=1, keep=2, keep_every=4)
    for i in range(1, 11):
        assert ck.save(i, {"params": {"w": jnp.full((2,), float(i))}})
    ck.close()
    assert sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit()) == [4, 8, 9, 10]
    np.testing.assert_array_equal(checkpoint.restore_params(str(tmp_path), step=4)["w"], [4.0, 4.0])
    with pytest.raises(cli.UserError, match=r"no checkpoint at step 5 \(kept: 4, 8, 9, 10\)"):
        checkpoint.restore_params(str(tmp_path), step=5)


def _cmd(prepared, workdir, *extra):
    return [sys.executable, "-m", "m4mjax.train", "--config=experiments/m4m/lm_pretrain.py:tiny",
            f"--workdir={workdir}", "--config.data.name=prepared", f"--config.data.dir={prepared}",
            "--config.train.eval_every=0", *extra]


@pytest.mark.integration
def test_resume_after_kill_matches_uninterrupted(prepared_dir, tmp_path):
    """kill -9 mid-run, re-run the same command: it resumes at the checkpointed step and data position,
    and ends with the same losses as an uninterrupted run. 20 steps of batch 2 (each of the 3 runs is start-up
    and compile bound; steps 11-20 and the saves at 15 and 20 still leave seconds between checkpoint 10 and the
    end for the kill)."""
    extra = ("--config.train.steps=20", "--config.train.ckpt_every=5", "--config.data.batch_size=2")
    env = one_device_env()
    ref = tmp_path / "ref"
    subprocess.run(_cmd(prepared_dir, ref, *extra), cwd=REPO, env=env, check=True, capture_output=True)
    wd = tmp_path / "killed"
    p = subprocess.Popen(_cmd(prepared_dir, wd, *extra), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (wd / "checkpoints" / "10").exists() and p.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    assert p.wait() == -signal.SIGKILL, "the run ended before it was killed"
    r = subprocess.run(_cmd(prepared_dir, wd, *extra), cwd=REPO, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    m = [ln for ln in r.stderr.splitlines() if ln.startswith("resumed from step")]
    assert m, "second run did not resume"
    resumed = int(m[0].split()[-1])
    assert 10 <= resumed < 20 and resumed % 5 == 0
    a, b = _losses(ref), _losses(wd)
    assert b[20] == pytest.approx(a[20], rel=1e-5)
    logged = [r["step"] for r in metrics.read_metrics(str(wd)) if "train/loss" in r]
    assert logged == list(range(1, 21))  # rows logged between the checkpoint and the kill are not doubled


@pytest.mark.integration
def test_config_typo_names_the_key(prepared_dir, tmp_path):
    r = subprocess.run(_cmd(prepared_dir, tmp_path / "t", "--config.trian.steps=1"), cwd=REPO,
                       capture_output=True, text=True, env=one_device_env())
    assert r.returncode != 0 and "trian" in r.stderr


@pytest.mark.integration
@pytest.mark.xdist_group("test_train")
def test_evaluate_and_sample_entry_points(prepared_dir, one_device_run, tmp_path):
    from m4mjax import evaluate

    wd = tmp_path / "run"
    shutil.copytree(one_device_run, wd)  # a trained :tiny run (evaluate and sample write into it)
    out = evaluate.evaluate(str(wd), ("valid", "test"))
    assert json.loads((wd / "eval.json").read_text())["test"]["tokens"] == out["test"]["tokens"] > 0
    assert out["valid"]["windows"] == out["valid"]["windows_total"] and out["valid"]["covers"].startswith("all ")
    for split in ("valid", "test"):
        assert np.isfinite(out[split]["loss"]) and out[split]["unigram_perplexity"] > 1
    # --data_name scores another dataset with the run's windows, into its own file (eval.json untouched)
    before = (wd / "eval.json").read_text()
    other = evaluate.evaluate(str(wd), ("test",), data_name=str(prepared_dir))
    named = [p.name for p in wd.glob("eval_*.json")]
    assert len(named) == 1 and json.loads((wd / named[0]).read_text())["data"] == str(prepared_dir)
    assert other["test"]["loss"] == pytest.approx(out["test"]["loss"]) and (wd / "eval.json").read_text() == before
    with pytest.raises(ValueError, match="nowhere"):
        evaluate.evaluate(str(wd), ("test",), data_name=str(tmp_path / "nowhere"))
    r = subprocess.run([sys.executable, "-m", "m4mjax.sample", f"--workdir={wd}", f"--out={wd}/s.mid",
                        "--n_frames=4", "--prompt_frames=8", "--num_samples=2"], cwd=REPO, capture_output=True,
                       text=True, env=one_device_env())
    assert r.returncode == 0, r.stderr[-2000:]
    assert (wd / "s.mid").exists() and (wd / "s_1.mid").exists()


def test_partial_validation_spreads_its_windows_over_the_split(prepared_dir):
    """train.eval_batches scores windows evenly spaced over the whole split, not its first (few) songs."""
    from m4mjax.datasets import pipeline

    cfg = tiny_config(prepared_dir)
    full = np.concatenate([b["tokens"][b["mask"]] for b in pipeline.make_dataset(cfg.data, "valid", seed=0)])
    n = len(pipeline.eval_windows(cfg.data, pipeline.open_split(cfg.data, "valid")[1]))
    assert len(full) == n > 3 * cfg.data.batch_size
    picked = [round(i * (n - 1) / (cfg.data.batch_size - 1)) for i in range(cfg.data.batch_size)]
    batches, windows, total = steps_lib.eval_batches(cfg, "valid", max_batches=1)
    (only,) = list(batches)
    assert (windows, total) == (cfg.data.batch_size, n)
    np.testing.assert_array_equal(only["tokens"], full[picked])
    assert picked[-1] == n - 1  # reaches the end of the split
