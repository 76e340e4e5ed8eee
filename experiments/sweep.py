"""python -m experiments.sweep FILE[:variant] [--run] [--root=workdirs/sweeps] [--only=SUBSTR]

One ordinary command per sweep point of an experiment file's ``get_sweep()``: printed (default), run
one after another here (--run; a finished point resumes/no-ops because each run resumes from its
workdir), or pasted into a TPU VM via experiments/tpu.sh. A sweep point is a dict of config
overrides plus a ``name``; the experiment file's ``ENTRY`` names the module to run.
"""
from __future__ import annotations

import argparse
import importlib.util
import shlex
import subprocess
import sys


def load_experiment(path: str):
    spec = importlib.util.spec_from_file_location("experiment", path)
    if spec is None or spec.loader is None:
        raise ValueError(f"sweep: cannot import experiment file {path!r}")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def commands(file_arg: str, root: str, only: str = "") -> list[list[str]]:
    path, _, variant = file_arg.partition(":")
    mod = load_experiment(path)
    if not hasattr(mod, "get_sweep"):
        raise ValueError(f"sweep: {path} has no get_sweep()")
    variant = variant or getattr(mod, "SWEEP_VARIANT", "")
    entry = getattr(mod, "ENTRY", "m4mjax.train")
    out = []
    for point in mod.get_sweep(variant) if variant else mod.get_sweep():
        point = dict(point)
        name = point.pop("name")
        if only and only not in name:
            continue
        cfg = f"{path}:{variant}" if variant else path
        cmd = [sys.executable, "-m", entry, f"--config={cfg}", f"--workdir={root}/{name}"]
        cmd += [f"--config.{k}={v}" for k, v in point.items()]
        out.append(cmd)
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", help="experiment file, optionally FILE:variant")
    p.add_argument("--root", default="workdirs/sweeps", help="parent directory of the sweep's workdirs")
    p.add_argument("--only", default="", help="keep points whose name contains this")
    p.add_argument("--run", action="store_true", help="run the commands here, one after another")
    a = p.parse_args(argv)
    cmds = commands(a.file, a.root, a.only)
    failed = []
    for i, cmd in enumerate(cmds):
        line = " ".join(shlex.quote(c) for c in cmd)
        print(line, flush=True)
        if a.run:
            print(f"[sweep] {i + 1}/{len(cmds)}", file=sys.stderr, flush=True)
            if subprocess.call(cmd) != 0:
                failed.append(line)
    if failed:
        sys.exit(f"sweep: {len(failed)} of {len(cmds)} points failed:\n" + "\n".join(failed))


if __name__ == "__main__":
    main()
