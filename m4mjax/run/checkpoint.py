"""The only file that touches Orbax.

A checkpoint is a step directory holding named items: pytrees of arrays (e.g. ``params`` as a pure
dict, ``opt`` as optimizer state) saved with StandardSave, plus ``data`` (the input iterator state,
JSON). Restoring with an abstract target whose leaves carry shardings puts the arrays straight onto
the current mesh, whatever mesh wrote them. No pickle anywhere.

A damaged step (a file truncated or deleted) never ends a run with a storage-library traceback: a
resuming trainer says so in one line and falls back to the newest readable step (the damaged ones are
moved to ``workdir/unreadable_checkpoints/``); weights-only readers raise a one-line UserError.
"""
from __future__ import annotations

import os
import re
import signal
import sys
import tempfile
import threading
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx

from m4mjax.run.errors import UserError

_preempted = threading.Event()
ASIDE = "unreadable_checkpoints"  # where a resuming trainer moves damaged steps (beside checkpoints/)
PARAMS_FILE = "params.npz"  # a shipped model folder (pretrained/NAME): config.json + this, weights only


def _on_sigterm(signum, frame):  # noqa: ARG001
    _preempted.set()


def _reason(e: BaseException) -> str:
    """One line from an Orbax/TensorStore failure: the first line of its root cause, shortened."""
    while e.__cause__ is not None:
        e = e.__cause__
    lines = str(e).strip().splitlines()
    msg = f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__
    msg = re.sub(r' in OCDBT database at local file "[^"]*"', "", msg)  # the path is named beside the reason
    return msg if len(msg) <= 240 else msg[:237] + "..."


def _orbax_noise(u) -> bool:
    """An unraisable error left behind by a failed Orbax read: its other array reads failing later in
    TensorStore threads after the event loop has closed (dozens of tracebacks for one damaged file)."""
    if isinstance(u.exc_value, RuntimeError) and "Event loop is closed" in str(u.exc_value):
        return True
    code = getattr(u.object, "cr_code", None)  # a never-awaited Orbax read coroutine
    return code is not None and "orbax" in code.co_filename


def _quiet_failed_reads() -> None:
    """After a failed restore, drop the failed read's leftover unraisable errors (and nothing else)."""
    _settle_failed_reads()
    previous = sys.unraisablehook
    if getattr(previous, "_m4mjax", False):
        return

    def hook(u):
        if not _orbax_noise(u):
            previous(u)

    hook._m4mjax = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


_TRACEBACK_PIECES = ("Traceback (most recent call last)", "RuntimeError", "Event loop is closed", "_check_closed",
                     "call_soon_threadsafe", "base_events.py")


def _settle_failed_reads(seconds: float = 1.0, deadline: float = 30.0) -> None:
    """A failed Orbax read leaves its worker threads (asyncio executor threads, ``asyncio_N``) finishing its other
    reads; they print "Event loop is closed" tracebacks straight to fd 2 (no Python hook sees them). Hold fd 2 in a
    file for ``seconds``, until those threads have ended and until ``seconds`` pass with nothing written (at most
    ``deadline`` s: fixed waits were too short on a loaded machine), then pass on everything else written meanwhile."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            time.sleep(seconds)
            end = time.monotonic() + deadline
            for t in threading.enumerate():
                if t is not threading.current_thread() and t.name.startswith("asyncio_"):
                    t.join(max(end - time.monotonic(), 0.0))
            written = -1  # then until nothing more arrives for ``seconds``: on a loaded machine other threads of
            while time.monotonic() < end:  # the read were seen printing after those had ended
                now = os.fstat(held.fileno()).st_size
                if now == written:
                    break
                written = now
                time.sleep(seconds)
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        held.seek(0)
        text = held.read().decode(errors="replace")
    if "Event loop is closed" in text:  # the threads' tracebacks interleave, even inside a line ("RuntimeError:
        # " from one thread, "    self._check_closed()" from another): drop every line holding a piece of them
        text = "".join(ln for ln in text.splitlines(True) if not (
            ln.startswith((" ", "\t")) or not ln.strip() or any(p in ln for p in _TRACEBACK_PIECES)))
    if text.strip():
        sys.stderr.write(text)


def _target(like: Any) -> Any:
    """Restore target of ``like`` (arrays, ShapeDtypeStructs, Orbax metadata or an nnx.State):
    ShapeDtypeStructs placed by each leaf's own sharding, else on the first local device."""
    pure = nnx.to_pure_dict(like) if isinstance(like, nnx.State) else like
    dev = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

    def onto(x):
        sh = getattr(x, "sharding", None)
        return jax.ShapeDtypeStruct(tuple(x.shape), x.dtype, sharding=sh if isinstance(sh, jax.sharding.Sharding) else dev)

    return jax.tree.map(onto, pure)  # leaves: arrays, ShapeDtypeStructs, Orbax ArrayMetadata


