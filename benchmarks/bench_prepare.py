"""Benchmark ``m4mjax.prepare`` (files/s, peak RSS) on real MIDI files and tokenization (windows/s).

    python benchmarks/bench_prepare.py --midi_dir=data/debian_midi --copies=100 --workers=2 --repeats=3

The folder's MIDI files are hard-linked ``--copies`` times into a temp folder (Lakh-sized runs without
Lakh), then prepare runs in a fresh process (startup included) ``--repeats`` times from scratch; the rate
is from the fastest run, CPU seconds (all processes) are listed to judge runs on a shared machine, and the
children's peak RSS is read from getrusage. Tokenization: ``notes_to_tokens`` windows of 384 frames from the converted songs.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def replicate(src: Path, dst: Path, copies: int) -> int:
    """Hard-link (or copy) every MIDI file of src into dst ``copies`` times; returns the file count."""
    files = sorted(p for p in src.rglob("*") if p.suffix.lower() in (".mid", ".midi"))
    if not files:
        raise SystemExit(f"{src}: no MIDI files (run scripts/fetch_debian_midi.sh first)")
    n = 0
    for c in range(copies):
        d = dst / f"copy{c:03d}"
        d.mkdir(parents=True)
        for i, f in enumerate(files):
            target = d / f"{i:04d}_{f.name}"
            try:
                os.link(f, target)
            except OSError:
                shutil.copy(f, target)
            n += 1
    return n


def bench_tokenize(out: Path, frames: int = 384, seconds: float = 3.0) -> float:
    """notes_to_tokens windows per second (one core) over the prepared train songs."""
    from m4mjax import tokenizer as tok
    from m4mjax.datasets import convert

    src = convert.ShardSource(out, "train")
    songs = [src[i] for i in range(min(len(src), 64))]
    rng = np.random.default_rng(0)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        s = songs[n % len(songs)]
        start = int(rng.integers(0, max(s["n_frames"] - frames, 0) + 1))
        tok.notes_to_tokens(s["notes"], start, frames, song_frames=s["n_frames"])
        n += 1
    return n / (time.perf_counter() - t0)


def main() -> None:
    """Run the benchmark and print one JSON line of results."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--midi_dir", default="data/debian_midi")
    ap.add_argument("--copies", type=int, default=20)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--shard_size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=1, help="conversion runs from scratch (the fastest is reported)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        n = replicate(Path(args.midi_dir), tmp / "in", args.copies)
        cmd = [sys.executable, "-m", "m4mjax.prepare", f"--midi_dir={tmp / 'in'}", f"--out={tmp / 'out'}",
               f"--workers={args.workers}", f"--shard_size={args.shard_size}", "--no_progress"]
        walls, cpus = [], []
        for _ in range(args.repeats):  # the machine may be shared: report every run, rate from the fastest
            shutil.rmtree(tmp / "out", ignore_errors=True)
            r0, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            walls.append(time.perf_counter() - t0)
            r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpus.append(r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime)
        wall = min(walls)
        rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        rep = json.loads((tmp / "out" / "report.json").read_text())
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        resume_s = time.perf_counter() - t0
        result = {"files": n, "workers": args.workers, "wall_s": round(wall, 2), "files_per_s": round(n / wall, 1),
                  "wall_s_all_runs": [round(w, 2) for w in walls],
                  "cpu_s_all_processes": [round(c, 2) for c in cpus],
                  "files_per_cpu_s": round(n / min(cpus), 1), "load_avg_1min": round(os.getloadavg()[0], 2),
                  "files_per_wall_s_in_workers": round(n / max(rep["cpu_seconds_all_chunks"], 1e-9), 1),
                  "peak_rss_mb_largest_process": round(rss_mb, 1), "bad": rep["bad_items"],
                  "notes": sum(s["notes"] for s in rep["splits"].values()),
                  "rerun_nothing_to_do_s": round(resume_s, 2),
                  "out_mb": round(sum(p.stat().st_size for p in (tmp / "out").rglob("*")) / 2**20, 1),
                  "tokenize_windows_per_s_384x33": round(bench_tokenize(tmp / "out"), 1)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
