"""Ball results (spec §7.2, §7.4) for symmetry.summary: Table C and one table + box plot per study.

A study is the directory that holds a sweep's workdirs (experiments/symmetry/sps_video.py names its points
<study>/<point>); STUDIES says how each is drawn. Values are the per-seed mean linear-projection MSE
("linear proj. loss", lower is better) from each workdir's eval.json.
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from m4mjax.run import io
from symmetry.config import LABELS

AXES = (("x", "x axis MSE ↓"), ("y", "y (height) MSE ↓"), ("z", "z axis MSE ↓"), ("mean", "MSE ↓"))
# study -> (title, panel config key or None, x config key or None = the point's name); spec §7.4
STUDIES: dict[str, tuple[str, str | None, str | None]] = {
    "groups": ("SPS vs ablations vs baselines (512 trajectories)", None, None),
    "data_size_k": ("Sample efficiency: training trajectories x K", "data.train_size", "model.K"),
    "wrong_group": ("Wrong / partially wrong group assumptions (2,048 trajectories)", None, None),
    "batch_k": ("Batch size vs K (256 trajectories, batch x K = 64)", None, None),
    "prior": ("Prior strength (K = 4)", None, None),
}
OURS = "data_size_k/n2048_k4"  # the wrong-group figure's "(R²,+)×SO(2) (ours)" column (spec §7.4)


def is_ball(config: dict) -> bool:
    return config.get("data", {}).get("kind") == "ball"


def _get(config: dict, dotted: str) -> Any:
    node: Any = config
    for k in dotted.split("."):
        node = node.get(k) if isinstance(node, dict) else None
    return node


def point_name(row: Any, root: str) -> str:
    """'<study>/<point>' of a row (its first workdir relative to root)."""
    return os.path.relpath(row.runs[0].workdir, root).replace(os.sep, "/")


def per_seed(row: Any, axis: str = "mean") -> np.ndarray:
    """Per-seed linear-projection MSE of one axis ('x', 'y', 'z', 'mean'), pooled over the row's runs."""
    vals = [v for r in row.runs if "" in r.evals
            for v in r.evals[""].get("linear_proj_mse", {}).get(axis, {}).get("per_seed", [])]
    return np.asarray([np.nan if v is None else v for v in vals], np.float64)


def _fmt(v: np.ndarray, digits: int = 3) -> str:
    v = v[np.isfinite(v)]
    return "—" if v.size == 0 else f"{v.mean():.{digits}f} ± {v.std():.{digits}f}"


def _median(v: np.ndarray) -> str:
    v = v[np.isfinite(v)]
    return "—" if v.size == 0 else f"{np.median(v):.3f} [{v.min():.3f}–{v.max():.3f}]"


def _table(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                     + ["| " + " | ".join(r) + " |" for r in body])


def _label(row: Any, root: str) -> str:
    name = point_name(row, root)
    base = name.rsplit("/", 1)[-1]
    return f"{LABELS[base]} [{name}]" if base in LABELS else name


def studies(rows: list, root: str) -> dict[str, list]:
    """{study: its rows} (a workdir directly under root forms the study '')."""
    out: dict[str, list] = {}
    for r in rows:
        name = point_name(r, root)
        out.setdefault(name.rsplit("/", 1)[0] if "/" in name else "", []).append(r)
    return out


def boxes(study: str, rows: list, root: str, all_rows: Sequence = ()) -> list[tuple[str, list[tuple[str, np.ndarray]]]]:
    """[(panel title, [(box label, per-seed values)])] of one study, as spec §7.4 draws it."""
    _, panel_key, x_key = STUDIES.get(study, (study, None, None))
    if panel_key:
        panels: dict[Any, list] = {}
        for r in rows:
            panels.setdefault(_get(r.runs[0].config, panel_key), []).append(r)
        out = []
        for p in sorted(panels, key=lambda v: (v is None, v)):
            rs = sorted(panels[p], key=lambda r: (_get(r.runs[0].config, x_key) is None, _get(r.runs[0].config, x_key)))
            out.append((f"{panel_key.split('.')[-1]} = {p}",
                        [(f"{x_key.split('.')[-1]}={_get(r.runs[0].config, x_key)}", per_seed(r)) for r in rs]))
        return out
    items = [(point_name(r, root).rsplit("/", 1)[-1], per_seed(r)) for r in rows]
    if study == "wrong_group":
        ours = [r for r in all_rows if point_name(r, root).endswith(OURS)]
        items = sorted(items, key=lambda it: (not it[0].startswith("k0"), it[0]))
        items += [("(R²,+)×SO(2) (ours)", per_seed(ours[0]))] if ours else []
    return [("", items)]


