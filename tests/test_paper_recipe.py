""":paper is the official pretraining recipe (issue 11): every difference from OFFICIAL is a listed DEVIATION,
the parameter count is the README's 111.8M, rows are the official rows, the optimizer is torch's AdamW +
OneCycleLR (learning rate and beta1, stepped as the official training_step does), and micro-batching gives
the same update as one batch."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from experiments.sweep import load_experiment
from m4mjax import tokenizer as tok
from m4mjax.run.onecycle import torch_adamw_onecycle, torch_onecycle


def _lm_pretrain():
    return load_experiment("experiments/m4m/lm_pretrain.py")


def _get(cfg, key):
    node = cfg
    for part in key.split("."):
        if part not in node:
            return KeyError
        node = node[part]
    return node


def test_every_difference_from_the_official_recipe_is_listed():
    mod = _lm_pretrain()
    cfg = mod.get_config("paper")
    for key, official in mod.OFFICIAL.items():
        ours = _get(cfg, key)
        if ours is KeyError:
            assert key in mod.DEVIATIONS, f"{key}: no switch for the official {official!r} and not in DEVIATIONS"
            continue
        same = tuple(ours) == tuple(official) if isinstance(official, tuple) else ours == official
        assert same or key in mod.DEVIATIONS, f"{key}: :paper has {ours!r}, official {official!r}, not listed"
    for key in mod.DEVIATIONS:  # nothing listed that is not a difference
        assert key in mod.OFFICIAL and _get(cfg, key) != mod.OFFICIAL[key], key
    assert cfg.data.row_format == "official" and cfg.data.max_frame_tokens == 32  # the data follows the model


def test_paper_parameter_count_is_the_readme_number():
    from m4mjax.model import count_params

    n = count_params(_lm_pretrain().get_config("paper").model)
    assert n == 111_847_939 and f"{n / 1e6:.1f}M" == "111.8M"  # 111.45M + 393,216 rotary table entries


def test_official_rows():
    notes = np.array([[0, 0, 60 + i, 3, 100, 0] for i in range(16)] + [[1, 0, 60, 3, 100, 0]], np.int32)
    rows = tok.notes_to_tokens(notes, 0, 2, 32, row_format="official")
    assert (rows[0] != tok.EOS).all() and (rows[0] != tok.PAD).all()  # 16 notes: full, no EOS
    assert rows[1, 2] == tok.EOS and (rows[1, 3:] == tok.PAD).all()
    assert tok.notes_to_tokens(notes, 0, 1, 33)[0, 32] == tok.EOS  # our default rows still end with EOS


@pytest.mark.filterwarnings("ignore:Detected call of")
def test_onecycle_is_torch_onecyclelr_with_beta1_stepped_like_the_official_code():
    total, max_lr, pct = 400, 1e-3, 0.05
    p = torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.AdamW([p], lr=max_lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=max_lr, total_steps=total, pct_start=pct)
    lr, beta1 = torch_onecycle(total, max_lr, pct)
    want_lr, want_b1 = [], []
    for _ in range(total - 1):
        sched.step()  # the official training_step steps the scheduler before the optimizer step
        want_lr.append(opt.param_groups[0]["lr"])
        want_b1.append(opt.param_groups[0]["betas"][0])
    steps = np.arange(total - 1)
    np.testing.assert_allclose(np.asarray(jax.vmap(lr)(steps)), want_lr, rtol=2e-5, atol=1e-6 * max_lr)
    np.testing.assert_allclose(np.asarray(jax.vmap(beta1)(steps)), want_b1, rtol=1e-6)


@pytest.mark.filterwarnings("ignore:Detected call of")
def test_adamw_updates_match_torch():
    total, max_lr = 50, 1e-2
    rng = np.random.default_rng(0)
    w0, grads = rng.normal(size=4).astype(np.float32), rng.normal(size=(20, 4)).astype(np.float32)
    p = torch.nn.Parameter(torch.tensor(w0))
    opt = torch.optim.AdamW([p], lr=max_lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=max_lr, total_steps=total, pct_start=0.1)
    tx = torch_adamw_onecycle(total, max_lr, 0.1)
    w, state = jnp.asarray(w0), tx.init(jnp.asarray(w0))
    for g in grads:
        sched.step()
        p.grad = torch.tensor(g)
        opt.step()
        upd, state = tx.update(jnp.asarray(g), state, w)
        w = optax.apply_updates(w, upd)
    np.testing.assert_allclose(np.asarray(w), p.detach().numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.integration  # runs :paper train steps
def test_paper_has_no_clipping_and_microbatching_gives_the_same_step():
    from m4mjax import steps as steps_lib
    from m4mjax.run import mesh as mesh_lib

    mod = _lm_pretrain()
    paper = mod.get_config("paper")
    assert paper.optim.grad_clip == 0 and paper.optim.schedule == "torch_onecycle"
    out = {}
    for k in (1, 2):
        cfg = mod.get_config("tiny")
        cfg.model.dropout = 0.0
        cfg.train.microbatches = k
        mesh = mesh_lib.make_mesh(cfg.mesh)
        with mesh_lib.use_mesh(mesh):
            s = steps_lib.Setup(cfg, mesh)
            t, f, r = s.init_model()
            opt = s.init_opt(t)
            toks = np.random.default_rng(0).integers(0, 3331, (16, cfg.data.frames, cfg.model.max_frame_tokens))
            toks[:, :, -3:] = 3330  # some PAD: micro-batches hold different token counts
            t, _, m = s.train_step_fn()(t, opt, f, r, {"tokens": jnp.asarray(toks, jnp.int32)}, jnp.int32(0))
            out[k] = (float(m["loss"]), float(m["tokens"]), jax.tree.leaves(jax.device_get(t)))
    assert out[1][1] == out[2][1]
    np.testing.assert_allclose(out[2][0], out[1][0], rtol=1e-5)
    for a, b in zip(out[1][2], out[2][2]):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_paper_dry_run_fits_16_gib_on_8_devices():
    from m4mjax import train

    info = train.train(_lm_pretrain().get_config("paper"), "", dry_run=True)
    assert info["mesh"]["fsdp"] == 8 and info["fits"] and info["device_memory_gib"] == 16.0


def _update_sizes(oc, train_steps: int, n: int) -> list[float]:
    """-update per step of ``steps.make_optimizer(oc, train_steps)`` for a constant gradient of 1 (Adam's normalised
    step is then 1 per coordinate, so with weight decay off each update is -lr(t)), for n steps."""
    import jax.numpy as jnp

    from m4mjax import steps

    tx = steps.make_optimizer(oc, train_steps)
    params = {"w": jnp.zeros(2)}
    state = tx.init(params)
    got = []
    for _ in range(n):
        u, state = tx.update({"w": jnp.ones(2)}, state, params)
        got.append(-float(u["w"][0]))
    return got


def test_warmup_constant_schedule_ramps_then_stays_flat_so_a_run_can_be_extended():
    """optim.schedule='warmup_constant': SGD-like check on AdamW's first moments with a constant gradient, where
    Adam's normalised step is 1 per coordinate, so each update is -lr(t) (weight decay off): 1/4, 2/4, 3/4, then
    the full rate for every later step, also past train.steps (a resumed, extended run keeps learning)."""
    import ml_collections

    oc = ml_collections.ConfigDict(dict(schedule="warmup_constant", lr=1e-3, warmup_frac=0.02, b1=0.9, b2=0.999,
                                        weight_decay=0.0, grad_clip=0.0))
    got = _update_sizes(oc, 200, 260)  # warm-up = 0.02 * 200 = 4 steps
    np.testing.assert_allclose(got[:4], [0.25e-3, 0.5e-3, 0.75e-3, 1e-3], rtol=1e-4)
    np.testing.assert_allclose(got[4:], 1e-3, rtol=1e-4)


def test_warmup_constant_with_decay_steps_cools_down_linearly_to_zero_at_the_last_step():
    """optim.decay_steps=4 on 20 steps (warm-up 1): updates (as above, each -lr(t)) are the full rate through step
    15, then 4/5, 3/5, 2/5, 1/5 of it on steps 16..19 and 0 from step 20 (train.steps) on."""
    import ml_collections

    oc = ml_collections.ConfigDict(dict(schedule="warmup_constant", lr=1e-3, warmup_frac=0.05, decay_steps=4, b1=0.9,
                                        b2=0.999, weight_decay=0.0, grad_clip=0.0))
    got = _update_sizes(oc, 20, 22)
    want = [1e-3] * 16 + [0.8e-3, 0.6e-3, 0.4e-3, 0.2e-3, 0.0, 0.0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-9)
