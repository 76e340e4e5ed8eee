"""python -m experiments.sweep FILE[:variant] [--run] [--root=workdirs/sweeps] [--only=SUBSTR]

One ordinary command per sweep point of an experiment file's ``get_sweep()``: printed (default), run
one after another here (--run; a finished point resumes/no-ops because each run resumes from its
workdir), or pasted into a TPU VM via experiments/tpu.sh. A sweep point is a dict of config
overrides plus a ``name``; the experiment file's ``ENTRY`` names the module to run. The variant and
every override key are checked against the file's ``get_config`` first, so a bad sweep fails here
(one line, exit 2) instead of printing commands that would all fail.
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time

from m4mjax.run import cli, flag_errors


def load_experiment(path: str):
    """An experiment config file, imported as its package module (experiments/m4m/analysis.py ->
    ``experiments.m4m.analysis``: the module ``import`` gives and --config=FILE runs)."""
    if not os.path.isfile(path):
        raise cli.UserError("no such experiment file", path)
    mod = cli.import_config_module(path)
    if mod is None:
        raise cli.UserError("cannot import experiment file (not a .py file in an importable package such as "
                            "experiments/?)", path)
    return mod


def commands(file_arg: str, root: str, only: str = "") -> list[list[str]]:
    """The command line of every sweep point of FILE[:variant] (validated against the file's get_config)."""
    path, _, variant = file_arg.partition(":")
    mod = load_experiment(path)
    if not hasattr(mod, "get_sweep"):
        raise cli.UserError("experiment file has no get_sweep()", path)
    variant = variant or getattr(mod, "SWEEP_VARIANT", "")
    try:
        cfg = mod.get_config(variant) if variant else mod.get_config()
    except ValueError as e:  # config files not yet raising UserError for an unknown variant
        raise cli.UserError(str(e), file_arg) from e
    entry = getattr(mod, "ENTRY", "m4mjax.train")
    out = []
    for point in mod.get_sweep(variant) if variant else mod.get_sweep():
        point = dict(point)
        name = point.pop("name")
        for k in point:
            what = flag_errors.config_key_error(cfg, k)
            if what:
                raise cli.UserError(f"sweep point {name}: {what}", f"{path}:{variant}" if variant else path)
        if only and only not in name:
            continue
        cfg_arg = f"{path}:{variant}" if variant else path
        cmd = [sys.executable, "-m", entry, f"--config={cfg_arg}", f"--workdir={root}/{name}"]
        cmd += [f"--config.{k}={v}" for k, v in point.items()]
        out.append(cmd)
    if not out:
        raise cli.UserError("no sweep point matches", f"--only={only}" if only else file_arg)
    return out


def main(argv: list[str] | None = None) -> None:
    """CLI: print (or --run) the sweep's commands; exit 2 on a bad file/variant/key, 1 if a run failed."""
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", help="experiment file, optionally FILE:variant")
    p.add_argument("--root", default="workdirs/sweeps", help="parent directory of the sweep's workdirs")
    p.add_argument("--only", default="", help="keep points whose name contains this")
    p.add_argument("--run", action="store_true", help="run the commands here, one after another")
    with cli.report_errors("experiments.sweep"):
        a = p.parse_args(argv)
        cmds = commands(a.file, a.root, a.only)
    failed, t0 = [], time.perf_counter()
    for i, cmd in enumerate(cmds):
        line = " ".join(shlex.quote(c) for c in cmd)
        print(line, flush=True)
        if a.run:
            done = time.perf_counter() - t0
            eta = f", ETA {done / i * (len(cmds) - i) / 60:.0f} min" if i else ""
            print(f"[sweep] point {i + 1}/{len(cmds)} (elapsed {done / 60:.0f} min{eta})", file=sys.stderr, flush=True)
            if subprocess.call(cmd) != 0:
                failed.append(line)
    if failed:
        sys.exit(f"sweep: {len(failed)} of {len(cmds)} points failed:\n" + "\n".join(failed))


if __name__ == "__main__":
    main()
