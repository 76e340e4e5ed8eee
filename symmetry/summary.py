"""python -m symmetry.summary ROOT [--out=DIR]  ->  DIR/summary.md (spec §7.5 Tables A, B, C) + PNGs

Audio runs give Tables A/B and the latent-vs-pitch figure (below); ball runs give Table C and one table + box
plot per §7.4 study (symmetry.summary_ball, DIR/box_<study>.png). The data kind comes from each config.json.

Finds every SPS workdir under ROOT (config.json), groups it by the paper's five groups (the directory
name, else the config's model.variant / K / prior), pools seeds of same-config runs, and writes
  DIR/summary.md                 Table A (embedding / synthesis R², mean ± std over seeds, plus the
                                 unseen-soundfont columns of every eval_<sf>.json) and Table B (recon BCEs,
                                 prior-z MSE); also printed
  DIR/latent_vs_pitch[_<sf>].png 2 rows (embedding: true pitch -> first-note z; synthesis: swept z ->
                                 detected pitch) x one column per group, one colour per seed (§7.1.6)
Unevaluated workdirs are listed under "Missing" with the command that fills them in. The helpers at the
bottom (load_model, encode_split, decode_z, features_to_audio, loss_curves) serve notebooks/pitch_axis.ipynb.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from m4mjax.run import io
from symmetry import summary_ball
from symmetry.config import GROUPS, LABELS

TABLE_A = (("embedding_r2", "Embedding R²"), ("synthesis_r2", "Synthesis R²"))
TABLE_B = (("self_recon_bce", "L_self-recon (BCE)"), ("prior_recon_bce", "L_prior-recon (BCE)"),
           ("prior_z_mse", "L_prior-z (MSE)"))
SKIP_DIRS = {"checkpoints", "tb"}


@dataclass
class Run:
    """One workdir: its config, every eval[_<sf>].json (tag '' = the test split) and latents files."""
    workdir: str
    config: dict
    group: str
    evals: dict[str, dict] = field(default_factory=dict)
    latents: dict[str, str] = field(default_factory=dict)

    @property
    def seeds(self) -> list[int]:
        first = int(self.config.get("seed", 0))
        return list(range(first, first + int(self.config.get("num_seeds", 1))))


@dataclass
class Row:
    """One table row / figure column: same-group, same-config runs with disjoint seeds, pooled."""
    name: str
    label: str
    runs: list[Run]

    def per_seed(self, tag: str, metric: str) -> np.ndarray:
        """Per-seed values of `metric` pooled over the runs that have eval{tag}.json (may be empty)."""
        vals = [v for r in self.runs if tag in r.evals for v in r.evals[tag].get(metric, {}).get("per_seed", [])]
        return np.asarray([np.nan if v is None else v for v in vals], np.float64)


def _read_json(path: str) -> dict:
    """Parsed JSON, or a ValueError naming the file."""
    with open(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from e


def find_workdirs(root: str) -> list[str]:
    """Every directory under root (root included) that holds a config.json, sorted."""
    if not os.path.isdir(root):
        raise ValueError(f"summary: ROOT {root!r} is not a directory")
    found = []
    for d, subdirs, files in os.walk(root):
        subdirs[:] = sorted(s for s in subdirs if s not in SKIP_DIRS)
        if "config.json" in files:
            found.append(d)
    return found


def group_of(workdir: str, config: dict) -> str:
    """GROUPS name from the directory name, else the group whose overrides the config matches most."""
    name = os.path.basename(os.path.normpath(workdir))
    if name in GROUPS:
        return name
    model = config.get("model", {})
    matches = [(len(o), g) for g, o in GROUPS.items() if all(model.get(k) == v for k, v in o.items())]
    if matches:
        return max(matches)[1]
    return f"{model.get('variant')}_k{model.get('K')}" + ("" if model.get("prior", True) else "_noprior")


def is_sps_config(config: dict) -> bool:
    """True for an SPS run's config.json (m4m workdirs share the layout but not these keys)."""
    return isinstance(config.get("model"), dict) and {"variant", "K", "translate_dims"} <= set(config["model"])


