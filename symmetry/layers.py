"""Conv / dense layers of the SPS nets (NNX, channels-last, logical axis names on every kernel).

``conv_impl='matmul'`` computes the convs as patch-matmuls (fast on CPU and under a vmapped seed axis, where XLA's
convolutions become grouped ones), ``'lax'`` with XLA convolutions; both use the same parameters and give the same
numbers. The ball nets' 2-D convs keep Flax's nnx.Conv / nnx.ConvTranspose parameters; ``conv2d_k4s2`` and
``conv_transpose2d_k4s2`` are their matmul forms.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from m4mjax.run import mesh as mesh_lib


def param(rngs: nnx.Rngs, init, shape, names) -> nnx.Param:
    """A parameter drawn by init with logical axis names (placed by the caller, never by Flax)."""
    mesh_lib.configure_flax()  # we place variables ourselves: no eager sharding by Flax
    return nnx.Param(nnx.with_partitioning(init, names)(rngs.params(), shape))


def uniform_init(scale: float):
    """U(-scale, scale)."""
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -scale, scale)


def inits(torch_init: bool, fan_in: int, kernel=None):
    """(kernel init, bias init): PyTorch's default U(+-1/sqrt(fan_in)) for both, or lecun-normal + zeros."""
    if torch_init:
        u = uniform_init(1.0 / math.sqrt(fan_in))
        return u, u
    return kernel or nnx.initializers.lecun_normal(), nnx.initializers.zeros_init()


class Linear(nnx.Module):
    """Dense layer with logical axis names on its kernel."""

    def __init__(self, din: int, dout: int, names: tuple, *, torch_init: bool = False, rngs: nnx.Rngs):
        kinit, binit = inits(torch_init, din)
        self.kernel = param(rngs, kinit, (din, dout), names)
        self.bias = param(rngs, binit, (dout,), (names[1],))

    def __call__(self, x: jax.Array) -> jax.Array:
        return x @ self.kernel[...] + self.bias[...]


def _patches(x: jax.Array, k: int, stride: int, lout: int) -> jax.Array:
    """[N, L, C] -> [N, lout, k*C]: the k taps of each output position, tap-major."""
    taps = [x[:, j: j + stride * (lout - 1) + 1: stride] for j in range(k)]
    return jnp.concatenate(taps, axis=-1)


