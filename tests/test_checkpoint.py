"""Checkpoints never lose work and never spew: a damaged latest step falls back (train) or fails in one line
(sample / evaluate); metrics.jsonl holds every step once after a resume; the progress line and its MFU."""
from __future__ import annotations

import io as pyio
import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from m4m_fixtures import REPO, one_device_env, tiny_config
from m4mjax.run import metrics


def _truncate_biggest(step_dir: pathlib.Path) -> pathlib.Path:
    """Damage a checkpoint the way a full disk or a killed copy does: cut its largest params file."""
    f = max((p for p in (step_dir / "params").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    os.truncate(f, 100)
    return f


@pytest.fixture(scope="module")
def run4(prepared_dir, tmp_path_factory):
    """A :tiny run of 4 steps with checkpoints at steps 2 and 4 (eval off: not what these tests are about)."""
    from m4mjax import train

    wd = tmp_path_factory.mktemp("ckpt") / "run"
    train.train(tiny_config(prepared_dir, **{"train.steps": 4, "train.ckpt_every": 2, "train.eval_every": 0}), str(wd))
    assert sorted(os.listdir(wd / "checkpoints")) == ["2", "4"]
    return wd


def _train_rows(wd) -> list[dict]:
    return [r for r in metrics.read_metrics(str(wd)) if "train/loss" in r]


def test_damaged_latest_checkpoint_falls_back_and_metrics_stay_unique(run4, prepared_dir, tmp_path, capsys):
    from m4mjax import train

    wd = tmp_path / "run"
    shutil.copytree(run4, wd)
    before = {r["step"]: r["train/loss"] for r in _train_rows(wd)}
    _truncate_biggest(wd / "checkpoints" / "4")
    with open(wd / "metrics.jsonl", "a") as f:  # a kill mid-write leaves a torn row behind
        f.write('{"step": 4, "train/lo')
    capsys.readouterr()
    train.train(tiny_config(prepared_dir, **{"train.steps": 4, "train.ckpt_every": 2, "train.eval_every": 0}), str(wd))
    err = capsys.readouterr().err.splitlines()
    about = [ln for ln in err if "unreadable" in ln]
    assert len(about) == 1, err
    assert about[0].startswith(f"checkpoint step 4 in {wd} is unreadable (") and "falling back to step 2" in about[0]
    assert "Traceback" not in "\n".join(err)
    assert "resumed from step 2" in err
    assert any(ln.startswith("step 3/4  first step") for ln in err), err  # the first step after a resume is shown
    assert (wd / "unreadable_checkpoints" / "4").is_dir() and (wd / "checkpoints" / "4").is_dir()  # re-saved
    rows = _train_rows(wd)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]  # every step once, the torn row gone
    assert {r["step"]: r["train/loss"] for r in rows} == pytest.approx(before, rel=1e-6)  # steps 3-4 redone from 2


def test_metrics_rows_after_the_checkpoint_are_dropped_on_resume(tmp_path):
    """A run killed at step 4 with its last checkpoint at 2: rows 3-4 (and a torn line) go, atomically."""
    rows = [{"step": s, "train/loss": 10.0 - s} for s in (1, 2, 3, 4)] + [{"step": 2, "valid/loss": 9.5}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 5, "tr')
    assert metrics.truncate_metrics(str(tmp_path), 2) == 3
    assert metrics.read_metrics(str(tmp_path)) == [rows[0], rows[1], rows[4]]
    assert os.listdir(tmp_path) == ["metrics.jsonl"]  # no temp file left behind
    assert metrics.truncate_metrics(str(tmp_path), 0) == 3  # a fresh start keeps nothing
    assert (tmp_path / "metrics.jsonl").read_text() == ""


@pytest.mark.parametrize("command", ["m4mjax.sample", "m4mjax.evaluate"])
def test_damaged_final_checkpoint_is_one_line_for_readers(run4, tmp_path, command):
    wd = tmp_path / "run"
    shutil.copytree(run4, wd)
    _truncate_biggest(wd / "checkpoints" / "4")
    extra = [f"--out={tmp_path}/s.mid", "--n_frames=2", "--prompt_frames=4"] if command == "m4mjax.sample" else []
    r = subprocess.run([sys.executable, "-m", command, f"--workdir={wd}", *extra], cwd=REPO, capture_output=True,
                       text=True, env=one_device_env(), timeout=600)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2, r.stderr[-3000:]
    assert len(lines) == 1, r.stderr[-3000:]
    assert lines[0].startswith(f"{command}: error: checkpoint step 4 is unreadable (")
    assert str(wd / "checkpoints" / "4" / "params") in lines[0]
    assert not (tmp_path / "s.mid").exists() and not (wd / "eval.json").exists()


def test_progress_line_prints_the_first_step_and_says_mfu_na_without_a_peak():
    out = pyio.StringIO()
    p = metrics.Progress(10, start_step=4, units_per_step=100, unit="frames", flops_per_step=1e9, stream=out)
    assert p.update(5, "loss 1.0") == {}
    r = p.update(6)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("step 5/10  first step ") and "(compile included)" in lines[0] and "loss 1.0" in lines[0]
    assert lines[1].startswith("step 6/10  ") and "MFU n/a" in lines[1] and "mfu" not in r
    assert r["frames_per_s"] == pytest.approx(100 * r["steps_per_s"])


def test_progress_line_shows_a_slow_unit_rate_in_two_figures_not_as_zero(monkeypatch):
    """3 vmapped SPS seeds at 0.16 steps/s are 0.48 seed-steps/s: printed '0.48', not rounded to '0'."""
    clock = iter([100.0, 110.0, 135.0])
    monkeypatch.setattr(metrics.time, "perf_counter", lambda: next(clock))
    out = pyio.StringIO()
    p = metrics.Progress(10, 0, units_per_step=3, unit="seed-steps", stream=out)
    p.update(1)
    r = p.update(5)  # 4 steps in 25 s
    assert r["steps_per_s"] == pytest.approx(0.16)
    assert "  0.48 seed-steps/s" in out.getvalue().splitlines()[1]


def test_progress_line_mfu_uses_the_given_peak():
    import jax

    out = pyio.StringIO()
    p = metrics.Progress(10, 0, flops_per_step=2e9, peak_flops=4e20, stream=out)
    p.update(1)
    r = p.update(3)
    assert r["mfu"] == pytest.approx(r["steps_per_s"] * 2e9 / (4e20 * jax.device_count()))
    assert f"MFU {100 * r['mfu']:.1f}%" in out.getvalue().splitlines()[1]
    # a peak below the achieved rate (measured on a busy machine) never shows as an MFU over 100%
    out = pyio.StringIO()
    p = metrics.Progress(10, 0, flops_per_step=2e9, peak_flops=1.0, stream=out)
    p.update(1)
    r = p.update(3)
    assert "mfu" not in r and "MFU n/a (peak below this rate" in out.getvalue().splitlines()[1]


def test_peak_flops_is_measured_once_per_machine_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert metrics.device_peak_flops(3e12) == 3e12          # the user's number wins
    assert metrics.device_peak_flops(-1) == 0.0              # explicitly unknown: MFU n/a
    calls = []
    monkeypatch.setattr(metrics, "measure_peak_flops", lambda: calls.append(1) or 5e10)
    assert metrics.device_peak_flops(0) == 5e10
    assert metrics.device_peak_flops(0) == 5e10 and len(calls) == 1  # second time from the cache
    cache = json.loads((tmp_path / "m4mjax" / "peak_flops.json").read_text())
    assert [v["flops_per_device"] for v in cache.values()] == [5e10]


def test_measured_peak_is_a_plausible_matmul_rate():
    """The real measurement (a small matmul on every device at once) gives a finite, positive rate."""
    peak = metrics.measure_peak_flops(n=128, repeats=2)
    assert 1e6 < peak < 1e16


def test_peak_is_measured_inside_a_run_whose_mesh_holds_fewer_devices():
    """A run on a one-device mesh (train sets it as the context mesh) measures the peak on first use on a
    machine with more devices (the fake 8 here); it used to fail there with 'incompatible devices'."""
    import jax
    from m4mjax.run import mesh as mesh_lib

    assert len(jax.local_devices()) > 1
    with mesh_lib.use_mesh(jax.sharding.Mesh(np.array(jax.local_devices()[:1]), ("data",))):
        assert 1e6 < metrics.measure_peak_flops(n=64, repeats=1) < 1e16


def test_progress_bar_yields_everything_and_ends_with_one_line_off_a_terminal():
    out = pyio.StringIO()
    assert list(metrics.progress_bar(iter(range(5)), 5, "valid: batches", stream=out)) == [0, 1, 2, 3, 4]
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("valid: batches  5/5 in ")


def test_a_failed_reads_closed_loop_tracebacks_are_held_back_and_other_output_passes(capfd):
    """TensorStore's threads print "Event loop is closed" tracebacks straight to fd 2 after a failed read (the
    readers' one-line error then had up to 6 lines, ~1 run in 10): they are dropped, anything else written in the
    window still reaches stderr."""
    import threading

    from m4mjax.run import checkpoint

    noise = ("Traceback (most recent call last):\n  File \"base_events.py\", line 806, in call_soon_threadsafe\n"
             "    self._check_closed()\nRuntimeError: Event loop is closed\n\n")

    def threads_write():
        lines = noise.splitlines(True)
        os.write(2, "".join(lines[:2]).encode())  # two tracebacks interleaved line by line, as seen
        os.write(2, noise.encode())
        os.write(2, "".join(lines[2:]).encode())
        for piece in ("RuntimeError: ", "    self._check_closed()", "Event loop is closed\n"):  # interleaved mid-line
            os.write(2, piece.encode())
        os.write(2, b"a real message\n")

    t = threading.Timer(0.1, threads_write)
    t.start()
    checkpoint._settle_failed_reads(0.5)
    t.join()
    assert capfd.readouterr().err == "a real message\n"


def test_the_hold_lasts_until_the_failed_reads_threads_have_ended(capfd):
    """On a loaded machine the read's executor threads (``asyncio_N``) printed their tracebacks after a fixed 1 s
    hold had ended (a reader's one-line error had 11 lines under `make test` beside a training): the hold waits for
    those threads, here one that writes 0.8 s after a 0.2 s hold would have ended."""
    import threading
    import time

    from m4mjax.run import checkpoint

    def late_thread():
        time.sleep(1.0)
        os.write(2, b"Traceback (most recent call last):\nRuntimeError: Event loop is closed\n")

    t = threading.Thread(target=late_thread, name="asyncio_97")
    t.start()
    checkpoint._settle_failed_reads(0.2)
    assert not t.is_alive()
    t.join()
    assert capfd.readouterr().err == ""


def test_the_hold_lasts_while_other_threads_keep_printing(capfd):
    """Seen under `make test` beside a training: a failed read's tracebacks still arriving after its asyncio_N
    threads were gone. The hold also waits until a quiet interval passes: a thread of another name that writes at
    0.3 s and again at 0.6 s (after a 0.5 s hold would have ended) is held whole."""
    import threading
    import time

    from m4mjax.run import checkpoint

    def bursts():
        for pause in (0.3, 0.3):
            time.sleep(pause)
            os.write(2, b"Traceback (most recent call last):\nRuntimeError: Event loop is closed\n")

    t = threading.Thread(target=bursts, name="ThreadPoolExecutor-0_0")
    t.start()
    checkpoint._settle_failed_reads(0.5)
    t.join()
    assert capfd.readouterr().err == ""