def draw_boxes(fig: Any, panels: list, title: str = "") -> Any:
    """Fill a matplotlib Figure with one box plot per panel (linear proj. loss per seed, points overlaid)."""
    axes = fig.subplots(1, max(len(panels), 1), squeeze=False, sharey=True)[0]
    for ax, (ptitle, items) in zip(axes, panels):
        data = [v[np.isfinite(v)] for _, v in items]
        ax.boxplot([d if d.size else [np.nan] for d in data], widths=0.6)
        for i, d in enumerate(data):
            ax.scatter(np.full(d.size, i + 1.0) + np.linspace(-0.12, 0.12, d.size), d, s=8, alpha=0.6)
        ax.set_xticks(range(1, len(items) + 1), [n for n, _ in items], rotation=40, ha="right", fontsize=7)
        ax.set_title(ptitle, fontsize=9)
        ax.grid(alpha=0.3, axis="y")
        ax.set_ylim(bottom=0)
    axes[0].set_ylabel("linear proj. loss (mean MSE) ↓", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def write_boxes(panels: list, path: str, title: str = "") -> None:
    """Draw with the Agg canvas and write the PNG atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    width = sum(max(len(items), 1) * 0.6 + 0.8 for _, items in panels) + 1.0
    fig = Figure(figsize=(max(width, 4.0), 3.8), dpi=120)
    FigureCanvasAgg(fig)
    draw_boxes(fig, panels, title)
    with io.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def markdown(rows: list, root: str, out: str) -> str:
    """Table C over every ball row, then per study a table (mean ± std, median [range]) and its box plot PNG."""
    lines = ["## Ball: linear-projection MSE (spec §7.2), held-out trajectories, mean ± std over seeds", "",
             "Table C.", "",
             _table(["Method"] + [n for _, n in AXES] + ["Seeds"],
                    [[_label(r, root)] + [_fmt(per_seed(r, a)) for a, _ in AXES] + [str(np.isfinite(per_seed(r)).sum())]
                     for r in rows])]
    for study, srows in studies(rows, root).items():
        panels = boxes(study, srows, root, rows)
        png = f"box_{study or 'runs'}.png"
        write_boxes(panels, os.path.join(out, png), STUDIES.get(study, (study,))[0])
        lines += ["", f"### {STUDIES.get(study, (study or 'runs',))[0]}", "", f"![{study}]({png})", "",
                  _table(["Panel", "Box", "median [min–max]", "mean ± std", "Seeds"],
                         [[p or "—", n, _median(v), _fmt(v), str(np.isfinite(v).sum())]
                          for p, items in panels for n, v in items])]
    return "\n".join(lines) + "\n"


# --- notebook helpers (notebooks/ball_latents.ipynb) ---------------------------------------------------------

def encode_ball(model: Any, split: str = "eval", n: int = 64) -> dict[str, np.ndarray]:
    """mu of every seed for the first n trajectories of a split: dict(mu [S, n, T, d], position [n, T, 3], x)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from symmetry import data as data_lib

    ds = data_lib.build_dataset(model.cfg.data, split)
    x, pos = ds["x"][:n], ds["position"][:n]
    enc = jax.jit(jax.vmap(lambda q, xb: nnx.merge(model.graphdef, q).encode(xb.astype(jnp.float32) / 255.0)[0],
                           in_axes=(0, None)))
    return dict(mu=np.asarray(enc(model.params, jnp.asarray(x))), position=pos, x=x)


def affine_map(mu: np.ndarray, position: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(positions / per-axis std, the affine least-squares image of mu in that space) for mu [..., d], pos [..., 3]
    (the §7.2 fit; the residual of the two is the per-axis linear-projection MSE)."""
    z = mu.reshape(-1, mu.shape[-1]).astype(np.float64)
    y = position.reshape(-1, 3).astype(np.float64)
    y = y / y.std(0)
    a = np.concatenate([z, np.ones((len(z), 1))], 1)
    pred = a @ np.linalg.lstsq(a, y, rcond=None)[0]
    return y.reshape(position.shape), pred.reshape(position.shape)


def traversal(model: Any, mu: np.ndarray, seed_index: int = 0, n: int = 7, n_std: float = 2.0
              ) -> tuple[np.ndarray, np.ndarray]:
    """Decoder traversals of one seed: (z [d, n] swept values, images [d, n, H, W, 3] in [0, 1]); latent axis i
    sweeps mean ± n_std std of the encoded latents while the other axes stay at their mean."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    m = mu[seed_index].reshape(-1, mu.shape[-1])
    d = m.shape[-1]
    sweep = m.mean(0)[:, None] + m.std(0)[:, None] * np.linspace(-n_std, n_std, n)          # [d, n]
    z = np.broadcast_to(m.mean(0), (d, n, d)).copy()
    for i in range(d):
        z[i, :, i] = sweep[i]
    params = jax.tree.map(lambda a: a[seed_index], model.params)
    img = jax.nn.sigmoid(nnx.merge(model.graphdef, params).decode(jnp.asarray(z, jnp.float32)))
    return sweep, np.asarray(img)