class Conv1D(nnx.Module):
    """= torch Conv2d(kernel (k, w), stride s, padding (p, 0)) on an input of width w (w folded into channels)."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, pad: int, impl: str, *, torch_init: bool = False,
                 rngs: nnx.Rngs):
        self.k, self.stride, self.pad, self.impl = k, stride, pad, impl
        kinit, binit = inits(torch_init, k * cin, nnx.initializers.lecun_normal(in_axis=(0, 1), out_axis=2))
        self.kernel = param(rngs, kinit, (k, cin, cout), (None, None, "channels"))
        self.bias = param(rngs, binit, (cout,), ("channels",))

    def __call__(self, x: jax.Array) -> jax.Array:
        """x [N, L, Cin] -> [N, (L + 2p - k)//s + 1, Cout]."""
        w = self.kernel[...]
        if self.impl == "lax":
            y = jax.lax.conv_general_dilated(x, w, (self.stride,), [(self.pad, self.pad)],
                                             dimension_numbers=("NWC", "WIO", "NWC"))
        else:
            xp = jnp.pad(x, ((0, 0), (self.pad, self.pad), (0, 0)))
            lout = (xp.shape[1] - self.k) // self.stride + 1
            y = _patches(xp, self.k, self.stride, lout) @ w.reshape(-1, w.shape[-1])
        return y + self.bias[...]


class ConvTranspose1D(nnx.Module):
    """= torch ConvTranspose2d(kernel (k, w), stride s, padding (p, 0)) on an input of width 1.

    Output length (L-1)s - 2p + k; the w output columns are folded into the output channels.
    The matmul form is the sub-pixel decomposition: ceil(k/s) taps produce s outputs each."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, pad: int, impl: str, width: int = 1, *,
                 torch_init: bool = False, rngs: nnx.Rngs):
        self.k, self.stride, self.pad, self.impl = k, stride, pad, impl
        # torch's fan_in of a ConvTranspose2d weight [cin, cout, k, w] is cout * k * w
        kinit, binit = inits(torch_init, k * width * cout, nnx.initializers.lecun_normal(in_axis=(0, 1), out_axis=2))
        self.kernel = param(rngs, kinit, (k, cin, width * cout), (None, "channels", None))
        self.bias = param(rngs, binit, (cout,), (None,))  # shared over the w columns

    def __call__(self, x: jax.Array) -> jax.Array:
        """x [N, L, Cin] -> [N, (L-1)s - 2p + k, Cout]; out[i*s - p + j] += x[i] @ kernel[j]."""
        k, s, p, w = self.k, self.stride, self.pad, self.kernel[...]
        lout = (x.shape[1] - 1) * s - 2 * p + k
        if self.impl == "lax":
            y = jax.lax.conv_general_dilated(x, w[::-1], (1,), [(k - 1 - p, k - 1 - p)], lhs_dilation=(s,),
                                             dimension_numbers=("NWC", "WIO", "NWC"))
            return self._add_bias(y)
        n, length, cin = x.shape
        taps = -(-k // s)
        wp = jnp.pad(w, ((0, taps * s - k), (0, 0), (0, 0))).reshape(taps, s, cin, -1)
        # window q holds x[q-taps+1 .. q]; element m of the window uses kernel tap group taps-1-m
        wm = jnp.transpose(wp[::-1], (0, 2, 1, 3)).reshape(taps * cin, -1)
        xp = jnp.pad(x, ((0, 0), (taps - 1, taps - 1), (0, 0)))
        lq = length + taps - 1
        if taps * cin <= wm.shape[-1]:   # wide outputs: one GEMM over tap-major patches
            y = _patches(xp, taps, 1, lq) @ wm                       # [N, L+taps-1, s*Cout]
        else:                            # narrow outputs: one GEMM per input, then sum shifted tap outputs
            ym = (xp @ jnp.concatenate(jnp.split(wm, taps, axis=0), axis=1)).reshape(n, -1, taps, wm.shape[-1])
            y = sum(ym[:, m: m + lq, m] for m in range(taps))
        y = y.reshape(n, (length + taps - 1) * s, -1)[:, p: p + lout]
        return self._add_bias(y)

    def _add_bias(self, y: jax.Array) -> jax.Array:
        b = self.bias[...]
        return (y.reshape(y.shape[:-1] + (-1, b.shape[0])) + b).reshape(y.shape)


def conv2d_k4s2(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """= nnx.Conv(kernel (4, 4), strides 2, padding 1) without bias: x [N, H, W, I], kernel [4, 4, I, O] ->
    [N, H/2, W/2, O]; y[i, j] = sum_uv xpad[2i+u, 2j+v] @ kernel[u, v], as one GEMM over 4x4 patches."""
    n, h, w, _ = x.shape
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    patches = jnp.concatenate([xp[:, u: u + h: 2, v: v + w: 2] for u in range(4) for v in range(4)], axis=-1)
    return patches @ kernel.reshape(-1, kernel.shape[-1])


# sub-pixel form of a stride-2, 4-tap transposed conv (Flax layout, kernel not flipped, padding 2 on the dilated
# input = torch's padding 1): output 2i + a sums input rows i - 1 + u (u = 0, 1, 2) with kernel tap _TAP[a, u]
# (-1: unused): even outputs read rows i-1, i with taps 0, 2; odd outputs rows i, i+1 with taps 1, 3.
_TAP = ((0, 2, -1), (-1, 1, 3))


def conv_transpose2d_k4s2(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """= nnx.ConvTranspose(kernel (4, 4), strides 2, padding 2) without bias: x [N, H, W, I], kernel [4, 4, I, O]
    -> [N, 2H, 2W, O], as ONE GEMM of 3x3 patches against the 4 output phases' taps (no zeros multiplied: the
    dilated form spends 3/4 of its work on inserted zeros, and under a vmapped seed axis XLA:CPU runs it as a
    grouped convolution, ~3x slower than this at the ball decoder's sizes)."""
    n, h, w, cin = x.shape
    cout = kernel.shape[-1]
    zero = jnp.zeros((cin, cout), kernel.dtype)
    tap = lambda a, b, u, v: zero if -1 in (_TAP[a][u], _TAP[b][v]) else kernel[_TAP[a][u], _TAP[b][v]]
    wm = jnp.stack([jnp.stack([jnp.stack([jnp.stack([tap(a, b, u, v) for b in range(2)], -2) for a in range(2)], -3)
                               for v in range(3)]) for u in range(3)])          # [3, 3, I, 2, 2, O]
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    patches = jnp.concatenate([xp[:, u: u + h, v: v + w] for u in range(3) for v in range(3)], axis=-1)
    y = (patches @ wm.reshape(9 * cin, 4 * cout)).reshape(n, h, w, 2, 2, cout)
    return jnp.transpose(y, (0, 1, 3, 2, 4, 5)).reshape(n, 2 * h, 2 * w, cout)
