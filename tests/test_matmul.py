"""The mixed-precision matmul: exact gradients, and every product in bfloat16 when asked."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from litlab import bench
from litlab.models import matmul

# (lhs shape, rhs shape, dims): a dense layer, a multi-axis contraction (attention output
# projection), and the two attention products with batch dims in the middle.
CASES = [
    ((3, 5, 4), (4, 6), (((2,), (0,)), ((), ()))),
    ((3, 5, 2, 4), (2, 4, 6), (((2, 3), (0, 1)), ((), ()))),
    ((2, 5, 3, 4), (2, 7, 3, 4), (((3,), (3,)), ((0, 2), (0, 2)))),
    ((2, 3, 5, 7), (2, 7, 3, 4), (((3,), (1,)), ((0, 1), (0, 2)))),
    ((4, 6), (5, 4), (((0,), (1,)), ((), ()))),
]


@pytest.mark.parametrize("lhs,rhs,dims", CASES)
def test_hand_written_transposes_match_autodiff(lhs, rhs, dims):
    ka, kb, kg = jax.random.split(jax.random.PRNGKey(0), 3)
    a, b = jax.random.normal(ka, lhs), jax.random.normal(kb, rhs)
    ref = lambda a, b: jax.lax.dot_general(a, b, dims, preferred_element_type=jnp.float32)
    out = ref(a, b)
    g = jax.random.normal(kg, out.shape)
    # The custom rule run at float32 must give autodiff's gradients exactly (up to summation order).
    mine = jax.vjp(lambda a, b: matmul._mixed(a, b, dims, jnp.dtype("float32")), a, b)
    theirs = jax.vjp(ref, a, b)
    np.testing.assert_allclose(mine[0], theirs[0], rtol=1e-6)
    for m, t in zip(mine[1](g), theirs[1](g)):
        assert m.shape == t.shape and m.dtype == t.dtype
        np.testing.assert_allclose(m, t, rtol=1e-5, atol=1e-5)
    # At bfloat16 they agree to bfloat16 rounding, and float32 weights get float32 gradients.
    low = jax.vjp(lambda a, b: matmul.dot_general(a, b, dims, "bfloat16"), a, b)
    for m, t in zip(low[1](g), theirs[1](g)):
        assert m.dtype == jnp.float32
        np.testing.assert_allclose(m, t, rtol=0.05, atol=0.05 * float(jnp.abs(t).max()))


def test_bf16_layer_products_run_in_bf16_except_weight_grads_on_cpu():
    x = jnp.ones((4, 8, 16))
    w = jnp.ones((16, 32))
    def loss(x, w, dtype):
        return jnp.sum(matmul.dot_general(jnp.tanh(x), w, (((2,), (0,)), ((), ())), dtype) ** 2)
    # forward, input gradient, weight gradient (float32 on CPU: see models/matmul.py)
    want = {"float32": {"f32 x f32": 3},
            "bfloat16": {"bf16 x bf16": 2, "f32 x f32": 1} if jax.default_backend() == "cpu" else {"bf16 x bf16": 3}}
    for dtype in want:
        grad = jax.jit(jax.grad(loss, argnums=(0, 1)), static_argnums=2)
        assert bench.dot_dtypes(grad.lower(x, w, dtype).compile().as_text()) == want[dtype], dtype
        grad(x, w, dtype)  # and it runs
