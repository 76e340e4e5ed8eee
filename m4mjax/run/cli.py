"""Command-line plumbing shared by every entry point: the one error path (UserError -> one line, exit 2),
quiet library logs, --config/--workdir/--dry_run flags, optional multi-host initialisation, and
workdir/config.json (written atomically)."""
from __future__ import annotations

import argparse
import contextlib
import difflib
import json
import logging as py_logging
import os
import re
import sys
from typing import Any, Callable, Iterator

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from m4mjax.run import io

# Set by experiments/tpu.sh (and any pod launcher) on every worker of a multi-host slice.
DISTRIBUTED_ENV = "M4MJAX_DISTRIBUTED"
DEBUG_ENV = "M4MJAX_DEBUG"  # set to 1 (or pass --debug) to see the traceback behind a one-line error
# Libraries that log INFO through Python logging (absl's own logger carries orbax's and TFDS's messages).
NOISY_LOGGERS = ("absl", "orbax", "tensorflow", "tensorflow_datasets", "jax", "grain", "etils", "matplotlib")


class UserError(Exception):
    """A user's mistake (bad file, flag value, config key, missing workdir): reported as ONE line
    ``<command>: error: <what> (<where>)`` on stderr with exit status 2 and no traceback."""

    def __init__(self, what: str, where: str | None = None):
        self.what, self.where = what, where
        super().__init__(f"{what} ({where})" if where else what)


def user_error(e: BaseException, where: str) -> UserError:
    """A UserError from a library's ValueError/OSError message about ``where`` (a leading "where: " dropped)."""
    what = str(e).strip() or type(e).__name__
    for prefix in (f"{where}: ", f"{where} "):
        if what.startswith(prefix):
            what = what[len(prefix):]
    return UserError(what, where)


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
        sys.exit(2)


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


def _bad_override(cfg: Any, argv: list[str], flag: str) -> UserError | None:
    """The first ``--<flag>.a.b=v`` override whose key the loaded config lacks, with a 'did you mean'."""
    for arg in argv[1:]:
        m = re.match(rf"--{re.escape(flag)}\.([\w.]+)", arg)
        if not m:
            continue
        node, path = cfg, m.group(1).split(".")
        for i, key in enumerate(path):
            keys = list(node.keys()) if isinstance(node, (dict, ml_collections.ConfigDict)) else []
            if key in keys:
                node = node[key]
                continue
            close = difflib.get_close_matches(key, [str(k) for k in keys], n=1)
            hint = f"; did you mean {'.'.join(path[:i] + close[:1])!r}?" if close else ""
            what = f"no such config key {'.'.join(path[:i + 1])!r}{hint}" if keys else \
                f"{'.'.join(path[:i])!r} is not a config section"
            return UserError(what, f"--{flag}.{m.group(1)}")
    return None


def _config_file_flags() -> list[tuple[str, Any]]:
    """(name, flag) of every parsed --config-style flag (ml_collections config file flags)."""
    out = []
    for name in list(flags.FLAGS):
        fl = flags.FLAGS[name]
        try:
            config_flags.get_config_filename(fl)
        except (TypeError, AttributeError):
            continue  # not a config flag
        except flags.Error:
            pass  # a config flag whose parse has not finished (an override failed)
        out.append((name, fl))
    return out


def _argv_value(argv: list[str], name: str) -> str | None:
    """The value given to --name on the command line (last one wins), or None."""
    value = None
    for i, arg in enumerate(argv):
        if arg.startswith(f"--{name}="):
            value = arg.split("=", 1)[1]
        elif arg == f"--{name}" and i + 1 < len(argv):
            value = argv[i + 1]
    return value


def _config_path(fl: Any) -> str:
    try:
        return config_flags.get_config_filename(fl)
    except flags.Error:
        return ""


def _config_load_error() -> UserError | None:
    """A config-file flag whose file could not be loaded (ml_collections defers that error to first use)."""
    for name, fl in _config_file_flags():
        if fl.value is None:
            continue
        try:
            fl.value.keys()
        except OSError as e:
            path = _config_path(fl)
            what = "no such config file" if path and not os.path.exists(path) else \
                f"cannot load config file: {str(e).splitlines()[-1].strip()}" if path else "empty config file path"
            return UserError(what, f"--{name}={path}")
        except (AttributeError, TypeError):
            pass
    return None


