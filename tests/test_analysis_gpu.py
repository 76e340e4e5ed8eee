"""experiments/m4m/analysis_gpu.sh (issue 23 item 7), the one-command accelerator run, at :tiny on the CPU: the
foundation trained and exported, the four analysis rows trained from it at equal steps, evaluated and exported,
and OUTDIR holding one tar per model (a loadable shipped folder + eval.json) and summary.json, few and small enough
to come back from the accelerator machine (at most 8 files of at most 16 MiB). That end-to-end run takes ~7 min
on this 2-core CPU, so it is in the slow tier (`make test-slow`); `make test` checks the script's refusals."""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import tarfile

import jax
import numpy as np
import pytest
from flax import nnx

from m4m_fixtures import REPO, one_device_env
from test_analysis import analysis_dir  # noqa: F401  (the tiny chord-data folder: synth + RomanText test songs)

SCRIPT = REPO / "experiments" / "m4m" / "analysis_gpu.sh"
ROWS = ("fa_self", "fa_cross", "full", "scratch", "seq2seq")
LM_STEPS, ROW_STEPS, SONGS = 3, 2, 2


def _flat_shapes(tree) -> dict[str, tuple]:
    return {"/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in p): tuple(x.shape)
            for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _model_shapes(cfg) -> dict[str, tuple]:
    """Every parameter's name and shape of the model the config builds (nothing computed)."""
    from m4mjax import tasks

    model = nnx.eval_shape(lambda: tasks.get_task(cfg.get("task", "lm")).build(cfg, nnx.Rngs(0)))
    return _flat_shapes(nnx.state(model, nnx.Param).to_pure_dict())


@pytest.fixture(scope="module")
def gpu_out(prepared_dir, analysis_dir, tmp_path_factory) -> pathlib.Path:  # noqa: F811
    """The script run once: :tiny foundation on the prepared MIDI folder, :tiny rows on the chord-data folder."""
    out = tmp_path_factory.mktemp("analysis_gpu_out")
    env = dict(one_device_env(), PY=sys.executable, VARIANT_LM="tiny", VARIANT="tiny", DATA_LM=str(prepared_dir),
               DATA_ANALYSIS=str(analysis_dir), LM_STEPS=str(LM_STEPS), ROW_STEPS=str(ROW_STEPS), N=str(SONGS),
               WD=str(tmp_path_factory.mktemp("analysis_gpu_wd")),
               LM_ARGS="--config.train.eval_every=0", ROW_ARGS="--config.train.eval_every=0",  # fewer compiles
               PARALLEL="1")  # one at a time: fa_self / full / scratch then reuse each other's compiled programs
    env.pop("OUT", None)
    # 560 s of shares (deadlines): on an idle 2-core CPU the run takes a few minutes (start-up and compiling; the
    # step caps stop it); under make test's 600 s per test
    r = subprocess.run(["bash", str(SCRIPT), "560", str(out)], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=590)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return out


@pytest.mark.slow  # 431 s of make test idle (14 processes, each compiling): `make test-slow` runs it
def test_outdir_holds_a_tar_per_model_and_a_summary_that_come_back(gpu_out):
    names = sorted(os.listdir(gpu_out))
    assert names == sorted(["lm_tiny.tar.gz", "run.log", "summary.json"] +
                           [f"analysis_tiny_{r}.tar.gz" for r in ROWS]), names
    assert len(names) <= 8 and all((gpu_out / n).stat().st_size < 16 * 2 ** 20 for n in names)
    s = json.loads((gpu_out / "summary.json").read_text())
    assert s["equal_steps"] is True and s["lm"]["step"] == LM_STEPS
    assert {r: x["step"] for r, x in s["rows"].items()} == {r: ROW_STEPS for r in ROWS}
    for r in ROWS:
        for name in ("synth_test", "romantext"):
            assert 0.0 <= s["rows"][r]["eval"][name]["majmin"] <= 1.0
        assert np.isfinite(s["rows"][r]["train/loss"]["value"])


def _unpack(gpu_out: pathlib.Path, name: str, dest: pathlib.Path) -> pathlib.Path:
    with tarfile.open(gpu_out / f"{name}.tar.gz") as t:
        assert {m.name.split("/")[0] for m in t.getmembers()} == {name}  # one folder, named as the model
        t.extractall(dest, filter="data")
    return dest / name


@pytest.mark.slow  # 431 s of make test idle (14 processes, each compiling): `make test-slow` runs it
def test_every_model_is_a_loadable_shipped_folder_of_its_config(gpu_out, analysis_dir, tmp_path):  # noqa: F811
    from experiments.sweep import load_experiment
    from m4mjax import runs
    from m4mjax.run import cli

    lm_dir = _unpack(gpu_out, "lm_tiny", tmp_path)
    lm_cfg = cli.load_config(str(lm_dir))
    want = load_experiment(str(REPO / "experiments/m4m/lm_pretrain.py")).get_config("tiny")
    assert lm_cfg.model.width == want.model.width and lm_cfg.model.layers == want.model.layers
    lm = dict(np.load(lm_dir / "params.npz"))
    assert {k: v.shape for k, v in lm.items()} == _model_shapes(want)
    assert json.loads((lm_dir / "source.json").read_text())["step"] == LM_STEPS
    runs.load_run(str(lm_dir), streams=runs.LM_STREAMS)  # the folder opens as a model (names and shapes checked)

    switches = {"fa_self": ("fa_self", "link"), "fa_cross": ("fa_cross", "link"), "full": ("fa_self", "full"),
                "scratch": ("fa_self", "full"), "seq2seq": ("seq2seq", "full")}
    for r in ROWS:
        d = _unpack(gpu_out, f"analysis_tiny_{r}", tmp_path)
        cfg = cli.load_config(str(d))
        assert (cfg.link.kind, cfg.link.train) == switches[r]
        assert bool(cfg.init_from) == (r not in ("scratch", "seq2seq")) and cfg.data.dir == str(analysis_dir)
        params = dict(np.load(d / "params.npz"))
        assert {k: v.shape for k, v in params.items()} == _model_shapes(cfg), r
        assert json.loads((d / "source.json").read_text())["step"] == ROW_STEPS
        ev = json.loads((d / "eval.json").read_text())
        assert ev["step"] == ROW_STEPS and set(ev["sets"]) == {"synth_test", "romantext"}
        for name, scores in ev["sets"].items():
            assert scores["songs"] == SONGS
            for k in ("root", "majmin", "sevenths", "downbeat_f"):
                assert 0.0 <= scores[k] <= 1.0, (r, name, k)
        assert (d / "metrics.jsonl").is_file() and "step" in (d / "train.log").read_text()
        runs.load_run(str(d), streams=runs.TWO_STREAMS)
        if r == "seq2seq":  # its own encoder-decoder from scratch: no foundation weights to compare
            assert "encoder" in " ".join(params) and not cfg.init_from
            continue
        # the rows started from the exported foundation: the link-only rows kept every one of its weights
        shared = {k for k in lm if k in params}
        assert shared and len(shared) == len(lm)
        same = all(np.array_equal(params[k], lm[k]) for k in shared)
        assert same == (cfg.link.train == "link"), r


@pytest.mark.parametrize("missing, says", [
    ("analysis", "no {d}/labels.json (the chord data): carry .gpu_data"),
    ("lm", "no data/tfds/m4m_default (the foundation's corpus): carry .gpu_data"),
])
def test_missing_data_is_one_line_before_anything_runs(missing, says, tmp_path, prepared_dir):
    """Without its data (and no DATA_TAR to unpack) the script stops with one line naming what to carry, before it
    imports JAX or trains anything: the accelerator's minutes are not spent on a run that cannot start."""
    d = tmp_path / "no_chord_data"
    env = dict(one_device_env(), PY=sys.executable, WD=str(tmp_path / "wd"), DATA_TAR=str(tmp_path / "none.tgz"),
               DATA_ANALYSIS=str(d) if missing == "analysis" else str(REPO / "tests"),
               **({"DATA_LM": str(prepared_dir)} if missing == "analysis" else {}))
    env.pop("OUT", None)
    if missing == "lm" and (REPO / "data/tfds/m4m_default/full/1.0.0/dataset_info.json").is_file():
        pytest.skip("this checkout has the corpus; the refusal needs a machine without it")
    r = subprocess.run(["bash", str(SCRIPT), "60", str(tmp_path / "out")], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [f"analysis_gpu: {says.format(d=d)} (scripts/gpu_data.sh) or "
                                             f"data/{'analysis' if missing == 'analysis' else 'tfds/m4m_default'}"]
    assert not (tmp_path / "wd" / "lm").exists()
