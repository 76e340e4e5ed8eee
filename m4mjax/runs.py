"""A run directory's model: ONE loader for every command that reads a trained run (sample, continuation, analyze,
generate, the evaluations, label_audit, convert_torch's logits).

The model is built exactly as its task builds it in training (``tasks.get_task(cfg.task).build``, under
``nnx.eval_shape``: no weights are drawn), then the latest checkpointed parameters (or a shipped folder's
params.npz, names and shapes checked) are read into it. ``steps.Setup`` is not used: it also builds shardings
over a device mesh, which reading a model for inference does not need.
"""
from __future__ import annotations

from typing import Any

from flax import nnx

from m4mjax.run.errors import UserError

LM_STREAMS = ("tokens",)  # the batch stream of a foundation LM
TWO_STREAMS = ("reference", "target")  # the batch streams of a reference -> target (linked) task


def load_run(workdir: str, *, task: str | None = None, streams: tuple[str, ...] | None = None,
             step: int | None = None) -> tuple[nnx.Module, Any]:
    """(model, config) of a run directory or shipped model folder (config.json + the latest weights, or checkpoint
    ``step``'s: a step not kept is a one-line UserError).
    ``task``: the run must have been trained for that task; ``streams``: its task must read those batch streams
    (``LM_STREAMS``, ``TWO_STREAMS``); otherwise a one-line UserError before any weight is read."""
    from m4mjax import tasks
    from m4mjax.run import checkpoint, cli

    cfg = cli.load_config(workdir)
    name = cfg.get("task", "lm")
    if task is not None and name != task:
        raise UserError(f"the run {workdir} was trained for task {name!r}, not {task!r}", f"--task={task}")
    t = tasks.get_task(name)
    if streams is not None and t.streams != tuple(streams):
        what = {TWO_STREAMS: "a reference -> target task (train analysis.py)",
                LM_STREAMS: "a foundation LM"}.get(tuple(streams), f"a task reading {tuple(streams)}")
        raise UserError(f"run of task {t.name!r} is not {what}", workdir)
    model = nnx.eval_shape(lambda: t.build(cfg, nnx.Rngs(0)))
    nnx.update(model, checkpoint.restore_params(workdir, nnx.state(model, nnx.Param), step=step))
    return model, cfg
