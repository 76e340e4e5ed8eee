"""Command-line plumbing shared by every entry point: the one error path (UserError -> one line, exit 2),
quiet library logs, --config/--workdir/--dry_run flags, optional multi-host initialisation, and
workdir/config.json (written atomically)."""
from __future__ import annotations

import argparse
import contextlib
import json
import logging as py_logging
import os
import sys
from typing import Any, Callable, Iterator

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from m4mjax.run import errors, io

# Set by experiments/tpu.sh (and any pod launcher) on every worker of a multi-host slice.
DISTRIBUTED_ENV = "M4MJAX_DISTRIBUTED"
DEBUG_ENV = "M4MJAX_DEBUG"  # set to 1 (or pass --debug) to see the traceback behind a one-line error
# Libraries that log INFO through Python logging (absl's own logger carries orbax's and TFDS's messages).
NOISY_LOGGERS = ("absl", "orbax", "tensorflow", "tensorflow_datasets", "jax", "grain", "etils", "matplotlib")


UserError = errors.UserError  # re-exported for the commands (library code imports m4mjax.run.errors)
user_error = errors.user_error


def command_name() -> str:
    """The running command as the user typed it after ``python -m`` (e.g. 'm4mjax.train')."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return spec.name if spec is not None else os.path.basename(sys.argv[0] or "m4mjax")


def debug_requested(argv: list[str] | None = None) -> bool:
    """True when the user asked for tracebacks (--debug on the command line or M4MJAX_DEBUG=1)."""
    argv = sys.argv if argv is None else argv
    return os.environ.get(DEBUG_ENV, "") not in ("", "0") or "--debug" in argv


@contextlib.contextmanager
def report_errors(command: str) -> Iterator[None]:
    """Around a command's body: a UserError becomes ONE stderr line ``<command>: error: ...`` and exit 2
    (the traceback only with --debug / M4MJAX_DEBUG=1); any other exception (a bug) keeps its traceback."""
    try:
        yield
    except UserError as e:
        if debug_requested():
            raise
        line = " ".join(str(e).split())  # one line, whatever the message held
        print(f"{command}: error: {line}", file=sys.stderr, flush=True)
        if e.reads_in_flight:  # the line is said; what the failed read's threads print while exiting is noise
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 2)
            sys.stderr = open(os.devnull, "w")
        sys.exit(2)


def raise_if_bad(bad: list[tuple[str, str]], total: int, what: str) -> None:
    """End of a per-file command whose bad inputs ``[(path, reason)]`` were already reported one per line: fail
    with one line, ``N of TOTAL files could not be WHAT``, naming the first three."""
    if bad:
        raise UserError(f"{len(bad)} of {total} files could not be {what} (listed above)",
                        ", ".join(b for b, _ in bad[:3]) + (" ..." if len(bad) > 3 else ""))


class _LibraryNoise(py_logging.Filter):
    """Drops library records below ERROR: TFDS and orbax log through absl's logger, so only the source
    file tells their "Using custom data configuration" / "Variant folder ..." warnings from ours."""

    def filter(self, record: py_logging.LogRecord) -> bool:
        return record.levelno >= py_logging.ERROR or not any(f"{os.sep}{m}{os.sep}" in record.pathname
                                                             for m in NOISY_LOGGERS)


_NOISE_FILTER = _LibraryNoise()


def quiet_logs(verbose: bool = False) -> None:
    """Library logs (absl, orbax, TFDS, jax: INFO, and their routine warnings) off unless the user asked
    (--verbosity / -v); our own warnings still show."""
    level = py_logging.INFO if verbose else py_logging.WARNING
    logging.set_verbosity(logging.INFO if verbose else logging.WARNING)
    for name in NOISY_LOGGERS:
        logger = py_logging.getLogger(name)
        logger.setLevel(level)
        logger.removeFilter(_NOISE_FILTER)
        if not verbose:
            logger.addFilter(_NOISE_FILTER)


# --- absl entry points ---------------------------------------------------------------------------
def int_list(text: str, flag: str) -> list[int]:
    """'0,4,-4' -> [0, 4, -4]; anything else is a one-line UserError naming ``flag``."""
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError("must be a comma list of integers, e.g. 0,4,-4", f"{flag}={text}") from None


def check_flag(name: str, ok: Callable[[Any], bool], what: str) -> None:
    """Range-check a flag where it is defined: a value failing ``ok`` is a one-line error naming the flag."""
    flags.register_validator(name, ok, message=what)


def check_file_flag(name: str, allow_empty: bool = True) -> None:
    """The flag, when given, names an existing file."""
    check_flag(name, lambda p: (not p and allow_empty) or bool(p and os.path.isfile(p)), "no such file")


def check_nonempty_flag(name: str) -> None:
    """The (required) string flag is not empty."""
    check_flag(name, lambda v: bool(v), "must not be empty")


def _define_common_flags() -> None:
    if "debug" not in flags.FLAGS:
        flags.DEFINE_bool("debug", False, f"Show the traceback behind a one-line error (or set {DEBUG_ENV}=1).")


def run_main(main: Callable[[list[str]], Any], command: str | None = None, argv: list[str] | None = None) -> None:
    """``app.run(main)`` on the one error path: a bad flag, config file, :variant or override key, or a
    UserError from ``main`` -> one line, exit 2; library logs quiet unless --verbosity/-v."""
    from m4mjax.run import flag_errors  # imports this module: import it late

    command = command or command_name()
    _define_common_flags()

    def parse(args: list[str]) -> list[str]:
        with report_errors(command):
            try:
                rest = flags.FLAGS(args)
            except Exception as e:  # noqa: BLE001  classified below; a bug is re-raised
                ue = flag_errors.as_user_error(e, args)
                if ue is None:
                    raise
                raise ue from e
            loaded = flag_errors.config_load_error()
            if loaded is not None:
                raise loaded
        verbose = not flags.FLAGS["verbosity"].using_default_value
        if not verbose:
            flags.FLAGS.verbosity = logging.WARNING  # app.run would otherwise raise the default to INFO
        quiet_logs(verbose)
        return rest

    def body(args: list[str]) -> Any:
        with report_errors(command):
            return main(args)

    app.run(body, argv=argv, flags_parser=parse)


# --- argparse entry points -------------------------------------------------------------------------
class ArgumentParser(argparse.ArgumentParser):
    """argparse with the one error path: a bad argument is a UserError (one line, exit 2, no usage dump),
    plus --debug and -v/--verbosity (library INFO logs)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.add_argument("--debug", action="store_true", help=f"show tracebacks (or set {DEBUG_ENV}=1)")
        self.add_argument("-v", "--verbosity", type=int, default=None, help="library log level (0 = INFO)")

    def error(self, message: str):  # type: ignore[override]
        raise UserError(message)

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        ns = super().parse_args(args, namespace)
        quiet_logs(ns.verbosity is not None and ns.verbosity >= 0)
        return ns


