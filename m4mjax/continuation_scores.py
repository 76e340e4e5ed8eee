"""Does a foundation LM keep playing the prompt's band? The continuation measure (the library under
``m4mjax.continuation``).

Held-out test windows of ``prompt_frames + n_frames`` frames: the first part is the prompt, the model samples
the rest. Per prompt (averaged over prompts, beside the same numbers for the true continuation):
  * ``instruments_kept``: share of the prompt's instruments (GM programs, drums as one) that play at least one
    note in the continuation;
  * ``drums_kept``: of the prompts with drums, the share whose continuation has drums;
  * ``pc_distance``: total-variation distance (0..1) between the pitch-class histograms (non-drum notes,
    counted by onsets) of prompt and continuation (1 when the continuation is silent);
  * ``notes_per_frame`` of the continuation.
"""
from __future__ import annotations

import numpy as np

from m4mjax import tokenizer as tk


def pc_histogram(notes: np.ndarray) -> np.ndarray:
    """Normalised pitch-class histogram of the non-drum notes (zeros when there are none)."""
    pitched = notes[notes[:, tk.INSTRUMENT] != tk.DRUM]
    h = np.bincount(pitched[:, tk.PITCH] % 12, minlength=12).astype(np.float64)
    return h / h.sum() if h.sum() else h


def continuation_stats(prompt: np.ndarray, cont: np.ndarray, n_frames: int) -> dict[str, float]:
    """Measures of one continuation (notes arrays of the prompt and of the continuation)."""
    p_ins, c_ins = set(prompt[:, tk.INSTRUMENT].tolist()), set(cont[:, tk.INSTRUMENT].tolist())
    hp, hc = pc_histogram(prompt), pc_histogram(cont)
    out = {
        "instruments_kept": len(p_ins & c_ins) / len(p_ins) if p_ins else float("nan"),
        "drums_kept": float(tk.DRUM in c_ins) if tk.DRUM in p_ins else float("nan"),
        "pc_distance": 0.5 * float(np.abs(hp - hc).sum()) if hp.sum() and hc.sum() else (1.0 if hp.sum() else float("nan")),
        "notes_per_frame": len(cont) / max(n_frames, 1),
    }
    return out


def mean_stats(rows: list[dict[str, float]]) -> dict[str, float]:
    """Mean of each measure over the rows where it is defined (NaN = undefined, e.g. no drums in the prompt)."""
    keys = rows[0].keys() if rows else ()
    out = {}
    for k in keys:
        v = np.array([r[k] for r in rows], np.float64)
        v = v[~np.isnan(v)]
        out[k] = float(v.mean()) if len(v) else float("nan")
        out[f"{k}_n"] = int(len(v))
    return out


def held_out_windows(cfg, n: int, frames: int, split: str = "test", min_instruments: int = 2) -> np.ndarray:
    """The first ``n`` fixed ``split`` windows of ``frames`` frames whose first half has at least
    ``min_instruments`` instruments (multi-track prompts: the case the measure is about)."""
    from m4mjax.datasets import pipeline

    cfg = cfg.copy_and_resolve_references()
    cfg.data.frames, cfg.data.batch_size, cfg.data.drop_short = frames, 1, True
    cfg.data.reference, cfg.data.target = "", ""
    keep = []
    for b in pipeline.make_dataset(cfg.data, split, seed=0):
        t = np.asarray(b["tokens"][0])
        if not b["mask"][0]:
            continue
        first = tk.tokens_to_notes(t[: frames // 2])
        if len(set(first[:, tk.INSTRUMENT].tolist())) >= min_instruments:
            keep.append(t)
        if len(keep) >= n:
            break
    if not keep:
        from m4mjax.run.errors import UserError

        raise UserError(f"no {split} window of {frames} frames with >= {min_instruments} instruments")
    return np.stack(keep)


def measure(model, windows: np.ndarray, prompt_frames: int, seed: int = 0, temperature: float = 1.0,
            top_p: float = 0.95, batch: int = 8) -> dict:
    """Sample continuations of every window's prompt; measures for the samples and for the true continuation."""
    import jax

    from m4mjax import sampling

    n_frames = windows.shape[1] - prompt_frames
    model_rows, true_rows = [], []
    for i in range(0, len(windows), batch):
        w = windows[i:i + batch]
        out = np.asarray(sampling.generate(model, w[:, :prompt_frames], n_frames, jax.random.key(seed + i),
                                         temperature, top_p))
        for true, gen in zip(w, out):
            prompt = tk.tokens_to_notes(true[:prompt_frames])
            model_rows.append(continuation_stats(prompt, tk.tokens_to_notes(gen[prompt_frames:]), n_frames))
            true_rows.append(continuation_stats(prompt, tk.tokens_to_notes(true[prompt_frames:]), n_frames))
    return {"model": mean_stats(model_rows), "ground_truth": mean_stats(true_rows), "prompts": len(windows),
            "prompt_frames": prompt_frames, "n_frames": n_frames, "temperature": temperature, "top_p": top_p}
