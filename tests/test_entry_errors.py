"""Every entry point meets a user's bad input with ONE stderr line ``<command>: error: ... (<file or key>)``,
exit status 2, no traceback and nothing written (issue 8 items 1 and 7). Every failure happens while flags and
inputs are checked, before heavy work. The absl commands (global flags: one parse per process) and the torch
converter run outside the test process, as a user would: each command's first row (and the random soundfont, which
fluidsynth reads) as a real subprocess of its own, the other rows through one runner process (``serve``: an
interpreter start with jax is most of such a row's time) that runs each ``python -m`` command as ``__main__`` on
absl's start-up state and captures its stderr at the file-descriptor level, as a fresh interpreter's. The argparse
commands run in-process through their ``main(argv)`` (the same code below ``if __name__ == "__main__"``, without
an interpreter start per row)."""
from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LM = "experiments/m4m/lm_pretrain.py"
SPS = "experiments/symmetry/sps_audio.py"

# (command, argv with {t} = the test's folder, substring the error line must hold: the file or key at fault)
ROWS = [
    ("m4mjax.train", ["--config={t}/nope.py", "--workdir={t}/w"], "nope.py"),
    ("m4mjax.train", [f"--config={LM}:bogus", "--workdir={t}/w"], "bogus"),
    ("m4mjax.train", [f"--config={LM}:tiny", "--workdir={t}/w", "--config.optim.lrr=1"], "did you mean 'optim.lr'"),
    ("m4mjax.train", [f"--config={LM}:tiny", "--workdir={t}/w", "--config.optim.lr=abc"], "--config.optim.lr"),
    ("m4mjax.train", [f"--config={LM}:tiny", "--workdir="], "--workdir"),
    ("m4mjax.train", [f"--config={LM}:tiny", "--workdir={t}/w", "--bogus_flag"], "--bogus_flag"),
    ("m4mjax.train", [f"--config={LM}:tiny", "--workdir={t}/w", "--config.data.dir={t}/empty"], "data.name"),
    ("symmetry.train", [f"--config={SPS}:bogus", "--workdir={t}/w"], "bogus"),
    ("symmetry.train", [f"--config={SPS}:tiny", "--workdir={t}/w", "--config.model.KK=3"], "model.KK"),
    ("m4mjax.evaluate", ["--workdir={t}/missing"], "missing"),
    ("m4mjax.evaluate", ["--workdir={t}/empty"], "empty"),
    ("m4mjax.evaluate", ["--workdir="], "--workdir"),
    ("m4mjax.sample", ["--workdir={t}/missing", "--out={t}/s.mid"], "missing"),
    ("m4mjax.sample", ["--workdir={t}/run", "--out={t}/s.mid", "--prompt={t}/nope.mid"], "nope.mid"),
    ("m4mjax.sample", ["--workdir={t}/run", "--out={t}/s.mid", "--prompt={t}/empty.mid"], "empty.mid"),
    ("m4mjax.sample", ["--workdir={t}/run", "--out={t}/s.mid", "--prompt={t}/garbage.mid"], "garbage.mid"),
    ("m4mjax.sample", ["--workdir={t}/run", "--out={t}/s.mid", "--temperature=-1"], "--temperature"),
    ("m4mjax.sample", ["--workdir={t}/run", "--out={t}/s.mid", "--top_p=2"], "--top_p"),
    ("symmetry.evaluate", ["--workdir={t}/run", "--soundfont={t}/nope.sf2"], "nope.sf2"),
    ("symmetry.evaluate", ["--workdir={t}/run", "--soundfont={t}/random.sf2"], "random.sf2"),
    ("symmetry.evaluate", ["--workdir={t}/missing"], "missing"),
    ("m4mjax.generate", ["--workdir={t}/missing", "--task=chord_to_melody", "--out={t}/g", "{t}/x.mid"], "missing"),
    ("m4mjax.generate", ["--workdir={t}/run", "--task=bogus", "--out={t}/g", "{t}/x.mid"], "--task"),
    ("m4mjax.generate", ["--workdir={t}/run", "--task=chord_to_melody", "--out={t}/g", "{t}/x.mid"], "--task"),
    ("m4mjax.gen_eval", [], "--workdir"),
    ("m4mjax.gen_eval", ["--workdir={t}/missing"], "missing"),
    ("m4mjax.gen_eval", ["--baselines", "--task=lm", "--data_dir={t}/empty"], "--task=lm"),
    ("m4mjax.gen_eval", ["--baselines", "--task=melody_to_chord", "--data_dir={t}/empty"], "empty"),
    ("symmetry.summary", ["{t}/missing"], "missing"),
    ("experiments.sweep", [f"{SPS}:bogus"], "bogus"),
    ("experiments.sweep", ["{t}/nope.py"], "nope.py"),
    ("m4mjax.datasets.default", ["--variant=bogus"], "bogus"),
    ("experiments.symmetry.fade_probe", ["{t}/missing"], "missing"),
    ("m4mjax.prepare", ["--midi_dir={t}/missing", "--out={t}/out"], "missing"),
    ("m4mjax.convert_torch", ["{t}/nope.ckpt", "--out={t}/w"], "nope.ckpt"),
    ("m4mjax.convert_torch", ["{t}/garbage.mid", "--out={t}/w"], "garbage.mid"),
    ("m4mjax.train", [f"--config={LM}:tiny"], "--workdir"),
    ("m4mjax.prepare", ["--midi_dir={t}/empty", "--out={t}/out", "--bogus_flag"], "--bogus_flag"),
]


