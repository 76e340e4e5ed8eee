"""Official PyTorch checkpoints -> our run directories (issue 11): random checkpoints with the official names
and shapes convert, and our logits equal an independent PyTorch forward of the same architecture, written
here from spec §3-§4 (not from the official code): the foundation (size 0, size 1 and a reduced size, with
learned N(0,1) rotary tables and with sinusoid ones) and both links (FA_cross, FA_self).
Tolerance: max |ours - torch| <= 2e-4 + 2e-4 * max|logit| (float32; long reductions reorder sums)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as Fn

from m4mjax import convert_torch as ct
from m4mjax.run.cli import UserError

V, SOS, EOS, PAD = 3331, 3328, 3329, 3330
REDUCED = dict(E=64, layers=2, heads=4, ffn=128, local_layers=1, local_heads=2, local_ffn=96)
SIZE0 = dict(E=512, layers=6, heads=8, ffn=1024, local_layers=3, local_heads=8, local_ffn=768)
SIZE1 = dict(E=768, layers=12, heads=12, ffn=3072, local_layers=3, local_heads=8, local_ffn=768)


# --- random checkpoints in the official layout (names and shapes from the spec) ------------------------
def hf_sinusoid(n: int, dim: int) -> torch.Tensor:
    """HF RoFormer's fixed table: sin(p w_k) in the first half, cos in the second, w_k = 10000^(-2k/dim)."""
    w = 10000.0 ** (-2.0 * torch.arange(dim // 2, dtype=torch.float64) / dim)
    ang = torch.arange(n, dtype=torch.float64)[:, None] * w[None]
    return torch.cat([ang.sin(), ang.cos()], 1).float()


def foundation_sd(g: torch.Generator, s: dict, learned: bool = True, rows: int = 1536) -> dict:
    E, sd = s["E"], {}

    def lin(name, out, inp):
        bound = 1 / math.sqrt(inp)
        sd[f"{name}.weight"] = (torch.rand(out, inp, generator=g) * 2 - 1) * bound
        sd[f"{name}.bias"] = (torch.rand(out, generator=g) * 2 - 1) * bound

    def ln(name):
        sd[f"{name}.weight"] = 1 + 0.1 * torch.randn(E, generator=g)
        sd[f"{name}.bias"] = 0.1 * torch.randn(E, generator=g)

    for stack, n, H, F in (("local_encoder", s["local_layers"], s["local_heads"], s["local_ffn"]),
                           ("model", s["layers"], s["heads"], s["ffn"]),
                           ("local_decoder", s["local_layers"], s["local_heads"], s["local_ffn"])):
        sd[f"{stack}.embed_positions.weight"] = (torch.randn(rows, E // H, generator=g) if learned
                                                 else hf_sinusoid(rows, E // H))
        for i in range(n):
            p = f"{stack}.layer.{i}"
            for q in ("query", "key", "value"):
                lin(f"{p}.attention.self.{q}", E, E)
            lin(f"{p}.attention.output.dense", E, E)
            ln(f"{p}.attention.output.LayerNorm")
            lin(f"{p}.intermediate.dense", F, E)
            lin(f"{p}.output.dense", E, F)
            ln(f"{p}.output.LayerNorm")
    sd["local_embedding.weight"] = torch.randn(V, E, generator=g)
    lin("final_decoder", V, E)
    sd["global_sos"] = torch.randn(E, generator=g)
    return sd


def lora_sd(g, s, r) -> dict:
    """peft LoRA on every query/value (all three stacks), as the FA checkpoints save it (trained tensors only)."""
    E, sd = s["E"], {}
    for stack, n in (("local_encoder", s["local_layers"]), ("model", s["layers"]), ("local_decoder", s["local_layers"])):
        for i in range(n):
            for q in ("query", "value"):
                p = f"wrapped_model.base_model.model.{stack}.layer.{i}.attention.self.{q}"
                sd[f"{p}.lora_A.default.weight"] = torch.randn(r, E, generator=g) / math.sqrt(E)
                sd[f"{p}.lora_B.default.weight"] = 0.1 * torch.randn(E, r, generator=g)  # non-zero: it matters
    sd["masked_embedding"] = 0.1 * torch.randn(1, 1, E, generator=g)
    return sd


def interleaved(n, dim):
    w = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    ang = torch.arange(n, dtype=torch.float32)[:, None] * w
    return torch.stack([ang.sin(), ang.cos()], -1).reshape(n, dim)


def cross_sd(g, s, inner=16) -> dict:
    E, sd = s["E"], lora_sd(g, s, 4)
    for i in range(s["layers"] // 2):
        p = f"yinyang_attn.{i}"
        for n in ("q_linear", "k_linear", "v_linear", "pos_linear"):
            sd[f"{p}.{n}.weight"] = torch.randn(inner, E, generator=g) / math.sqrt(E)
            sd[f"{p}.{n}.bias"] = 0.1 * torch.randn(inner, generator=g)
        sd[f"{p}.out_proj.weight"] = torch.randn(E, inner, generator=g) / math.sqrt(inner)
        sd[f"{p}.out_proj.bias"] = 0.1 * torch.randn(E, generator=g)
        sd[f"{p}.gates"] = torch.tensor([0.7 + 0.1 * i])
        sd[f"{p}.pos.r_pos.relative"] = interleaved(768, E)[None]
    return sd


def save(path, sd, hp=None) -> str:
    torch.save({"state_dict": sd, "hyper_parameters": hp or {}, "epoch": 0}, path)  # Lightning's layout
    return str(path)


# --- the independent PyTorch forward (spec §3-§4) ------------------------------------------------------
def encoder(P, pre, x, table, mask, n_layers, H, lora=None, cross=None, hiddens=None):
    """HF-style RoFormer stack: rotary (interleaved pairs; table = [T, D] sin half | cos half), post-LN."""
    B, T, E = x.shape
    D = E // H
    sin, cos = table.chunk(2, -1)
    sin, cos = sin.repeat_interleave(2, -1), cos.repeat_interleave(2, -1)

    def rot(t):  # [B,H,T,D]
        half = torch.stack([-t[..., 1::2], t[..., ::2]], -1).reshape(t.shape)
        return t * cos + half * sin

    def lin(name, h):
        return h @ P[f"{name}.weight"].T + P[f"{name}.bias"]

    for i in range(n_layers):
        if hiddens is not None:
            hiddens.append(x)
        p = f"{pre}.layer.{i}"
        qkv = []
        for n in ("query", "key", "value"):
            y = lin(f"{p}.attention.self.{n}", x)
            if lora is not None and n != "key":
                A, Bm, scale = lora(f"{p}.attention.self.{n}")
                y = y + (x @ A.T) @ Bm.T * scale
            qkv.append(y.view(B, T, H, D).transpose(1, 2))
        q, k, v = rot(qkv[0]), rot(qkv[1]), qkv[2]
        sc = q @ k.transpose(-1, -2) / math.sqrt(D)
        if mask is not None:
            sc = sc.masked_fill(~mask, float("-inf"))
        ctx = (sc.softmax(-1) @ v).transpose(1, 2).reshape(B, T, E)
        a = lin(f"{p}.attention.output.dense", ctx)
        if cross is not None:
            a = a + cross(i, x)
        h = Fn.layer_norm(a + x, (E,), P[f"{p}.attention.output.LayerNorm.weight"],
                          P[f"{p}.attention.output.LayerNorm.bias"], 1e-12)
        f = lin(f"{p}.output.dense", Fn.gelu(lin(f"{p}.intermediate.dense", h)))
        x = Fn.layer_norm(f + h, (E,), P[f"{p}.output.LayerNorm.weight"], P[f"{p}.output.LayerNorm.bias"], 1e-12)
    return x


class Ref:
    """The hierarchical LM over official tensors ``P`` (global table ``gtable`` [n, D]; LoRA via ``lora``)."""

    def __init__(self, P, s, gtable=None, lora=None):
        self.P, self.s, self.lora = P, s, lora
        self.gtable = P["model.embed_positions.weight"] if gtable is None else gtable

    def local_encode(self, tokens):
        B, F, L = tokens.shape
        x = torch.cat([torch.full((B * F, 1), SOS), tokens.reshape(B * F, L)], 1)
        emb = self.P["local_embedding.weight"][x]
        h = encoder(self.P, "local_encoder", emb, self.P["local_encoder.embed_positions.weight"][:L + 1], None,
                    self.s["local_layers"], self.s["local_heads"], self.lora)
        return h[:, 0].view(B, F, -1), emb[:, :-1]

    def glob(self, h, pos, extra=None, cross=None, hiddens=None):
        T = h.shape[1]
        table = self.gtable[pos] + (0 if extra is None else extra)
        mask = torch.ones(T, T, dtype=torch.bool).tril()
        return encoder(self.P, "model", h, table, mask, self.s["layers"], self.s["heads"], self.lora, cross, hiddens)

    def local_decode(self, g, emb):
        N, L, E = emb.shape
        x = torch.cat([g.reshape(N, 1, E), emb[:, 1:]], 1)
        mask = torch.ones(L, L, dtype=torch.bool).tril()
        h = encoder(self.P, "local_decoder", x, self.P["local_decoder.embed_positions.weight"][:L], mask,
                    self.s["local_layers"], self.s["local_heads"], self.lora)
        return h @ self.P["final_decoder.weight"].T + self.P["final_decoder.bias"]

    def sos(self, B):
        return self.P["global_sos"].view(1, 1, -1).expand(B, 1, -1)

    def lm(self, tokens, cross=None, hiddens=None):
        B, F, L = tokens.shape
        fr, emb = self.local_encode(tokens)
        g = self.glob(torch.cat([self.sos(B), fr[:, :-1]], 1), torch.arange(F), cross=cross, hiddens=hiddens)
        return self.local_decode(g, emb).view(B, F, L, -1)


def adapter(P, p, q_in, kv, heads=4):
    B, T, E = q_in.shape
    pe = interleaved(768, E)
    pos = lambda idx: pe[idx] @ P[f"{p}.pos_linear.weight"].T + P[f"{p}.pos_linear.bias"]  # noqa: E731
    lin = lambda n, x: x @ P[f"{p}.{n}.weight"].T + P[f"{p}.{n}.bias"]  # noqa: E731
    S = kv.shape[1]
    q = lin("q_linear", q_in) + pos(torch.arange(T))
    k = lin("k_linear", kv) + pos(torch.arange(S))
    v = lin("v_linear", kv) + pos(torch.arange(S))
    d = q.shape[-1] // heads
    q, k, v = (t.view(B, -1, heads, d).transpose(1, 2) for t in (q, k, v))
    ctx = ((q @ k.transpose(-1, -2)) / math.sqrt(d)).softmax(-1) @ v
    return lin("out_proj", ctx.transpose(1, 2).reshape(B, T, -1)) * P[f"{p}.gates"]


def peft(P, scale):
    return lambda name: (P[f"wrapped_model.base_model.model.{name}.lora_A.default.weight"],
                         P[f"wrapped_model.base_model.model.{name}.lora_B.default.weight"], scale)


# --- helpers ---------------------------------------------------------------------------------------------
def rows(g, B, F, L=32):
    """Official rows: up to L/2 notes (instrument, pitch-duration), EOS only when fewer, PAD after."""
    out = torch.full((B, F, L), PAD)
    for b in range(B):
        for f in range(F):
            n = int(torch.randint(0, L // 2 + 1, (1,), generator=g))
            for j in range(n):
                out[b, f, 2 * j] = int(torch.randint(0, 128, (1,), generator=g))
                out[b, f, 2 * j + 1] = int(torch.randint(128, 3200, (1,), generator=g))
            if n < L // 2:
                out[b, f, 2 * n] = EOS
    return out


def close(ours, theirs):
    theirs = theirs.detach().numpy()
    err = np.abs(ours - theirs).max()
    assert err <= 2e-4 + 2e-4 * np.abs(theirs).max(), f"max |diff| {err}"
    return err


# --- tests -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape,learned", [(SIZE0, True), (REDUCED, False)], ids=["size0-learned", "reduced-sinusoid"])
def test_foundation_logits_match_pytorch(tmp_path, shape, learned):
    g = torch.Generator().manual_seed(0)
    sd = foundation_sd(g, shape, learned)
    info = ct.convert(save(tmp_path / "lm.ckpt", sd), str(tmp_path / "w"))
    assert info["position_tables"] == ("learned" if learned else "sinusoid") and info["task"] == "lm"
    tokens = rows(g, 2, 5)
    with torch.no_grad():
        want = Ref(sd, shape).lm(tokens)
    close(ct.logits(str(tmp_path / "w"), tokens.numpy()), want)


def test_fa_cross_logits_match_pytorch(tmp_path):
    g = torch.Generator().manual_seed(1)
    base = foundation_sd(g, REDUCED, learned=True)
    fa = cross_sd(g, REDUCED)
    hp = {"train_task": "la_cp16_v2_x", "max_position_embeddings": 768, "n_skip": 2, "mask_prob": 0.0}
    info = ct.convert(save(tmp_path / "fa.ckpt", fa, hp), str(tmp_path / "w"), base=save(tmp_path / "lm.ckpt", base))
    assert info["position_tables"] == "learned_local" and info["max_frames"] == 768
    P = {**base, **fa}
    ref = Ref(P, REDUCED, gtable=hf_sinusoid(768, REDUCED["E"] // REDUCED["heads"]), lora=peft(P, 2.0))
    x1, x2 = rows(g, 2, 6), rows(g, 2, 6)
    with torch.no_grad():
        ref_h: list = []
        ref.lm(x1, hiddens=ref_h)
        cross = lambda i, h: adapter(P, f"yinyang_attn.{i // 2}", h, ref_h[i]) if i % 2 == 0 else 0  # noqa: E731
        want = ref.lm(x2, cross=cross)
    close(ct.logits(str(tmp_path / "w"), x2.numpy(), reference=x1.numpy()), want)


def test_fa_self_logits_match_pytorch(tmp_path):
    g = torch.Generator().manual_seed(2)
    s = REDUCED
    base = foundation_sd(g, s, learned=True)
    fa = lora_sd(g, s, 8)
    fa["sentence_embedding"] = 0.3 * torch.randn(2, s["E"] // s["heads"], generator=g)
    ct.convert(save(tmp_path / "fa.ckpt", fa, {"max_position_embeddings": 768}), str(tmp_path / "w"),
               base=save(tmp_path / "lm.ckpt", base))
    P = {**base, **fa}
    ref = Ref(P, s, gtable=hf_sinusoid(768, s["E"] // s["heads"]), lora=peft(P, 2.0))
    x1, x2 = rows(g, 2, 5), rows(g, 2, 4)
    F1, F2 = 5, 4
    with torch.no_grad():
        fr, _ = ref.local_encode(x1)
        ft, emb = ref.local_encode(x2)
        h = torch.cat([ref.sos(2), fr, ft[:, :-1]], 1)
        pos = torch.cat([torch.arange(F1), torch.arange(F2)])
        seg = fa["sentence_embedding"][(torch.arange(F1 + F2) >= F1).long()]
        gl = ref.glob(h, pos, extra=seg)[:, F1:]
        want = ref.local_decode(gl, emb).view(2, F2, 32, -1)
    close(ct.logits(str(tmp_path / "w"), x2.numpy(), reference=x1.numpy()), want)


@pytest.mark.integration  # a real-size (size-1) model converted and sampled
def test_size1_checkpoint_converts_samples_and_matches(tmp_path):
    """The released size: official names/shapes, learned tables -> 111.8M parameters; logits match; samples."""
    import jax

    from m4mjax import runs, sampling

    g = torch.Generator().manual_seed(3)
    sd = foundation_sd(g, SIZE1, learned=True)
    info = ct.convert(save(tmp_path / "lm.ckpt", sd), str(tmp_path / "w"), size=1)
    assert info["params"] == sum(v.numel() for v in sd.values()) == 111_847_939
    tokens = rows(g, 1, 3)
    with torch.no_grad():
        want = Ref(sd, SIZE1).lm(tokens)
    close(ct.logits(str(tmp_path / "w"), tokens.numpy()), want)
    del sd["model.layer.11.output.dense.bias"]  # refused by name
    model, _ = runs.load_run(str(tmp_path / "w"), streams=runs.LM_STREAMS)
    out = np.asarray(sampling.generate(model, tokens.numpy(), 2, jax.random.key(0), 1.0, 1.0))
    assert out.shape == (1, 5, 32) and (out[:, :3] == tokens.numpy()).all()
    with pytest.raises(UserError, match="model.layer.11.output.dense.bias"):
        ct.convert(save(tmp_path / "bad.ckpt", sd), str(tmp_path / "w2"))


def test_bad_checkpoints_are_refused_by_name(tmp_path):
    g = torch.Generator().manual_seed(4)
    sd = foundation_sd(g, REDUCED)
    extra = dict(sd, **{"model.layer.0.extra.weight": torch.zeros(3)})
    with pytest.raises(UserError, match="model.layer.0.extra.weight"):
        ct.convert(save(tmp_path / "x.ckpt", extra), str(tmp_path / "a"))
    shaped = dict(sd, **{"model.layer.1.intermediate.dense.bias": torch.zeros(7)})
    with pytest.raises(UserError, match=r"model.layer.1.intermediate.dense.bias.*\[7\]"):
        ct.convert(save(tmp_path / "y.ckpt", shaped), str(tmp_path / "b"))
    with pytest.raises(UserError, match="--size"):
        ct.convert(save(tmp_path / "z.ckpt", sd), str(tmp_path / "c"), size=1)
    with pytest.raises(UserError, match="--base"):
        ct.convert(save(tmp_path / "fa.ckpt", cross_sd(g, REDUCED)), str(tmp_path / "d"))
    assert not any((tmp_path / d).exists() for d in "abcd")  # nothing written


def test_positions_past_the_table_raise():
    from flax import nnx

    from m4mjax.model import M4MTransformer, model_config

    cfg = model_config(0)
    cfg.update(width=32, layers=1, heads=2, ffn=32, local_layers=1, local_heads=2, local_ffn=32, max_frames=8,
               max_frame_tokens=5)
    model = M4MTransformer(cfg, rngs=nnx.Rngs(0))
    fwd = nnx.jit(lambda m, t: m(t))  # traced positions: checked by the sequence length (one compile, not ~200)
    fwd(model, np.full((1, 8, 5), PAD, np.int32))  # 8 frames: positions 0..7 fit
    with pytest.raises(UserError, match="model.max_frames"):
        fwd(model, np.full((1, 9, 5), PAD, np.int32))  # refused while tracing, before anything compiles
    with pytest.raises(UserError, match="model.max_frames"):  # known positions: checked by value
        model.global_decode(np.zeros((1, 2, 32), np.float32), positions=np.array([[0, 8]]))