def load_run(workdir: str) -> Run:
    """Config and every eval*.json / eval_latents*.npz of one SPS workdir (ValueError if not one)."""
    config = _read_json(os.path.join(workdir, "config.json"))
    if not is_sps_config(config):
        raise ValueError(f"{workdir}/config.json: not an SPS run (no model.variant / K / translate_dims)")
    run = Run(workdir, config, group_of(workdir, config))
    for path in sorted(glob.glob(os.path.join(workdir, "eval*.json"))):
        tag = os.path.basename(path)[len("eval"):-len(".json")].lstrip("_")
        run.evals[tag] = _read_json(path)
    for path in sorted(glob.glob(os.path.join(workdir, "eval_latents*.npz"))):
        run.latents[os.path.basename(path)[len("eval_latents"):-len(".npz")].lstrip("_")] = path
    return run


def _fingerprint(config: dict) -> str:
    """Config minus the seed range and mesh: runs with equal fingerprints may be pooled."""
    return json.dumps({k: v for k, v in config.items() if k not in ("seed", "num_seeds", "mesh")}, sort_keys=True)


def collect(root: str) -> tuple[list[Row], list[str]]:
    """(rows in GROUPS order then by name, problems) for every evaluated SPS workdir under root."""
    problems, runs = [], []
    for wd in find_workdirs(root):
        try:
            run = load_run(wd)
        except ValueError as e:
            problems.append(str(e))
            continue
        if "" not in run.evals:
            problems.append(f"{wd} ({run.group}): not evaluated (no eval.json) — run "
                            f"`python -m symmetry.evaluate --workdir={wd}`")
            continue
        missing = sorted(set(run.evals) - set(run.latents))
        if missing:
            problems.append(f"{wd}: no eval_latents file for {['test' if t == '' else t for t in missing]} "
                            "(left out of the figure)")
        runs.append(run)
    buckets: dict[str, list[list[Run]]] = {}
    for run in runs:  # pool same-config runs whose seed ranges do not overlap (e.g. seeds 0-4 and 5-9)
        for b in buckets.setdefault(run.group, []):
            if _fingerprint(b[0].config) == _fingerprint(run.config) and not {s for r in b for s in r.seeds} & set(run.seeds):
                b.append(run)
                break
        else:
            buckets[run.group].append([run])
    order = list(GROUPS) + sorted(set(buckets) - set(GROUPS))
    rows = []
    for g in order:
        for b in buckets.get(g, []):
            label = LABELS.get(g, g)
            if len(buckets[g]) > 1:
                label += f" [{os.path.relpath(b[0].workdir, root)}]"
            rows.append(Row(g, label, b))
    return rows, problems


def fmt(v: np.ndarray, digits: int = 3) -> str:
    """'mean ± std' over seeds (NaN-aware, population std as in evaluate.py); '—' when empty."""
    v = np.asarray(v, np.float64)
    if v.size == 0 or np.all(np.isnan(v)):
        return "—"
    return f"{np.nanmean(v):.{digits}f} ± {np.nanstd(v):.{digits}f}"


def _table(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in body])


