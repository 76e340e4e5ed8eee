"""python -m m4mjax.export --workdir=W --out=pretrained/NAME — a run's latest weights as a shipped model folder.

Writes ``NAME/config.json`` (what was trained), ``NAME/params.npz`` (every parameter, float32, keys 'a/b/c'; no
optimizer state) and ``NAME/source.json`` (the run directory, its step and the held-out scores in its eval.json
if any). The folder is read wherever a run directory is (``--workdir``, ``--config.init_from``): loading checks
every name and shape against the model the config builds and refuses a mismatch in one line.
"""
from __future__ import annotations

import json
import os
import shutil

from m4mjax.run import checkpoint, cli, io


def export(workdir: str, out: str) -> dict:
    """Copy ``workdir``'s config and latest params into ``out``; returns the source record."""
    cfg = cli.load_config(workdir)  # a run directory, or a UserError naming it
    step = checkpoint.latest_step(workdir)
    params = checkpoint.restore_params(workdir)
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise cli.UserError(f"cannot create the output folder ({e.strerror or e})", out) from None
    size = checkpoint.write_shipped(os.path.join(out, checkpoint.PARAMS_FILE), params)
    shutil.copyfile(os.path.join(workdir, "config.json"), os.path.join(out, "config.json"))
    record = {"workdir": os.path.abspath(workdir), "step": step, "task": cfg.get("task", "lm"), "bytes": size}
    ev = os.path.join(workdir, "eval.json")
    if os.path.isfile(ev):
        with open(ev) as f:
            record["eval"] = json.load(f)
    io.atomic_write(os.path.join(out, "source.json"), json.dumps(record, indent=2))
    return record


def main(argv: list[str] | None = None) -> None:
    ap = cli.ArgumentParser(prog="m4mjax.export", description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", required=True, help="run directory to export")
    ap.add_argument("--out", required=True, help="shipped model folder to write (e.g. pretrained/lm_base)")
    with cli.report_errors("m4mjax.export"):
        args = ap.parse_args(argv)
        rec = export(args.workdir, args.out)
        print(f"wrote {args.out}: step {rec['step']}, {rec['bytes'] / 1e6:.1f} MB of weights")


if __name__ == "__main__":
    main()
