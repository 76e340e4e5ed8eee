"""python -m m4mjax.convert_torch CKPT --out=W [--size=N] [--base=FOUNDATION_CKPT]

Converts an official PyTorch checkpoint (music-x-lab/midi-function-alignment: the foundation LM, FA_self
``RoformerPrompt`` or FA_cross ``RoformerYinyang``; a Lightning ``.ckpt`` or a bare ``state_dict`` ``.pt``) into
an ordinary run directory (config.json + checkpoints/0/params) that ``train --config.init_from=W``, evaluate,
sample, analyze and generate accept. Needs torch (``pip install -e '.[torch]'``), never the official code.

* Every tensor is mapped (``m4mjax.torch_names``); a missing, extra or mis-shaped tensor is refused by name.
* The model's shape is read from the tensors (widths, layers, FFN, heads from the rotary tables); ``--size``
  checks it against spec size N.
* Rotary tables: the official modules (transformers 4.52.4) hold them as trained parameters initialised N(0,1);
  tables that are not the fixed sinusoids are loaded as parameters (``model.position_tables='learned'``), ones
  that are get verified. An FA checkpoint holds only its trained tensors (the official ``state_dict`` keeps
  trainable ones), so ``--base`` names the foundation checkpoint it was trained from; as the official FA
  loader does, the global table is dropped and rebuilt as sinusoids of ``max_position_embeddings`` rows.
* Rows: the official data holds up to 16 notes per frame (8 for the ``cp8`` Nottingham sets), EOS only in
  shorter rows (``model.row_format='official'``, L = 32 or 16).

``logits(workdir, tokens)`` gives our logits for official-layout token rows, for checking a conversion.
"""
from __future__ import annotations

import os
import re
import time

import numpy as np

from m4mjax import torch_names as tn
from m4mjax.run.cli import UserError

WIDTHS = {512: 0, 768: 1, 1024: 2, 1280: 3}


def read_checkpoint(path: str) -> tuple[dict[str, np.ndarray], dict]:
    """(tensors by normalised official name as float32 numpy, Lightning hyper-parameters or {})."""
    try:
        import torch
    except ImportError as e:
        raise UserError("needs torch: pip install -e '.[torch]'", "m4mjax.convert_torch") from e
    if not os.path.isfile(path):
        raise UserError("no such checkpoint file", path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)  # no pickle code runs
    except Exception as e:  # noqa: BLE001  torch raises many types for a bad file
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise UserError(f"not a readable PyTorch checkpoint ({type(e).__name__}: {first})", path) from e
    if not isinstance(obj, dict):
        raise UserError(f"holds a {type(obj).__name__}, not a state dict", path)
    sd = obj.get("state_dict", obj)
    hp = obj.get("hyper_parameters", {}) if "state_dict" in obj else {}
    tensors = {tn.normalise(k): v.detach().float().numpy() for k, v in sd.items() if torch.is_tensor(v)}
    if not tensors:
        raise UserError("holds no tensors", path)
    return tensors, dict(hp or {})


def _head_count(t: dict, stack: str, width: int, default: int) -> int:
    table = t.get(f"{stack}.embed_positions.weight")
    return width // table.shape[1] if table is not None else default


