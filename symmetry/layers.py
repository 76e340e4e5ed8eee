"""Conv / dense layers of the SPS nets (NNX, channels-last, logical axis names on every kernel).

``conv_impl='matmul'`` computes the 1-D convs as patch-matmuls (fast on CPU and under a vmapped seed axis),
``'lax'`` with XLA convolutions; both use the same parameters and give the same numbers.
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