def _fill(like: Any, restored: Any) -> Any:
    """``restored`` in the form of ``like``: a new nnx.State when ``like`` is one, else as restored."""
    if not isinstance(like, nnx.State):
        return restored
    filled = jax.tree.map(lambda x: x, like)
    nnx.replace_by_pure_dict(filled, restored)
    return filled


class Checkpointer:
    """Periodic + on-preemption saves into ``workdir/checkpoints``; keeps the latest ``keep``, and with
    ``keep_every`` > 0 also every step that is a multiple of it (learning curves evaluated afterwards)."""

    def __init__(self, workdir: str, every: int, keep: int = 3, keep_every: int = 0):
        self.every = int(every)
        self.workdir = os.path.abspath(workdir)
        self.directory = os.path.join(self.workdir, "checkpoints")
        self._mngr = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, keep_period=int(keep_every) or None, create=True,
                                                 enable_async_checkpointing=False))
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _on_sigterm)

    @property
    def latest_step(self) -> int | None:
        return self._mngr.latest_step()

    @property
    def preempted(self) -> bool:
        """True once SIGTERM arrived (or, on a multi-host slice, the cluster announced preemption)."""
        if _preempted.is_set():
            return True
        if jax.process_count() > 1 and self.latest_step is not None:
            return bool(self._mngr.reached_preemption(self.latest_step))
        return False

    def restore(self, abstract: dict[str, Any], step: int | None = None) -> tuple[int, dict[str, Any], Any] | None:
        """Restore items named like ``abstract`` (pytrees of ShapeDtypeStructs or arrays whose shardings say
        where each array goes, or nnx.States, returned filled) and the data state.

        Returns (step, items, data_state), or None when there is no checkpoint yet. Without ``step``, an
        unreadable latest step is reported in one line on stderr, moved aside, and the next older one is
        tried; a UserError when no step is readable (nothing is moved then)."""
        steps = [step] if step is not None else sorted(self._mngr.all_steps(), reverse=True)
        failed: list[tuple[int, str]] = []
        errors: list[Exception] = []
        for s in steps:
            try:
                items, data = self._restore_step(s, abstract)
            except Exception as e:  # noqa: BLE001  Orbax/TensorStore raise many types for a damaged step
                _quiet_failed_reads()
                failed.append((s, _reason(e)))
                errors.append(e)
                continue
            if failed:
                self._set_aside(failed, s)
            return s, items, data
        if not failed:
            return None
        s, why = failed[0]
        older = f"; so are steps {', '.join(str(f) for f, _ in failed[1:])}" if len(failed) > 1 else ""
        raise UserError(f"checkpoint step {s} is unreadable ({why}){older}", self.directory,
                        reads_in_flight=True) from errors[0]

    def _restore_step(self, step: int, abstract: dict[str, Any]) -> tuple[dict[str, Any], Any]:
        args = {k: ocp.args.StandardRestore(_target(v)) for k, v in abstract.items()}
        if self._has_item(step, "data"):
            args["data"] = ocp.args.JsonRestore()
        out = self._mngr.restore(step, args=ocp.args.Composite(**args))
        return {k: _fill(v, out[k]) for k, v in abstract.items()}, out.get("data") if "data" in args else None

    def _set_aside(self, failed: list[tuple[int, str]], good: int) -> None:
        """Report each unreadable step in one line and move it out of the way (training will re-save it)."""
        aside = os.path.join(self.workdir, ASIDE)
        for s, why in failed:
            dest = os.path.join(aside, str(s))
            k = 1
            while os.path.exists(dest):
                dest, k = os.path.join(aside, f"{s}.{k}"), k + 1
            if jax.process_index() == 0:
                os.makedirs(aside, exist_ok=True)
                os.replace(os.path.join(self.directory, str(s)), dest)
                print(f"checkpoint step {s} in {self.workdir} is unreadable ({why}); falling back to step {good} "
                      f"(moved to {dest})", file=sys.stderr, flush=True)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices("m4mjax: unreadable checkpoints moved aside")
        self._mngr.reload()

    def due(self, step: int, force: bool = False) -> bool:
        """Whether save(step) would write: on the interval, on preemption or when forced, once per step."""
        if not (force or self.preempted or (self.every > 0 and step % self.every == 0)):
            return False
        return self.latest_step != step

    def save(self, step: int, items: dict[str, Any], data_state: Any = None, force: bool = False) -> bool:
        """Save when ``step`` is on the interval, on preemption, or when forced. Returns True if saved."""
        if not self.due(step, force):
            return False
        args = {k: ocp.args.StandardSave(v) for k, v in items.items()}
        if data_state is not None:
            args["data"] = ocp.args.JsonSave(data_state)
        self._mngr.save(step, args=ocp.args.Composite(**args), force=True)
        self._mngr.wait_until_finished()
        return True

    def _has_item(self, step: int, name: str) -> bool:
        return os.path.isdir(os.path.join(self.directory, str(step), name))

    def close(self) -> None:
        self._mngr.wait_until_finished()
        self._mngr.close()