def model_section(t: dict, hp: dict, size: int | None, fa: bool, where: str):
    """Our ``model`` config of the checkpoint's tensors (see the module docstring)."""
    from m4mjax.model import SIZES, model_config

    if "local_embedding.weight" not in t:
        raise UserError("checkpoint lacks tensor 'local_embedding.weight' (an FA checkpoint needs --base)", where)
    V, E = t["local_embedding.weight"].shape
    if V != 3331:
        raise UserError(f"vocabulary of {V} tokens: only the no-velocity layout (3331) is supported", where)
    layers = tn.count_layers(t, "model")
    found = WIDTHS.get(E) if E in WIDTHS and SIZES[WIDTHS[E]][1] == layers else None
    if size is not None and found != size:
        raise UserError(f"checkpoint is width {E} with {layers} global layers, not size {size} "
                        f"({SIZES.get(size)})", "--size")
    m = model_config(found if found is not None else 0)
    m.size = found if found is not None else -1
    heads = _head_count(t, "model", E, SIZES[found][2] if found is not None else 0)
    if not heads:
        raise UserError("cannot tell the global head count (no model.embed_positions.weight)", where)
    ffn_of = (lambda s: t[f"{s}.layer.0.intermediate.dense.weight"].shape[0])
    m.update(width=E, layers=layers, heads=heads, ffn=ffn_of("model"),
             local_layers=tn.count_layers(t, "local_encoder"), local_heads=_head_count(t, "local_encoder", E, 8),
             local_ffn=ffn_of("local_encoder"), dropout=0.1, row_format="official")
    notes = re.search(r"cp(\d+)", str(hp.get("train_task", "")) + str(hp.get("model_fp", "")))
    m.max_frame_tokens = 2 * (int(notes.group(1)) if notes else 16)
    glob, local = t.get("model.embed_positions.weight"), t.get("local_encoder.embed_positions.weight")
    local_learned = local is not None and not tn.is_sinusoid(local)
    if fa:  # the official FA loader rebuilds the global sinusoids
        m.max_frames = int(hp.get("max_position_embeddings", 768))
        m.position_tables = "learned_local" if local_learned else "sinusoid"
    else:
        m.max_frames = glob.shape[0] if glob is not None else 1536
        learned = glob is not None and not tn.is_sinusoid(glob)
        m.position_tables = "learned" if learned else ("learned_local" if local_learned else "sinusoid")
    return m