# --- trainers --------------------------------------------------------------------------------------
def config_module_name(path: str) -> str | None:
    """The module name a config file imports as when it lies in an importable package (every folder up to the
    top one holds an __init__.py and the name finds this very file: experiments/m4m/analysis.py ->
    'experiments.m4m.analysis', whatever the working directory or the spelling of the path); else None."""
    import importlib.util

    path = os.path.realpath(path)
    if not path.endswith(".py") or not os.path.isfile(path):
        return None
    parts, folder = [os.path.basename(path)[:-3]], os.path.dirname(path)
    while os.path.isfile(os.path.join(folder, "__init__.py")):
        parts.insert(0, os.path.basename(folder))
        folder = os.path.dirname(folder)
    if len(parts) < 2 or not all(p.isidentifier() for p in parts):
        return None
    name = ".".join(parts)
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):  # its package does not import from here
        return None
    origin = getattr(spec, "origin", None)
    return name if origin and os.path.realpath(origin) == path else None


def import_config_module(path: str):
    """The config file ``path`` as its package module (the one ``import`` gives), or None when it is in no
    importable package (ml_collections then loads it by path)."""
    import importlib

    name = config_module_name(path)
    return importlib.import_module(name) if name else None


class ConfigFileParser(flags.ArgumentParser):
    """--config's parser: ml_collections' own (``by_path``), except that a file in an importable package is
    imported as its module (--config=experiments/m4m/analysis.py:small runs
    ``experiments.m4m.analysis.get_config('small')``: one module object however the file is reached, and its
    package imports work); any other file is loaded by path by ml_collections. Errors as ml_collections raises
    them (flag_errors turns them into one line)."""

    def __init__(self, by_path: flags.ArgumentParser, lock_config: bool = True):
        self.by_path, self.lock_config = by_path, lock_config

    def parse(self, argument):  # type: ignore[override]
        import traceback

        file, *arg = str(argument).split(":", 1)  # FILE[:ARG], ARG passed to get_config when given
        module = import_config_module(file)
        if module is None:
            return self.by_path.parse(argument)
        if not callable(getattr(module, "get_config", None)):
            raise UserError("not a config file (it has no get_config())")  # absl adds the --flag=value
        try:
            config = module.get_config(*arg)
        except (TypeError, ValueError) as e:  # as ml_collections: absl keeps only the message of these
            raise type(e)("Error whilst parsing config file:\n\n" + traceback.format_exc()) from e
        if self.lock_config and callable(getattr(config, "lock", None)):
            config.lock()
        return config

    def flag_type(self) -> str:
        return self.by_path.flag_type()


