"""Command-line plumbing shared by every entry point: --config/--workdir/--dry_run flags,
optional multi-host initialisation, and workdir/config.json (written atomically)."""
from __future__ import annotations

import contextlib
import json
import os
import sys

import jax
import ml_collections
from absl import app, flags
from ml_collections import config_flags

# Set by experiments/tpu.sh (and any pod launcher) on every worker of a multi-host slice.
DISTRIBUTED_ENV = "M4MJAX_DISTRIBUTED"


class UserError(Exception):
    """A user's mistake (bad file, flag value, config key, missing workdir): reported as ONE line
    ``<command>: error: <what> (<where>)`` on stderr with exit status 2 and no traceback."""

    def __init__(self, what: str, where: str | None = None):
        self.what, self.where = what, where
        super().__init__(f"{what} ({where})" if where else what)


DEBUG_ENV = "M4MJAX_DEBUG"  # set to 1 (or pass --debug) to see the traceback behind a one-line error


def debug_requested(argv: list[str] | None = None) -> bool:
    """True when the user asked for tracebacks (--debug on the command line or M4MJAX_DEBUG=1)."""
    argv = sys.argv if argv is None else argv
    return os.environ.get(DEBUG_ENV, "") not in ("", "0") or "--debug" in argv


@contextlib.contextmanager
def report_errors(command: str):
    """Around a command's body: a UserError becomes ONE stderr line ``<command>: error: ...`` and exit 2
    (the traceback only with --debug / M4MJAX_DEBUG=1); any other exception (a bug) keeps its traceback."""
    try:
        yield
    except UserError as e:
        if debug_requested():
            raise
        print(f"{command}: error: {e}", file=sys.stderr)
        sys.exit(2)


def define_flags(workdir_required: bool = True) -> None:
    """--config=FILE[:variant] (locked: a typo in --config.x=y names the bad key), --workdir, --dry_run."""
    config_flags.DEFINE_config_file("config", None, "Experiment config file, e.g. experiments/m4m/lm_pretrain.py:small.",
                                    lock_config=True)
    flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics.jsonl, config.json).")
    flags.DEFINE_bool("dry_run", False, "Compile the step for the configured mesh, print per-device bytes, exit.")
    flags.mark_flags_as_required(["config", "workdir"] if workdir_required else ["config"])


def maybe_initialize_distributed() -> None:
    """jax.distributed.initialize() only when a pod launcher asked for it (env var)."""
    if os.environ.get(DISTRIBUTED_ENV, "0") not in ("", "0"):
        jax.distributed.initialize()


def run_trainer(train_fn) -> None:
    """``python -m <trainer>`` entry point: --config/--workdir/--dry_run, optional multi-host init, then
    ``train_fn(config, workdir, dry_run)``."""
    define_flags()

    def main(argv):
        del argv
        maybe_initialize_distributed()
        train_fn(flags.FLAGS.config, flags.FLAGS.workdir, flags.FLAGS.dry_run)

    app.run(main)


def atomic_write_text(path: str, text: str) -> None:
    """Write a text file via temp file + rename, so readers never see half a file."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def setup_workdir(workdir: str, cfg: ml_collections.ConfigDict) -> None:
    """Create the workdir and record the resolved config (process 0 only)."""
    os.makedirs(workdir, exist_ok=True)
    if jax.process_index() == 0:
        atomic_write_text(os.path.join(workdir, "config.json"), cfg.to_json_best_effort(indent=2, sort_keys=True))


def load_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a run was launched with (workdir/config.json)."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise ValueError(f"{workdir}: no config.json — is this a run directory?")
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))