def summary_markdown(rows: list[Row], problems: Sequence[str], root: str = "") -> str:
    """Tables A and B (3 / 4 decimals) and the list of missing pieces, as Markdown."""
    tags = sorted({t for r in rows for run in r.runs for t in run.evals if t})
    splits = sorted({run.evals[""].get("split", "?") for r in rows for run in r.runs if "" in run.evals})
    head_a = ["Method"] + [n for _, n in TABLE_A] + [f"{n} ({t})" for t in tags for _, n in TABLE_A] + ["Seeds"]
    body_a = [[r.label] + [fmt(r.per_seed("", m)) for m, _ in TABLE_A]
              + [fmt(r.per_seed(t, m)) for t in tags for m, _ in TABLE_A] + [str(len(r.per_seed("", "embedding_r2")))]
              for r in rows]
    body_b = [[r.label] + [fmt(r.per_seed("", m), 4) for m, _ in TABLE_B] + [str(len(r.per_seed("", "self_recon_bce")))]
              for r in rows]
    out = [f"# SPS audio summary{f' — {root}' if root else ''}", "",
           f"Table A: pitch linearity, R² ↑, mean ± std over seeds (test split: {', '.join(splits) or '—'}"
           + (f"; unseen soundfonts: {', '.join(tags)}" if tags else "") + ").", "",
           _table(head_a, body_a), "",
           "Table B: reconstruction / prediction on the test split, ↓, mean ± std over seeds.", "",
           _table(["Method"] + [n for _, n in TABLE_B] + ["Seeds"], body_b), "", "Workdirs:", ""]
    out += [f"- {r.label}: " + ", ".join(f"`{run.workdir}` (seeds {run.seeds[0]}..{run.seeds[-1]})" for run in r.runs)
            for r in rows]
    if problems:
        out += ["", "Missing:", ""] + [f"- {p}" for p in problems]
    return "\n".join(out) + "\n"


def latent_columns(rows: list[Row], tag: str = "") -> list[tuple[str, list[dict]]]:
    """Per figure column (row label, [one dict per seed: seed, start_pitch, z_first, sweep_z, sweep_pitch])."""
    cols = []
    for r in rows:
        seeds = []
        for run in r.runs:
            if tag not in run.latents:
                continue
            with np.load(run.latents[tag]) as d:
                for i, s in enumerate(run.seeds[: d["z_first"].shape[0]]):
                    seeds.append(dict(seed=s, start_pitch=d["start_pitch"], z_first=d["z_first"][i],
                                      sweep_z=d["sweep_z"][i], sweep_pitch=d["sweep_pitch"][i]))
        if seeds:
            cols.append((r.label, seeds))
    return cols


def draw_latent_vs_pitch(fig: Any, cols: list[tuple[str, list[dict]]], title: str = "") -> Any:
    """Fill a matplotlib Figure: row 0 true pitch -> z (embedding), row 1 swept z -> detected pitch."""
    import matplotlib

    from symmetry.metrics import embedding_r2, r2_with_nans

    axes = fig.subplots(2, max(len(cols), 1), squeeze=False)
    cmap = matplotlib.colormaps["tab10"]
    for j, (label, seeds) in enumerate(cols):
        emb = [float(embedding_r2(s["start_pitch"], s["z_first"])) for s in seeds]
        syn = [float(r2_with_nans(s["sweep_z"], s["sweep_pitch"])[0]) for s in seeds]
        top, bot = axes[0, j], axes[1, j]
        for k, s in enumerate(seeds):
            c = cmap(k % 10)
            top.scatter(s["start_pitch"], s["z_first"], s=9, color=c, label=f"seed {s['seed']}")
            bot.plot(s["sweep_z"], s["sweep_pitch"], "o-", ms=3, lw=0.8, color=c)
        top.set_title(f"{label}\nembedding R² {fmt(emb)}", fontsize=9)
        bot.set_title(f"synthesis R² {fmt(syn)}", fontsize=9)
        top.set_xlabel("true start pitch (MIDI)", fontsize=8)
        bot.set_xlabel("swept z", fontsize=8)
        if j == 0:
            top.set_ylabel("Embedding\nz of first note", fontsize=9)
            bot.set_ylabel("Synthesis\ndetected pitch (MIDI)", fontsize=9)
        for ax in (top, bot):
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    right = 1.0 - (0.75 / fig.get_figwidth() if handles else 0.0)
    if handles:  # one legend for the figure, right of the panels (seed k has colour k in every column)
        fig.legend(handles[:20], labels[:20], loc="center right", fontsize=7, frameon=False, markerscale=1.5)
    fig.tight_layout(rect=(0, 0, right, 1))
    return fig


