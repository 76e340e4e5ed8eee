"""The official PyTorch parameter names and shapes (HF ``RoFormerEncoder`` + peft LoRA + the FA adapters) and
how each maps onto our parameter tree. Pure numpy: no torch, no official code (facts from spec §3-§4).

Official names (``RoFormerSymbolicTransformer``): ``local_embedding.weight`` [V,E]; three encoders
``local_encoder`` / ``model`` (global) / ``local_decoder``, each ``embed_positions.weight`` [n, head_dim] and
``layer.{i}.attention.self.{query,key,value}``, ``attention.output.dense``, ``attention.output.LayerNorm``,
``intermediate.dense``, ``output.dense``, ``output.LayerNorm``; ``final_decoder`` [V,E]; ``global_sos`` [E].
The FA models wrap it (``wrapped_model.base_model.model.`` + peft ``...query.lora_A.default.weight`` [r,E] /
``lora_B.default.weight`` [E,r]) and add ``masked_embedding`` [1,1,E], FA_self ``sentence_embedding``
[2, head_dim], FA_cross ``yinyang_attn.{i}.{q,k,v,pos}_linear`` [inner,E], ``out_proj`` [E,inner], ``gates`` [1]
and a fixed ``pos.r_pos.relative`` [1, n, E] sinusoid. Torch linear weights are [out, in]; ours are [in, out]
split by head (``layers`` module docstring).
"""
from __future__ import annotations

import re

import numpy as np

from m4mjax.layers import sinusoid_table
from m4mjax.link_models import KIND_CLASSES
from m4mjax.run.errors import UserError

STACKS = {"local_encoder": "local_encoder", "global_decoder": "model", "local_decoder": "local_decoder"}
WRAPPERS = ("wrapped_model.base_model.model.", "wrapped_model.")  # peft-wrapped / plain FA base model


def normalise(name: str) -> str:
    """An official name without the FA wrapper prefix and peft's ``.base_layer`` (= the foundation's name)."""
    for w in WRAPPERS:
        if name.startswith(w):
            name = name[len(w):]
            break
    return name.replace(".base_layer.", ".")


def is_sinusoid(table: np.ndarray, tol: float = 1e-4) -> bool:
    """Whether a RoFormer position table [n, dim] holds HF's fixed sinusoids (sin half, cos half)."""
    n, dim = table.shape
    return bool(np.abs(np.asarray(table, np.float64) - sinusoid_table(n, dim)).max() < tol)


def interleaved_sinusoid(n: int, dim: int) -> np.ndarray:
    """The FA_cross adapter's fixed table [n, dim]: [2k] = sin, [2k+1] = cos (``adapters.interleaved_sinusoid``)."""
    w = np.exp(np.arange(0, dim, 2) * (-np.log(10000.0) / dim))
    ang = np.arange(n)[:, None] * w[None]
    return np.stack([np.sin(ang), np.cos(ang)], -1).reshape(n, dim)


