"""Mixed-precision matmul: `dtype` inputs, float32 accumulation, forward *and* backward.

`lax.dot_general(a16, b16, preferred_element_type=f32)` alone runs only the forward product in
bfloat16: its cotangent is float32, so JAX's transpose rule multiplies f32 x bf16 and XLA
promotes both backward products (input and weight gradients) to f32 x f32. Here the cotangent
is cast to `dtype` first, so all three products of a layer run with bfloat16 inputs and float32
accumulation. Inputs are cast inside, so a float32 weight receives a float32 gradient (never
rounded to bfloat16), and the residuals kept for the backward pass are the bfloat16 copies.
With dtype float32 this is a plain float32 `dot_general`.

One exception, on CPU only: the weight-gradient product (which contracts over the batch and
sequence axes, the *leading* axes of both operands) stays float32. XLA:CPU hands a bf16 dot to
its fast kernels only when the contraction runs over the lhs's trailing axes; it upcasts other
bf16 dots, or for some shapes (e.g. width 64, batch 8) emits a plain dot that fails at run time
with "Unsupported element type for DotThunk: BF16 x BF16 = F32". Transposing the operands first
does not help: XLA folds the transposes into layouts. So on CPU the forward and input-gradient
products (two thirds of the FLOPs) run in bfloat16; on GPU all three do.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


def _free(ndim: int, contract, batch) -> list[int]:
    return [i for i in range(ndim) if i not in contract and i not in batch]


def _transposed(g, other, dims, ndim_out: int, g_free, lhs: bool):
    """Cotangent of one operand of dot_general(lhs, rhs, dims), as a dot of g with the other."""
    (lc, rc), (lb, rb) = dims
    c_self, c_other = (lc, rc) if lhs else (rc, lc)
    b_self, b_other = (lb, rb) if lhs else (rb, lb)
    nb = len(lb)
    other_free = _free(other.ndim, c_other, b_other)
    # g is [batch..., lhs free..., rhs free...]; contract its part that belongs to `other`.
    out = lax.dot_general(g, other, ((tuple(g_free), tuple(other_free)), (tuple(range(nb)), tuple(b_other))),
                          preferred_element_type=jnp.float32)
    # out is [batch..., own free..., other's contracting dims in ascending order]; put each
    # back where it sits in this operand.
    own_free = _free(ndim_out, c_self, b_self)
    axes = list(b_self) + own_free + [c_self[list(c_other).index(r)] for r in sorted(c_other)]
    return jnp.transpose(out, np.argsort(axes))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _mixed(a, b, dims, dtype):
    return lax.dot_general(a.astype(dtype), b.astype(dtype), dims, preferred_element_type=jnp.float32)


def _mixed_fwd(a, b, dims, dtype):
    a16, b16 = a.astype(dtype), b.astype(dtype)
    out = lax.dot_general(a16, b16, dims, preferred_element_type=jnp.float32)
    return out, (a16, b16, jnp.zeros((), a.dtype), jnp.zeros((), b.dtype))


def _mixed_bwd(dims, dtype, res, g):
    a16, b16, a_proto, b_proto = res
    (lc, rc), (lb, rb) = dims
    g16 = g.astype(dtype)
    nb, nlf = len(lb), len(_free(a16.ndim, lc, lb))
    lhs_part = list(range(nb, nb + nlf))
    rhs_part = list(range(nb + nlf, g.ndim))
    da = _transposed(g16, b16, dims, a16.ndim, rhs_part, lhs=True)
    if jax.default_backend() == "cpu":  # see the module docstring
        db = _transposed(g, a16.astype(jnp.float32), dims, b16.ndim, lhs_part, lhs=False)
    else:
        db = _transposed(g16, a16, dims, b16.ndim, lhs_part, lhs=False)
    return da.astype(a_proto.dtype), db.astype(b_proto.dtype)


_mixed.defvjp(_mixed_fwd, _mixed_bwd)


def dot_general(a, b, dims, dtype="float32"):
    """lax.dot_general with `dtype` inputs and a float32 result; see the module docstring."""
    dims = tuple(tuple(tuple(int(i) for i in d) for d in pair) for pair in dims)
    if jnp.dtype(dtype) == jnp.float32:
        return lax.dot_general(a, b, dims, preferred_element_type=jnp.float32)
    return _mixed(a, b, dims, jnp.dtype(dtype))


def flax_dot_general(dtype):
    """A `dot_general` for flax's Dense/DenseGeneral (which pass precision; unused here)."""
    def dot(a, b, dims, precision=None, preferred_element_type=None, **_):
        return dot_general(a, b, dims, dtype)
    return dot