def link_section(fa: dict, hp: dict, layers: int, where: str):
    """(our ``link`` config, number of adapters) of an FA checkpoint's own tensors and hyper-parameters."""
    from m4mjax import linked

    n_adapters = tn.count_layers(fa, "yinyang_attn")
    kind = "fa_cross" if n_adapters else "fa_self"
    link = linked.link_config(kind)
    lora = [v.shape[0] for k, v in fa.items() if k.endswith("lora_A.default.weight")]
    if not lora:
        raise UserError("FA checkpoint without LoRA tensors (use_lora=False) is not supported", where)
    words = str(hp.get("train_task", "")).split("_")
    link.update(lora_rank=lora[0], lora_alpha=2.0 * lora[0], lora_scope="all",
                change_pe=kind == "fa_cross" or "sentence_embedding" in fa,
                mask_prob=float(hp.get("mask_prob", 0.0) or 0.0), mask_length=int(hp.get("mask_length", 10) or 10),
                mask_stream="reference" if "lmask" in words else "target",
                ref_stride=int(hp.get("compress_ratio_l", 1)), target_stride=int(hp.get("compress_ratio_r", 1)))
    if n_adapters:
        link.adapter_every = int(hp.get("n_skip", layers // n_adapters))
        link.adapter_width = fa["yinyang_attn.0.q_linear.weight"].shape[0]
    return link, n_adapters


def experiment_config(ckpt: str, size: int | None = None, base: str | None = None):
    """(experiment config, pure params) of an official checkpoint (+ its foundation ``base`` for FA ones)."""
    from m4mjax.config import defaults

    t, hp = read_checkpoint(ckpt)
    fa_keys = ("masked_embedding", "sentence_embedding")
    fa = any(k in t for k in fa_keys) or any(k.startswith("yinyang_attn.") or ".lora_" in k for k in t)
    own = dict(t)
    if fa and "local_embedding.weight" not in t:
        if not base:
            raise UserError("an FA checkpoint holds only its trained tensors: give the foundation with --base", ckpt)
        t = {**read_checkpoint(base)[0], **t}
    cfg = defaults()
    cfg.model.update(model_section(t, hp, size, fa, ckpt).to_dict())
    cfg.data.frames = 384
    link, n_adapters = None, 0
    if fa:
        link, n_adapters = link_section(own, hp, cfg.model.layers, ckpt)
        cfg.link = link
        cfg.task = "analysis"
        task_words = str(hp.get("train_task", ""))
        if "chord_mel" in task_words:  # official track order: chords (track 1) then melody (track 0); rev swaps
            ref, tgt = ("track:0", "track:1") if "rev" in task_words.split("_") else ("track:1", "track:0")
        else:
            from m4mjax.tasks import get_task

            ref, tgt = get_task("analysis").reference, get_task("analysis").target
        cfg.data.update(reference=ref, target=tgt)
    params = tn.to_params(tn.Source(t, ckpt), cfg.model, link, n_adapters)
    return cfg, params


def _check_tree(cfg, params: dict) -> None:
    """Our mapping's output has exactly the model's parameter paths and shapes (a converter bug otherwise)."""
    import jax
    from flax import nnx

    from m4mjax import tasks

    model = nnx.eval_shape(lambda: tasks.get_task(cfg.task).build(cfg, nnx.Rngs(0)))
    want = {jax.tree_util.keystr(p): x.shape for p, x in
            jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(nnx.state(model, nnx.Param)))}
    got = {jax.tree_util.keystr(p): x.shape for p, x in jax.tree_util.tree_leaves_with_path(params)}
    bad = sorted(k for k in want.keys() | got.keys() if want.get(k) != got.get(k))
    if bad:
        raise AssertionError(f"converter: {bad[0]} mapped {got.get(bad[0])} vs model {want.get(bad[0])}")


def convert(ckpt: str, out: str, size: int | None = None, base: str | None = None) -> dict:
    """Write the run directory ``out``; returns a summary (parameters, tables, seconds)."""
    from m4mjax.run import checkpoint, cli

    t0 = time.perf_counter()
    if os.path.isdir(os.path.join(out, "checkpoints")):
        raise UserError("already holds checkpoints; choose a new run directory", out)
    if not os.path.isdir(os.path.dirname(os.path.abspath(out))):
        raise UserError("parent folder does not exist", out)
    cfg, params = experiment_config(ckpt, size, base)
    _check_tree(cfg, params)
    cli.setup_workdir(out, cfg)
    ck = checkpoint.Checkpointer(out, every=1, keep=1)
    ck.save(0, {"params": params}, force=True)
    ck.close()
    n = int(sum(np.size(x) for x in __import__("jax").tree.leaves(params)))
    return dict(out=out, task=cfg.task, params=n, position_tables=cfg.model.position_tables,
                max_frames=cfg.model.max_frames, seconds=round(time.perf_counter() - t0, 2))


def logits(workdir: str, tokens, reference=None) -> np.ndarray:
    """Our logits [B,F,L,V] (float32, no dropout) for official-layout token rows ``tokens`` [B,F,L] of a converted
    (or any) run; a linked run needs the ``reference`` rows [B,F1,L] and scores ``tokens`` as its target."""
    import jax.numpy as jnp
    from flax import nnx

    from m4mjax import runs

    model, _ = runs.load_run(workdir)
    tokens = jnp.asarray(tokens, jnp.int32)
    # jitted: one compiled program (op-by-op dispatch compiles hundreds of small ones, most of the time here)
    if hasattr(model, "link_logits"):
        if reference is None:
            raise ValueError("logits: a linked run needs the reference rows")
        reference = jnp.asarray(reference, jnp.int32)
        return np.asarray(nnx.jit(lambda m, r, t: m.link_logits(r, t))(model, reference, tokens))
    return np.asarray(nnx.jit(lambda m, t: m(t))(model, tokens))


def main(argv: list[str] | None = None) -> None:
    from m4mjax.run.cli import ArgumentParser, report_errors

    with report_errors("m4mjax.convert_torch"):
        ap = ArgumentParser(prog="python -m m4mjax.convert_torch", description=__doc__.split("\n\n")[1])
        ap.add_argument("checkpoint", help="official .ckpt (Lightning) or .pt (state_dict)")
        ap.add_argument("--out", required=True, help="run directory to write")
        ap.add_argument("--size", type=int, choices=[0, 1, 2, 3], help="check the model is spec size N")
        ap.add_argument("--base", help="the foundation checkpoint an FA checkpoint was trained from")
        a = ap.parse_args(argv)
        if not os.path.isfile(a.checkpoint):
            raise UserError("no such checkpoint file", a.checkpoint)
        if a.base and not os.path.isfile(a.base):
            raise UserError("no such checkpoint file", a.base)
        info = convert(a.checkpoint, a.out, a.size, a.base)
        print(f"wrote {info['out']}: task {info['task']}, {info['params']:,} parameters, rotary tables "
              f"{info['position_tables']}, {info['max_frames']} frame positions ({info['seconds']} s)")


if __name__ == "__main__":
    main()