def define_config_flag(name: str = "config", help_string: str = "Experiment config file, e.g. "
                       "experiments/m4m/lm_pretrain.py:small.", flag_values: flags.FlagValues = flags.FLAGS,
                       **kwargs: Any) -> Any:
    """``--<name>=FILE[:variant]``: ml_collections' config-file flag (locked: a typo in --config.x=y names the bad
    key; --config.a.b=v overrides), its file imported as a package module where it is one (ConfigFileParser)."""
    holder = config_flags.DEFINE_config_file(name, None, help_string, flag_values=flag_values, lock_config=True,
                                             **kwargs)
    flag_values[name].parser = ConfigFileParser(flag_values[name].parser, lock_config=True)
    return holder


def define_flags(workdir_required: bool = True) -> None:
    """--config=FILE[:variant] (define_config_flag), --workdir, --dry_run."""
    define_config_flag()
    flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics.jsonl, config.json).")
    flags.DEFINE_bool("dry_run", False, "Compile the step for the configured mesh, print per-device bytes, exit.")
    flags.mark_flags_as_required(["config", "workdir"] if workdir_required else ["config"])
    check_flag("workdir", lambda v: v is None or bool(v), "must not be empty")


def maybe_initialize_distributed() -> None:
    """jax.distributed.initialize() only when a pod launcher asked for it (env var)."""
    if os.environ.get(DISTRIBUTED_ENV, "0") not in ("", "0"):
        import jax

        jax.distributed.initialize()


def run_trainer(train_fn: Callable[[ml_collections.ConfigDict, str, bool], Any], command: str | None = None,
                workdir_required: bool = True) -> None:
    """``python -m <trainer>`` entry point: --config/--workdir/--dry_run, optional multi-host init, then
    ``train_fn(config, workdir, dry_run)``; on the one error path (see run_main). With ``workdir_required``
    False, --workdir may be left out under --dry_run only."""
    define_flags(workdir_required)
    if not workdir_required:
        flags.register_multi_flags_validator(["workdir", "dry_run"], lambda f: f["dry_run"] or f["workdir"] is not None,
                                             message="--workdir is required (only --dry_run runs without one)")

    def main(argv: list[str]) -> None:
        if len(argv) > 1:
            raise UserError("unexpected positional arguments", " ".join(argv[1:]))
        maybe_initialize_distributed()
        train_fn(flags.FLAGS.config, flags.FLAGS.workdir, flags.FLAGS.dry_run)

    run_main(main, command)


# --- workdirs --------------------------------------------------------------------------------------
def setup_workdir(workdir: str, cfg: ml_collections.ConfigDict) -> None:
    """Create the workdir and record the resolved config (process 0 only)."""
    import jax

    os.makedirs(workdir, exist_ok=True)
    if jax.process_index() == 0:
        io.atomic_write(os.path.join(workdir, "config.json"), cfg.to_json_best_effort(indent=2, sort_keys=True))


def load_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a run was launched with (workdir/config.json); a UserError when it is not a run directory."""
    if not workdir:
        raise UserError("empty run directory path", "--workdir")
    if not os.path.isdir(workdir):
        raise UserError("no such run directory", workdir)
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise UserError("no config.json: not a run directory (train writes it)", workdir)
    try:
        with open(path) as f:
            return ml_collections.ConfigDict(json.load(f))
    except (OSError, ValueError) as e:
        raise UserError(f"unreadable config.json ({type(e).__name__})", path) from e
