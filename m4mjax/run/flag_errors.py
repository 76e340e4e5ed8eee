"""Absl / ml_collections flag-parsing failures as UserErrors: a config file that does not exist or cannot
load, get_config rejecting a :variant, a typo'd override key ("did you mean 'optim.lr'?"), a bad value, an
unknown flag. Used by cli.run_main; anything it does not recognise stays a bug (None: keep the traceback)."""
from __future__ import annotations

import difflib
import os
import re
from typing import Any

import ml_collections
from absl import flags
from ml_collections import config_flags

from m4mjax.run.errors import UserError


def config_key_error(cfg: Any, key: str) -> str | None:
    """What is wrong with the dotted ``key`` in ``cfg`` ("no such config key 'optim.lrr'; did you mean
    'optim.lr'?"), or None when it exists."""
    node, path = cfg, key.split(".")
    for i, k in enumerate(path):
        keys = [str(x) for x in node.keys()] if isinstance(node, (dict, ml_collections.ConfigDict)) else []
        if not keys:
            return f"{'.'.join(path[:i])!r} is not a config section"
        if k not in keys:
            close = difflib.get_close_matches(k, keys, n=1)
            hint = f"; did you mean {'.'.join(path[:i] + close)!r}?" if close else ""
            return f"no such config key {'.'.join(path[:i + 1])!r}{hint}"
        node = node[k]
    return None


def _bad_override(cfg: Any, argv: list[str], flag: str) -> UserError | None:
    """The first ``--<flag>.a.b=v`` override whose key the loaded config lacks."""
    for arg in argv[1:]:
        m = re.match(rf"--{re.escape(flag)}\.([\w.]+)", arg)
        what = config_key_error(cfg, m.group(1)) if m else None
        if what:
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


def config_load_error() -> UserError | None:
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


def as_user_error(e: Exception, argv: list[str]) -> UserError | None:
    """A flag-parsing exception as the user's mistake (None: a real bug, keep the traceback)."""
    if isinstance(e, UserError):
        return e
    loaded = config_load_error()
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
            return UserError(re.sub(r"^[\w.]+Error: ", "", last), f"{m.group(1)}={m.group(2)}" if m else None)
        text = text.strip().splitlines()[0] if text.strip() else type(e).__name__  # the first of several
        m = re.match(r"flag (--[\w.-]+)=(.*?): (.*)", text, re.S)
        if m and m.group(3).startswith(f"Flag {m.group(1)} must have a value other than None"):
            return UserError("missing required flag", m.group(1))
        if m:
            return UserError(m.group(3), f"{m.group(1)}={m.group(2)}")
        return UserError(text)
    return None