def latest_step(workdir: str) -> int | None:
    """The newest checkpointed step of a run directory (None when it has none)."""
    directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    if not os.path.isdir(directory):
        return None
    with ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=False)) as m:
        return m.latest_step()


def _flat(tree: Any) -> dict[str, tuple]:
    """{'a/b/0': shape} of a pytree of arrays / metadata (keys as strings: checkpoints store them so)."""
    out = {}
    for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
        name = "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
        out[name] = tuple(x.shape)
    return out


def restore_params(workdir: str, like: Any = None, step: int | None = None, item: str = "params") -> Any:
    """Weights only (sampling, evaluation, ``init_from``): item ``params`` of the latest (or ``step``)
    checkpoint of ``workdir``, onto the target ``like``:

    - None: the saved shapes on this process's first device (a run saved on a pod opens on a laptop);
      a pure dict with string keys;
    - a pytree of arrays / ShapeDtypeStructs (their shardings, if any, place the result);
    - an ``nnx.State`` (concrete or abstract): a new State of the same structure holding the weights.

    A missing run directory, one with no checkpoint, a checkpoint that does not match ``like`` and an
    unreadable one are UserErrors naming the directory."""
    directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    if not os.path.isdir(workdir):
        raise UserError("no such run directory", workdir)
    if step is None and item == "params" and os.path.isfile(os.path.join(workdir, PARAMS_FILE)) \
            and not os.path.isdir(directory):
        return _read_shipped(os.path.join(workdir, PARAMS_FILE), like)
    found = latest_step(workdir) if step is None else step
    if found is None:
        raise UserError("no checkpoint in this run directory (has train saved one yet?)", workdir)
    path = os.path.join(directory, str(found), item)
    if step is not None and not os.path.isdir(os.path.dirname(path)):
        kept = sorted(int(d) for d in os.listdir(directory) if d.isdigit()) if os.path.isdir(directory) else []
        raise UserError(f"no checkpoint at step {step} (kept: {', '.join(map(str, kept)) or 'none'})", workdir)
    if not os.path.isdir(path):
        raise UserError(f"checkpoint step {found} has no {item!r}", os.path.dirname(path))
    handler = ocp.StandardCheckpointHandler()  # the item directly: no step-level metadata or warnings
    try:
        try:
            meta = handler.metadata(epath.Path(path))
            meta = getattr(meta, "tree", meta)
        except Exception as e:  # noqa: BLE001
            raise UserError(f"checkpoint step {found} is unreadable ({_reason(e)})", path, reads_in_flight=True) from e
        if like is not None:
            saved, wanted = _flat(meta), _flat(_target(like))
            diff = sorted(k for k in saved.keys() | wanted.keys() if saved.get(k) != wanted.get(k))
            if diff:
                k = diff[0]
                raise UserError(f"checkpoint step {found} does not match the model: {len(diff)} parameters differ, "
                                f"e.g. {k!r} saved {saved.get(k, 'absent')} vs model {wanted.get(k, 'absent')}", path)
        target = _target(meta if like is None else like)  # metadata's sharding is no Sharding: first device
        try:
            out = handler.restore(epath.Path(path), args=ocp.args.StandardRestore(target))
        except Exception as e:  # noqa: BLE001
            _quiet_failed_reads()
            raise UserError(f"checkpoint step {found} is unreadable ({_reason(e)})", path, reads_in_flight=True) from e
    finally:
        handler.close()
    return out if like is None else _fill(like, out)


# ------------------------------------------------------------------------------ shipped weights (pretrained/)
def _name(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def write_shipped(path: str, params: Any) -> int:
    """Write a params pytree as one ``.npz`` (keys 'a/b/c', float32 arrays); returns its size in bytes."""
    from m4mjax.run import io

    flat = {_name(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}
    with io.atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **flat)
    return os.path.getsize(path)


def _read_shipped(path: str, like: Any) -> Any:
    """``restore_params`` for a shipped folder: names and shapes checked against ``like`` (one-line UserError)."""
    try:
        with np.load(path) as z:
            flat = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise UserError(f"unreadable weights file ({_reason(e)})", path) from e
    if like is None:
        out: dict[str, Any] = {}
        for k, v in flat.items():
            node = out
            *parents, last = k.split("/")
            for p in parents:
                node = node.setdefault(p, {})
            node[last] = jax.device_put(v, jax.local_devices()[0])
        return out
    target = _target(like)
    wanted = _flat(target)
    diff = sorted(k for k in wanted.keys() | flat.keys() if wanted.get(k) != (tuple(flat[k].shape) if k in flat else None))
    if diff:
        k = diff[0]
        raise UserError(f"weights do not match the model: {len(diff)} parameters differ, e.g. {k!r} file "
                        f"{tuple(flat[k].shape) if k in flat else 'absent'} vs model {wanted.get(k, 'absent')}", path)
    restored = jax.tree_util.tree_map_with_path(
        lambda p, x: jax.device_put(flat[_name(p)].astype(x.dtype), x.sharding), target)
    return _fill(like, restored)