class Source:
    """The tensors of a checkpoint by (normalised) name; ``get`` checks shapes and records what was read."""

    def __init__(self, tensors: dict[str, np.ndarray], where: str):
        self.t, self.where, self.used = tensors, where, set()

    def has(self, name: str) -> bool:
        return name in self.t

    def get(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        if name not in self.t:
            raise UserError(f"checkpoint lacks tensor {name!r} (shape {list(shape)})", self.where)
        x = self.t[name]
        if tuple(x.shape) != tuple(shape):
            raise UserError(f"tensor {name!r} has shape {list(x.shape)}, expected {list(shape)}", self.where)
        self.used.add(name)
        return np.asarray(x, np.float32)

    def skip(self, name: str) -> None:
        """Mark a tensor as accounted for without loading it (e.g. a table the official loader rebuilds)."""
        self.used.add(name)

    def check_all_used(self) -> None:
        extra = sorted(set(self.t) - self.used)
        if extra:
            raise UserError(f"checkpoint has {len(extra)} tensor(s) this model does not hold, e.g. {extra[0]!r} "
                            f"{list(self.t[extra[0]].shape)}", self.where)


def _block(src: Source, p: str, E: int, H: int, F: int, lora: int) -> dict:
    D = E // H
    proj = [f"{p}.attention.self.{n}" for n in ("query", "key", "value")]
    out = {
        "qkv": np.stack([src.get(f"{n}.weight", (E, E)).T.reshape(E, H, D) for n in proj], axis=1),
        "qkv_b": np.stack([src.get(f"{n}.bias", (E,)).reshape(H, D) for n in proj]),
        "o": src.get(f"{p}.attention.output.dense.weight", (E, E)).T.reshape(H, D, E),
        "o_b": src.get(f"{p}.attention.output.dense.bias", (E,)),
        "ln1_scale": src.get(f"{p}.attention.output.LayerNorm.weight", (E,)),
        "ln1_bias": src.get(f"{p}.attention.output.LayerNorm.bias", (E,)),
        "ff1": src.get(f"{p}.intermediate.dense.weight", (F, E)).T,
        "ff1_b": src.get(f"{p}.intermediate.dense.bias", (F,)),
        "ff2": src.get(f"{p}.output.dense.weight", (E, F)).T,
        "ff2_b": src.get(f"{p}.output.dense.bias", (E,)),
        "ln2_scale": src.get(f"{p}.output.LayerNorm.weight", (E,)),
        "ln2_bias": src.get(f"{p}.output.LayerNorm.bias", (E,)),
    }
    if lora:
        qv = [proj[0], proj[2]]
        out["lora_a"] = np.stack([src.get(f"{n}.lora_A.default.weight", (lora, E)).T for n in qv])
        out["lora_b"] = np.stack([src.get(f"{n}.lora_B.default.weight", (E, lora)).T.reshape(lora, H, D) for n in qv])
    return out


def _table(src: Source, name: str, shape: tuple[int, int], learned: bool, rebuilt: bool) -> np.ndarray | None:
    """A stack's rotary table: loaded when learned; else checked to be the sinusoids (or, ``rebuilt``, dropped
    unread, as the official FA loader does with the global table)."""
    if learned:
        return src.get(name, shape)
    if src.has(name):
        if rebuilt:
            src.skip(name)
        elif not is_sinusoid(src.get(name, shape)):
            raise UserError(f"tensor {name!r} is not the fixed sinusoid table; convert with learned tables",
                            src.where)
    return None


def to_params(src: Source, m, link=None, n_adapters: int = 0) -> dict:
    """Our pure parameter dict (``nnx.to_pure_dict`` layout) of model config ``m`` (+ ``link``) from ``src``."""
    E, V = m.width, m.vocab_size
    tables = m.get("position_tables", "sinusoid")
    lora = link.lora_rank if link is not None else 0
    local_lora = lora if (link is None or link.lora_scope == "all") else 0
    out: dict = {
        "embed": src.get("local_embedding.weight", (V, E)),
        "global_sos": src.get("global_sos", (E,)),
        "head": src.get("final_decoder.weight", (V, E)).T,
        "head_b": src.get("final_decoder.bias", (V,)),
    }
    from m4mjax.model import LOCAL_POSITIONS

    for ours, theirs in STACKS.items():
        glob = ours == "global_decoder"
        n, H, F = ((m.layers, m.heads, m.ffn) if glob else (m.local_layers, m.local_heads, m.local_ffn))
        r = lora if glob else local_lora
        stack = {"blocks": {i: _block(src, f"{theirs}.layer.{i}", E, H, F, r) for i in range(n)}}
        learned = tables == "learned" or (tables == "learned_local" and not glob)
        rows = m.max_frames if glob else LOCAL_POSITIONS
        t = _table(src, f"{theirs}.embed_positions.weight", (rows, E // H), learned, glob and link is not None)
        if t is not None:
            stack["pos_table"] = t
        out[ours] = stack
    if link is not None:
        out["mask_embed"] = src.get("masked_embedding", (1, 1, E)).reshape(E)
        if KIND_CLASSES[link.kind].model_overrides(link)["segment_embedding"]:  # FA_self's segment table
            out["segment_embed"] = src.get("sentence_embedding", (2, E // m.heads))
        if n_adapters:  # FA_cross's adapters
            out["adapters"] = {i: _adapter(src, f"yinyang_attn.{i}", E, link.adapter_width, link.adapter_heads)
                               for i in range(n_adapters)}
    src.check_all_used()
    return out


def _adapter(src: Source, p: str, E: int, inner: int, heads: int) -> dict:
    d = inner // heads
    out = {}
    for ours, theirs in (("q", "q_linear"), ("k", "k_linear"), ("v", "v_linear"), ("pos", "pos_linear")):
        out[ours] = src.get(f"{p}.{theirs}.weight", (inner, E)).T.reshape(E, heads, d)
        out[f"{ours}_b"] = src.get(f"{p}.{theirs}.bias", (inner,)).reshape(heads, d)
    out["o"] = src.get(f"{p}.out_proj.weight", (E, inner)).T.reshape(heads, d, E)
    out["o_b"] = src.get(f"{p}.out_proj.bias", (E,))
    out["gate"] = src.get(f"{p}.gates", (1,))
    fixed = f"{p}.pos.r_pos.relative"
    if src.has(fixed):  # a fixed buffer: recomputed by our adapter, so it must be the sinusoid
        t = src.t[fixed]
        if t.ndim != 3 or t.shape[2] != E or np.abs(t[0] - interleaved_sinusoid(t.shape[1], E)).max() > 1e-4:
            raise UserError(f"tensor {fixed!r} {list(t.shape)} is not the adapter's fixed sinusoid table", src.where)
        src.skip(fixed)
    return out


def count_layers(names, prefix: str) -> int:
    """How many ``{prefix}.layer.{i}.`` (or ``{prefix}.{i}.``) indices the names hold."""
    pat = re.compile(rf"^{re.escape(prefix)}\.(?:layer\.)?(\d+)\.")
    return len({int(m.group(1)) for n in names if (m := pat.match(n))})


