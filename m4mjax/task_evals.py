"""Each task's own evaluation, where plain held-out loss is not its measure (``m4mjax.evaluate`` dispatches here).

An evaluation is ``fn(workdir, cfg, max_batches) -> eval dict`` (it writes W/eval.json). The table names
functions as "module:function", imported on demand, so evaluating an LM imports none of them. It lives above
``m4mjax.tasks`` (not in it): an evaluation loads its run, whose model is built through the task registry.
"""
from __future__ import annotations

import importlib
from typing import Callable

GEN_EVAL = "m4mjax.gen_scores:evaluate"  # sampled targets vs held-out songs (task metrics, m4mjax.gen_scores)

EVALUATIONS: dict[str, str] = {
    "analysis": "m4mjax.analysis_scores:evaluate",  # mir_eval chords + downbeat F on held-out songs
    "chord_to_melody": GEN_EVAL,
    "melody_to_chord": GEN_EVAL,
    "drums_to_others": GEN_EVAL,
    "others_to_drums": GEN_EVAL,
}


def evaluator(task: str) -> Callable | None:
    """The task's own evaluation function (imported on demand), or None for plain held-out loss."""
    if task not in EVALUATIONS:
        return None
    module, _, fn = EVALUATIONS[task].partition(":")
    return getattr(importlib.import_module(module), fn)