def _listing(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "M4MJAX_DEBUG"}
    env.update(JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", **extra)
    return env


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    """Bad inputs a user might pass: an empty folder, a run folder holding only config.json, an empty and a
    garbage MIDI file, random bytes named .sf2."""
    from ml_collections import ConfigDict

    (tmp_path / "empty").mkdir()
    (tmp_path / "run").mkdir()
    cfg = ConfigDict({"model": {"max_frame_tokens": 17, "vocab_size": 3331},
                   "data": {"name": "m4m_default/demo", "frames": 64}})
    (tmp_path / "run" / "config.json").write_text(json.dumps(cfg.to_dict()))
    (tmp_path / "empty.mid").write_bytes(b"")
    rng = __import__("random").Random(0)
    (tmp_path / "garbage.mid").write_bytes(bytes(rng.randrange(256) for _ in range(300)))
    (tmp_path / "random.sf2").write_bytes(bytes(rng.randrange(256) for _ in range(4096)))
    return tmp_path


# absl flags are process-global (defined once, values kept between parses); torch stays out of the test process
SUBPROCESS = ("m4mjax.train", "symmetry.train", "m4mjax.evaluate", "m4mjax.sample", "symmetry.evaluate",
              "m4mjax.convert_torch")


# rows of SUBPROCESS commands that get an interpreter of their own: each command's first, and random bytes as a
# soundfont (fluidsynth, a C library, reports on the process's stderr); the rest go through the runner
OWN_PROCESS = {i for i, (c, argv, _) in enumerate(ROWS)
               if c in SUBPROCESS and (i == min(j for j, r in enumerate(ROWS) if r[0] == c)
                                       or any("random.sf2" in a for a in argv))}


def serve() -> None:
    """The runner (a child process, see ``_Runner``): per stdin line ``[command, args]`` it runs ``python -m command
    *args`` here (runpy, as ``__main__``, with the absl start-up state of a fresh interpreter: flag registry, app.run's
    one-time set-up) and answers one line ``[exit status, stderr]`` on its original stdout; the command's fd 1 and 2
    go to files meanwhile (a C library's output counts too). Exit status and stderr as the interpreter gives them: an
    uncaught exception's traceback, exit status 1."""
    import runpy
    import tempfile
    import traceback

    from absl import app, flags

    app.define_help_flags()  # absl's own flags (app, logging, help): the registry a command starts from
    registry = flags.FLAGS.__dict__

    def copy(v):  # the registry's containers, two levels deep (the Flag objects are shared)
        if isinstance(v, dict):
            return {k: list(x) if isinstance(x, list) else x for k, x in v.items()}
        return set(v) if isinstance(v, set) else v

    start = {k: copy(v) for k, v in registry.items()}
    answer = os.fdopen(os.dup(1), "w")
    for line in sys.stdin:
        command, args = json.loads(line)
        flags.FLAGS.unparse_flags()  # every flag at its default (absl's own are shared with `start`)
        registry.update({k: copy(v) for k, v in start.items()})  # the command's flags from a previous row gone
        app._run_init.done = app._register_and_parse_flags_with_usage.done = False
        sys.argv = [command, *args]
        with tempfile.TemporaryFile("w+", errors="replace") as err, tempfile.TemporaryFile("w+") as out:
            sys.stdout.flush(), sys.stderr.flush()
            keep = os.dup(1), os.dup(2)
            os.dup2(out.fileno(), 1), os.dup2(err.fileno(), 2)
            try:
                runpy.run_module(command, run_name="__main__", alter_sys=True)
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) or e.code is None else 1
                if code == 1 and not isinstance(e.code, int):  # sys.exit(message): the message goes to stderr
                    print(e.code, file=sys.stderr)
                code = code or 0
            except BaseException:  # noqa: BLE001  what the interpreter does with an uncaught exception
                traceback.print_exc()
                code = 1
            finally:
                sys.stdout.flush(), sys.stderr.flush()
                os.dup2(keep[0], 1), os.dup2(keep[1], 2)
                os.close(keep[0]), os.close(keep[1])
            err.seek(0)
            answer.write(json.dumps([code, err.read()]) + "\n")
            answer.flush()