def write_figure(cols: list[tuple[str, list[dict]]], path: str, title: str = "") -> None:
    """Draw with the Agg canvas (no display needed) and write the PNG atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2.6 * max(len(cols), 1) + 1.4, 5.6), dpi=120)
    FigureCanvasAgg(fig)
    draw_latent_vs_pitch(fig, cols, title)
    with io.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def summarize(root: str, out: str = "") -> str:
    """Write OUT/summary.md and OUT/latent_vs_pitch[_<sf>].png for every workdir under root; returns the Markdown."""
    out = out or root
    rows, problems = collect(root)
    if not rows and not problems:
        raise ValueError(f"summary: no SPS workdir (config.json) under {root!r}")
    os.makedirs(out, exist_ok=True)
    ball_rows = [r for r in rows if summary_ball.is_ball(r.runs[0].config)]
    rows = [r for r in rows if r not in ball_rows]
    for tag in sorted({t for r in rows for run in r.runs for t in run.latents}):
        cols = latent_columns(rows, tag)
        if cols:
            name = f"latent_vs_pitch{'_' + tag if tag else ''}.png"
            split = sorted({run.evals.get(tag, {}).get("split", "?") for r in rows for run in r.runs})
            write_figure(cols, os.path.join(out, name), f"{', '.join(split)} split" + (f", soundfont {tag}" if tag else ""))
    if ball_rows:
        text = (summary_markdown(rows, [], root) + "\n" if rows else f"# SPS summary — {root}\n\n")
        text += summary_ball.markdown(ball_rows, root, out)
        text += "".join(["\nMissing:\n\n"] + [f"- {p}\n" for p in problems]) if problems else ""
    else:
        text = summary_markdown(rows, problems, root)
    io.atomic_write(os.path.join(out, "summary.md"), text)
    return text


# --- notebook helpers (notebooks/pitch_axis.ipynb) --------------------------------------------------------

def repo_root() -> str:
    """The checkout root: workdir configs hold paths (data.dir) relative to it."""
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def resolve_workdir(path: str) -> str:
    """Absolute workdir: as given if it exists from here, else relative to the checkout root."""
    for cand in (os.path.abspath(path), os.path.join(repo_root(), path)):
        if os.path.isfile(os.path.join(cand, "config.json")):
            return cand
    raise ValueError(f"workdir {path!r}: no config.json here or under {repo_root()} — train it first "
                     "(python -m symmetry.train ...) or set SPS_WORKDIR")


def seed_table(run: Run, rows: Sequence[dict], key: str = "train/loss") -> str:
    """Markdown: one line per seed with its last logged `key` and every eval*.json metric of Table A."""
    _, vals = loss_curves(rows, key)
    tags = sorted(run.evals)
    head = ["Seed", f"last {key}"] + [f"{n}{f' ({t})' if t else ''}" for t in tags for _, n in TABLE_A]
    body = []
    for i, s in enumerate(run.seeds):
        line = [str(s), f"{vals[-1, i]:.2f}" if vals.size and i < vals.shape[1] else "—"]
        for t in tags:
            for m, _ in TABLE_A:
                v = run.evals[t].get(m, {}).get("per_seed", [])
                line.append(f"{v[i]:.3f}" if i < len(v) and v[i] is not None else "—")
        body.append(line)
    return _table(head, body)


@dataclass
class Model:
    """All seeds of a run: config, SPSConfig, graphdef and stacked params [seed, ...]."""
    cfg: Any
    mcfg: Any
    graphdef: Any
    params: Any


def load_model(workdir: str) -> Model:
    """The latest checkpoint of every seed (symmetry.runs.load_seeds)."""
    from symmetry.runs import load_seeds

    return Model(*load_seeds(workdir))


def encode_split(model: Model, split: str = "bend") -> dict[str, np.ndarray]:
    """Encode a data split with every seed: dict(mu [S, N, T, d], start_pitch [N], scored [N], x, embedding_r2 [S])."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from symmetry import data as data_lib
    from symmetry.metrics import embedding_r2

    ds = data_lib.build_audio_dataset(model.cfg.data, split)
    enc = jax.jit(jax.vmap(lambda q, x: nnx.merge(model.graphdef, q).encode(x)[0], in_axes=(0, None)))
    mu = np.asarray(enc(model.params, jnp.asarray(ds["x"])))
    sc = ds["scored"]
    return dict(mu=mu, start_pitch=ds["start_pitch"], scored=sc, x=ds["x"],
                embedding_r2=embedding_r2(ds["start_pitch"][sc], mu[:, sc, 0, 0]))