def _as_user_error(e: Exception, argv: list[str]) -> UserError | None:
    """A flag-parsing exception as the user's mistake (None: a real bug, keep the traceback)."""
    if isinstance(e, UserError):
        return e
    loaded = _config_load_error()
    if loaded is not None:
        return loaded
    if isinstance(e, (AttributeError, KeyError)):
        for name, fl in _config_file_flags():
            cfg, arg = fl.value, _argv_value(argv, name)
            if cfg is None and arg:  # overrides are applied while --config itself parses: load it again
                cfg = fl.parser.parse(arg)
            bad = _bad_override(cfg, argv, name) if cfg is not None else None
            if bad is not None:
                return bad
        return None
    if isinstance(e, flags.UnrecognizedFlagError):
        tip = ", ".join(f"--{x}" for x in getattr(e, "suggestions", None) or [])
        return UserError(f"unknown flag{'; did you mean ' + tip + '?' if tip else ''}", f"--{e.flagname}")
    if isinstance(e, flags.Error):
        text = str(e)
        if "Error whilst parsing config file" in text:  # get_config raised ValueError/TypeError
            last = [ln for ln in text.splitlines() if ln.strip()][-1].strip()
            m = re.match(r"flag (--[\w.-]+)=(.*?): ", text)
            return UserError(re.sub(r"^\w+Error: ", "", last), f"{m.group(1)}={m.group(2)}" if m else None)
        text = text.strip().splitlines()[0] if text.strip() else type(e).__name__  # the first of several
        m = re.match(r"flag (--[\w.-]+)=(.*?): (.*)", text, re.S)
        if m and m.group(3).startswith(f"Flag {m.group(1)} must have a value other than None"):
            return UserError("missing required flag", m.group(1))
        if m:
            return UserError(m.group(3), f"{m.group(1)}={m.group(2)}")
        return UserError(text)
    return None


def run_main(main: Callable[[list[str]], Any], command: str | None = None, argv: list[str] | None = None) -> None:
    """``app.run(main)`` on the one error path: a bad flag, config file, :variant or override key, or a
    UserError from ``main`` -> one line, exit 2; library logs quiet unless --verbosity/-v."""
    command = command or command_name()
    _define_common_flags()

    def parse(args: list[str]) -> list[str]:
        with report_errors(command):
            try:
                rest = flags.FLAGS(args)
            except Exception as e:  # noqa: BLE001  classified below; a bug is re-raised
                ue = _as_user_error(e, args)
                if ue is None:
                    raise
                raise ue from e
            loaded = _config_load_error()
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
def define_flags(workdir_required: bool = True) -> None:
    """--config=FILE[:variant] (locked: a typo in --config.x=y names the bad key), --workdir, --dry_run."""
    config_flags.DEFINE_config_file("config", None, "Experiment config file, e.g. experiments/m4m/lm_pretrain.py:small.",
                                    lock_config=True)
    flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics.jsonl, config.json).")
    flags.DEFINE_bool("dry_run", False, "Compile the step for the configured mesh, print per-device bytes, exit.")
    flags.mark_flags_as_required(["config", "workdir"] if workdir_required else ["config"])
    check_flag("workdir", lambda v: v is None or bool(v), "must not be empty")


def maybe_initialize_distributed() -> None:
    """jax.distributed.initialize() only when a pod launcher asked for it (env var)."""
    if os.environ.get(DISTRIBUTED_ENV, "0") not in ("", "0"):
        import jax

        jax.distributed.initialize()


def run_trainer(train_fn: Callable[[ml_collections.ConfigDict, str, bool], Any], command: str | None = None) -> None:
    """``python -m <trainer>`` entry point: --config/--workdir/--dry_run, optional multi-host init, then
    ``train_fn(config, workdir, dry_run)``; on the one error path (see run_main)."""
    define_flags()

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