class _Runner:
    """The ``serve`` process of this test process, started on first use (again if it died)."""

    def __init__(self):
        self.proc: subprocess.Popen | None = None

    def run(self, command: str, args: list[str]) -> tuple[int, str]:
        import select

        if self.proc is None or self.proc.poll() is not None:
            env = _env(PYTHONPATH=os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]))
            self.proc = subprocess.Popen([sys.executable, "-c", "import test_entry_errors as t; t.serve()"], cwd=REPO,
                                         env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.proc.stdin.write(json.dumps([command, args]) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], 180)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.close()
            raise RuntimeError(f"the command runner gave no answer for {command} {args}")
        code, stderr = json.loads(line)
        return code, stderr

    def close(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


@pytest.fixture(scope="module")
def runner():
    r = _Runner()
    yield r
    r.close()


def _run(command: str, args: list[str], capsys, monkeypatch, runner=None) -> tuple[int, str]:
    """(exit status, stderr) of ``python -m command *args``: for SUBPROCESS, its own process (``runner`` None) or
    the runner's; else main(args) here."""
    if command in SUBPROCESS:
        if runner is not None:
            return runner.run(command, args)
        r = subprocess.run([sys.executable, "-m", command, *args], cwd=REPO, env=_env(), capture_output=True,
                           text=True, timeout=180)
        return r.returncode, r.stderr
    monkeypatch.delenv("M4MJAX_DEBUG", raising=False)
    main = importlib.import_module(command).main
    capsys.readouterr()
    try:
        main(args)
        code = 0
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def _marks(i: int, command: str) -> list:
    if command not in SUBPROCESS:
        return []
    # the runner's rows on one xdist worker: one runner start
    return [pytest.mark.integration] + ([] if i in OWN_PROCESS else [pytest.mark.xdist_group("absl_runner")])


@pytest.mark.parametrize("row,command,argv,names", [
    pytest.param(i, *row, marks=_marks(i, row[0])) for i, row in enumerate(ROWS)],
    ids=[f"{c}-{i}" for i, (c, _, _) in enumerate(ROWS)])
def test_user_error_is_one_line(inputs: Path, row: int, command: str, argv: list[str], names: str, capsys, monkeypatch,
                                request):
    before = _listing(inputs)
    args = [a.replace("{t}", str(inputs)) for a in argv]
    shared = command in SUBPROCESS and row not in OWN_PROCESS
    code, stderr = _run(command, args, capsys, monkeypatch, request.getfixturevalue("runner") if shared else None)
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert code == 2, f"rc {code}; stderr:\n{stderr[-3000:]}"
    assert "Traceback" not in stderr
    assert len(lines) == 1, f"want one line, got {len(lines)}:\n{stderr[-3000:]}"
    assert lines[0].startswith(f"{command}: error: "), lines[0]
    assert names in lines[0], lines[0]
    assert _listing(inputs) == before, "a failed command created or removed files"


@pytest.mark.integration
def test_debug_shows_the_traceback(inputs: Path):
    """--debug and M4MJAX_DEBUG=1 show where a user error came from (sweep: no jax import, fast)."""
    cmd = [sys.executable, "-m", "experiments.sweep", str(inputs / "nope.py")]
    for argv, env in ((cmd + ["--debug"], _env()), (cmd, _env(M4MJAX_DEBUG="1"))):
        r = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode != 0 and "Traceback" in r.stderr and "UserError: no such experiment file" in r.stderr


@pytest.mark.integration
def test_a_bug_keeps_its_traceback(capsys):
    """Only UserError is shortened: any other exception (a bug) propagates with its traceback."""
    from m4mjax.run import cli

    with pytest.raises(RuntimeError, match="a real bug"):
        with cli.report_errors("demo"):
            raise RuntimeError("a real bug")
    with pytest.raises(SystemExit) as e:
        with cli.report_errors("demo"):
            raise cli.UserError("bad value\nspread over lines", "--flag")
    assert e.value.code == 2
    assert capsys.readouterr().err == "demo: error: bad value spread over lines (--flag)\n"
    code = "from m4mjax.run import cli\nwith cli.report_errors('demo'):\n    raise KeyError('boom')\n"
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "Traceback" in r.stderr and "KeyError: 'boom'" in r.stderr


def test_library_warnings_quiet_unless_verbose():
    """quiet_logs drops TFDS/orbax records below ERROR (they come through absl's logger), keeps ours and errors."""
    import logging

    from m4mjax.run import cli

    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    logger, handler = logging.getLogger("absl"), Keep()
    logger.addHandler(handler)
    try:
        def log(path: str, level: int, msg: str):
            logger.handle(logger.makeRecord("absl", level, path, 1, msg, None, None))

        cli.quiet_logs()
        log("/site-packages/tensorflow_datasets/core/dataset_builder.py", logging.WARNING, "tfds warning")
        log("/site-packages/orbax/checkpoint/manager.py", logging.INFO, "orbax info")
        log("/site-packages/orbax/checkpoint/manager.py", logging.ERROR, "orbax error")
        log("/repo/m4mjax/train.py", logging.WARNING, "our warning")
        cli.quiet_logs(verbose=True)
        log("/site-packages/tensorflow_datasets/core/dataset_builder.py", logging.WARNING, "tfds verbose")
    finally:
        logger.removeHandler(handler)
        cli.quiet_logs()
    assert seen == ["orbax error", "our warning", "tfds verbose"]


def test_raise_if_bad_names_the_count_and_the_first_three():
    from m4mjax.run import cli

    cli.raise_if_bad([], 5, "analysed")  # nothing bad: no error
    bad = [(f"f{i}.mid", "not a MIDI file") for i in range(4)]
    with pytest.raises(cli.UserError) as e:
        cli.raise_if_bad(bad, 9, "analysed")
    assert str(e.value) == "4 of 9 files could not be analysed (listed above) (f0.mid, f1.mid, f2.mid ...)"
    with pytest.raises(cli.UserError) as e:
        cli.raise_if_bad(bad[:1], 1, "used")
    assert str(e.value) == "1 of 1 files could not be used (listed above) (f0.mid)"