def decode_z(model: Model, z: np.ndarray, rest: np.ndarray | None = None) -> np.ndarray:
    """Decode pitch latents z [n] or [S, n] with every seed -> features [S, n, F, W] (other dims: rest [S, d-1] or 0)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    d = model.mcfg.latent_dim
    z = np.broadcast_to(np.asarray(z, np.float32), (int(model.cfg.num_seeds), np.shape(z)[-1]))
    zz = np.zeros(z.shape + (d,), np.float32)
    zz[..., 0] = z
    if rest is not None and d > 1:
        zz[..., 1:] = np.asarray(rest, np.float32)[:, None]
    dec = jax.jit(jax.vmap(lambda q, v: jax.nn.sigmoid(nnx.merge(model.graphdef, q).decode(v))))
    return np.asarray(dec(model.params, jnp.asarray(zz)))


def decode_sweep(model: Model, encoded: dict, n: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """(z [S, n], features [S, n, F, W]): z over mean ± 2 std of the scored latents, other dims at their mean."""
    from symmetry.metrics import z_sweep

    mu = encoded["mu"][:, encoded["scored"]]
    mu = mu.reshape(mu.shape[0], -1, mu.shape[-1])                                 # [S, notes, d]
    z = z_sweep(mu[..., 0].mean(1), mu[..., 0].std(1), n)
    return z, decode_z(model, z, mu[..., 1:].mean(1))


def features_to_audio(y: np.ndarray, power_input: bool = True, n_iter: int = 32) -> np.ndarray:
    """Normalised STFT features [..., F<=513, 5] -> waveform [..., 2 048] (bins above F are silence)."""
    from symmetry import audio
    from symmetry.metrics import griffin_lim

    y = np.asarray(y, np.float32)
    if y.shape[-2] < audio.STFT_BINS:  # reduced-bin front-end: pad silence, as symmetry/evaluate.py does
        y = np.pad(y, [(0, 0)] * (y.ndim - 2) + [(0, audio.STFT_BINS - y.shape[-2]), (0, 0)])
    return griffin_lim(audio.features_to_magnitude(y), n_iter=n_iter, power_input=power_input)


def loss_curves(rows: Sequence[dict], key: str = "train/loss") -> tuple[np.ndarray, np.ndarray]:
    """(steps [T], values [T, seeds]) of a per-seed metric from read_metrics rows (rows without it skipped)."""
    rows = [r for r in rows if key in r]
    if not rows:
        return np.zeros(0, int), np.zeros((0, 0))
    vals = np.asarray([r[key] if isinstance(r[key], list) else [r[key]] for r in rows], np.float64)
    return np.asarray([r["step"] for r in rows]), vals


def main(argv: Sequence[str] | None = None) -> None:
    from m4mjax.run import cli

    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", help="directory holding SPS workdirs (e.g. workdirs/sweeps)")
    p.add_argument("--out", default="", help="output directory (default: ROOT)")
    with cli.report_errors("symmetry.summary"):
        a = p.parse_args(argv)
        if not os.path.isdir(a.root):
            raise cli.UserError("no such directory", a.root)
        if a.out and os.path.exists(a.out) and not os.path.isdir(a.out):
            raise cli.UserError("not a directory", f"--out={a.out}")
        try:
            text = summarize(a.root, a.out)
        except ValueError as e:  # summarize's messages name the root / workdir at fault
            raise cli.UserError(str(e).removeprefix("summary: ")) from e
    print(text)
    print(f"wrote {os.path.join(a.out or a.root, 'summary.md')} and its PNGs", file=sys.stderr)


if __name__ == "__main__":
    main()
