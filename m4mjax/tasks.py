"""Tasks: what a run trains. Each task names its model builder, its loss, which variables the optimizer
updates (everything else is frozen and carries no optimizer state) and the batch streams it reads. Where plain
held-out loss is not a task's measure, ``m4mjax.task_evals`` names its own evaluation (kept out of this module:
an evaluation loads runs, which builds their models through this registry).

The function-alignment tasks (spec §4-§5) are one ``linked_task`` entry each: a linked model (FA_self or
FA_cross, ``config.link.kind``) reading a reference stream and modelling a time-aligned target stream, the
two picked from a song's notes by ``data.reference`` / ``data.target`` selectors (m4mjax.datasets.pipeline).
The entry carries its default selectors; an experiment config copies them into ``cfg.data``. The trainable
filter follows ``config.link.train`` ('link': LoRA + adapters; 'full': every parameter), resolved per run by
``Task.trainable(cfg)``. Conditional generation would be, e.g.::

    "chord2melody": linked_task("chord2melody", reference="track:1", target="track:0"),
    "drums2others": linked_task("drums2others", reference="drums", target="others"),
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import ml_collections
from flax import nnx

from m4mjax import linked, model as lm

Loss = Callable[[nnx.Module, dict, jax.Array | None], tuple[jax.Array, dict]]


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    build: Callable[[ml_collections.ConfigDict, nnx.Rngs], nnx.Module]  # (full config, rngs) -> model
    loss: Loss                       # (model, batch, dropout key or None) -> (mean loss, metrics)
    trainable: Callable[[ml_collections.ConfigDict], Any] = lambda cfg: nnx.Param  # config -> nnx filter of the
    # variables the optimizer updates (everything else is frozen)
    streams: tuple[str, ...] = ("tokens",)  # batch keys the task reads
    reference: str = ""              # default data.reference selector (two-stream tasks)
    target: str = ""                 # default data.target selector


def _lm_build(cfg: ml_collections.ConfigDict, rngs: nnx.Rngs) -> nnx.Module:
    return lm.M4MTransformer(cfg.model, rngs=rngs)


def _lm_loss(model: nnx.Module, batch: dict, key: jax.Array | None) -> tuple[jax.Array, dict]:
    return lm.loss_fn(model, batch["tokens"], key)


# --- function alignment ------------------------------------------------------------------------------
def resolved(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """``cfg`` with every value its task derives filled in (a link's LoRA rank/alpha from its kind, the target
    stream's row length 0 = the reference's), so the ``config.json`` a run writes says what was trained;
    idempotent."""
    if "link" not in cfg:
        return cfg
    out = ml_collections.ConfigDict(cfg.to_dict())
    out.link = linked.resolve_link(cfg.link)
    if "target_frame_tokens" in out.data and not out.data.target_frame_tokens:
        out.data.target_frame_tokens = out.data.max_frame_tokens  # as the data pipeline reads a 0
    return out


def linked_task(name: str, reference: str, target: str) -> Task:
    """A function-alignment task: linked model, loss on the target stream, trainable per ``link.train``."""
    return Task(name, linked.build, linked.loss_fn, streams=("reference", "target"), trainable=linked.trainable,
                reference=reference, target=target)


TASKS: dict[str, Task] = {
    "lm": Task("lm", _lm_build, _lm_loss),
    # MIDI chord & metrical analysis: the music (tracks < 250) -> chord track (250) + beat track (251)
    "analysis": linked_task("analysis", reference="music", target="labels"),
    # conditional generation (experiments/m4m/generation.py; data: m4mjax.datasets.generation_data). Melody =
    # track 0, the chord track written as music = track 250 (m4mjax.labels); drums/others = the music's drum /
    # non-drum notes, label tracks (250 chords, 251 beats) never seen.
    "chord_to_melody": linked_task("chord_to_melody", reference="track:250", target="track:0"),
    "melody_to_chord": linked_task("melody_to_chord", reference="track:0", target="track:250"),
    "drums_to_others": linked_task("drums_to_others", reference="music_drums", target="music_others"),
    "others_to_drums": linked_task("others_to_drums", reference="music_others", target="music_drums"),
}


def get_task(name: str) -> Task:
    """The registered task ``name`` (config.task)."""
    if name not in TASKS:
        from m4mjax.run.errors import UserError

        raise UserError(f"not a task; known: {sorted(TASKS)}", f"config.task={name!r}")
    return TASKS[name]
