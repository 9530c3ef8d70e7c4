"""probdml.special against mpmath (50 digits): tests/data/bessel_table.npz, made by
tests/make_bessel_table.py. All table arguments are float32 numbers, so float32 and
float64 runs see exact inputs and only the algorithms' rounding is measured.

Tolerances (issue 3): log C_p and log I_nu relative 1e-12 (float64) / 2e-6 (float32),
absolute 1e-12 / 1e-5 where the value is near 0 (that is, the error may be
max(rtol |f|, atol)); A_p and R_nu relative 1e-12 / 1e-6; grad log C_p = -A_p likewise.

One honest extension (``sensitivity`` in ``assert_close``): where log C_p or log I_nu crosses zero
at large kappa (e.g. p = 1000: log C = -15.5 at kappa = 3162, p = 4096 near kappa = 1.5e4)
the value is a difference of terms of size ~kappa, so a float32 result cannot be more
accurate than the rounding of kappa itself allows: half an ulp of kappa moves the value
by u |kappa f'(kappa)| (u = 2^-24; 1.6e-4 at p = 1000, kappa = 3162), far above
2e-6 |f| = 3e-5. There the error may be 4 u |kappa f'(kappa)| instead (a few roundings
of terms of that size). Measured: on this table float32 log C_p leaves the plain
tolerance at 1 of 1035 points (p = 1000, kappa = 3162: error 5.9e-5 = 1.9 x tolerance =
0.36 u |kappa f'|); on 2400 random points at p = 33..4096 near the zero crossings every
float32 error outside the plain tolerance is below 2.1 u |kappa f'(kappa)|. float64 meets
the plain tolerance everywhere on the table (largest error 0.02 of it).
"""

from __future__ import annotations

import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special

from probdml import special

TABLE = np.load(pathlib.Path(__file__).parent / "data" / "bessel_table.npz")
DIMS = tuple(int(d) for d in np.unique(TABLE["dim_dim"]))
# dtype -> (value rtol, value atol, ratio rtol)
TOLERANCES = {"float64": (1e-12, 1e-12, 1e-12), "float32": (2e-6, 1e-5, 1e-6)}


def assert_close(name, got, want, rtol, atol, dtype, sensitivity=None, context=None):
    """|got - want| <= max(rtol |want|, atol[, u |sensitivity|]) elementwise; NaN fails.

    ``sensitivity`` = x f'(x): u |x f'(x)| (u = half the dtype's epsilon) is how far the
    value moves when x is rounded to the dtype; up to 4 such units are allowed (see the
    module docstring).
    """
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        err = np.where(got == want, 0.0, np.abs(got - want))  # equal infinities give 0
    tol = np.maximum(rtol * np.abs(want), atol)
    if sensitivity is not None:
        tol = np.maximum(tol, 4 * 0.5 * np.finfo(dtype).eps * np.abs(sensitivity))
    bad = ~(err <= tol)
    if bad.any():
        worst = np.argmax(np.where(bad, err / tol, 0.0))
        where = {k: np.asarray(v)[worst] for k, v in (context or {}).items()}
        pytest.fail(
            f"{name} ({dtype}): {bad.sum()} of {bad.size} outside tolerance; worst {where}: "
            f"got {got[worst]!r}, want {want[worst]!r}, err {err[worst]:.3g} > tol {tol[worst]:.3g}"
        )


def _dim_quantities(kappa, dim: int):
    nu = dim / 2.0 - 1.0
    # The functions are elementwise, so the gradient of the sum is the pointwise derivative.
    return {
        "log_c": special.log_vmf_normalizer(kappa, dim),
        "a": special.vmf_mean_resultant_length(kappa, dim),
        "grad_log_c": jax.grad(lambda k: jnp.sum(special.log_vmf_normalizer(k, dim)))(kappa),
        "log_iv": special.log_bessel_iv(nu, kappa),
        "ratio": special.bessel_iv_ratio(nu, kappa),
        "grad_log_iv": jax.grad(lambda k: jnp.sum(special.log_bessel_iv(nu, k)))(kappa),
    }


@pytest.fixture(scope="module", params=["float32", "float64"])
def dim_results(request):
    """Everything per dimension, evaluated eagerly (the library's kernels take the order as
    an argument, so every dimension reuses the same few compiled programs)."""
    dtype = request.param
    out = {}
    with jax.enable_x64(dtype == "float64"):
        for dim in DIMS:
            rows = TABLE["dim_dim"] == dim
            kappa = TABLE["dim_kappa"][rows]
            got = jax.device_get(_dim_quantities(jnp.asarray(kappa, dtype), dim))
            assert all(v.dtype == np.dtype(dtype) for v in got.values())
            out[dim] = (kappa, {k: TABLE[f"dim_{k}"][rows] for k in ("log_iv", "ratio", "d_ratio", "log_c")}, got)
    return dtype, out


def test_normalizer_matches_mpmath(dim_results):
    dtype, out = dim_results
    rtol, atol, _ = TOLERANCES[dtype]
    for dim, (kappa, ref, got) in out.items():
        assert np.isfinite(got["log_c"]).all(), dim
        assert_close(
            f"log C_{dim}", got["log_c"], ref["log_c"], rtol, atol, dtype,
            sensitivity=kappa * ref["ratio"], context={"kappa": kappa},
        )


def test_mean_resultant_length_matches_mpmath(dim_results):
    dtype, out = dim_results
    _, _, ratio_rtol = TOLERANCES[dtype]
    for dim, (kappa, ref, got) in out.items():
        assert np.isfinite(got["a"]).all() and (got["a"] >= 0).all() and (got["a"] < 1).all(), dim
        assert_close(f"A_{dim}", got["a"], ref["ratio"], ratio_rtol, 0.0, dtype, context={"kappa": kappa})
        assert_close(f"R_{dim / 2 - 1}", got["ratio"], ref["ratio"], ratio_rtol, 0.0, dtype, context={"kappa": kappa})


def test_normalizer_gradient_is_minus_mean_resultant_length(dim_results):
    dtype, out = dim_results
    _, _, ratio_rtol = TOLERANCES[dtype]
    for dim, (kappa, ref, got) in out.items():
        assert_close(
            f"d log C_{dim}", got["grad_log_c"], -ref["ratio"], ratio_rtol, 0.0, dtype, context={"kappa": kappa}
        )


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_normalizer_second_derivative_is_minus_derivative_of_a(dtype):
    """Second derivatives through the custom JVPs: d^2 log C_p / dkappa^2 = -A_p'(kappa).

    A_p' = 1 - A^2 - (p-1) A / kappa falls like (p-1)/(2 kappa^2) through cancellation,
    so autodiff of a ratio evaluation would lose kappa * eps; the ratio's own JVP avoids
    that. Measured maxima: 2.0e-14 (float64) and 1.0e-5 (float32, 170 eps), both at p = 2
    and large kappa (the excess recurrence of special._recurrence); <= 7e-16 / 5e-7 for
    p >= 64. Checked on dimensions covering every path.
    """
    rtol = {"float64": 1e-12, "float32": 5e-5}[dtype]
    for dim in (2, 3, 33, 64, 512, 4096):
        rows = TABLE["dim_dim"] == dim
        kappa, want = TABLE["dim_kappa"][rows], -TABLE["dim_d_ratio"][rows]
        with jax.enable_x64(dtype == "float64"):
            first = jax.grad(lambda k: jnp.sum(special.log_vmf_normalizer(k, dim)))
            got = jax.grad(lambda k: jnp.sum(first(k)))(jnp.asarray(kappa, dtype))
        assert_close(f"d2 log C_{dim}", got, want, rtol, 0.0, dtype, context={"kappa": kappa})


def test_log_bessel_iv_static_order_matches_mpmath(dim_results):
    dtype, out = dim_results
    rtol, atol, ratio_rtol = TOLERANCES[dtype]
    for dim, (kappa, ref, got) in out.items():
        nu = dim / 2.0 - 1.0
        positive = kappa > 0
        assert np.isfinite(got["log_iv"][positive]).all(), dim
        assert_close(
            f"log I_{nu}", got["log_iv"], ref["log_iv"], rtol, atol, dtype,
            sensitivity=kappa * ref["ratio"] + nu, context={"kappa": kappa},
        )
        # d/dx log I_nu(x) = R_nu(x) + nu/x (custom JVP), including x = 0.
        want = np.where(positive, ref["ratio"] + nu / np.where(positive, kappa, 1.0), 0.0 if nu == 0 else np.inf)
        assert_close(f"d log I_{nu}", got["grad_log_iv"], want, ratio_rtol, 0.0, dtype, context={"kappa": kappa})


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_log_bessel_iv_traced_orders_match_mpmath(dtype):
    """Array orders (all methods in one program): off-grid orders 0..5000, x in [1e-8, 1e6]."""
    rtol, atol, ratio_rtol = TOLERANCES[dtype]
    order, x = TABLE["order_order"], TABLE["order_x"]
    ref_log_iv, ref_ratio = TABLE["order_log_iv"], TABLE["order_ratio"]

    @jax.jit
    def fn(order, x):
        grad = jax.vmap(jax.grad(special.log_bessel_iv, argnums=1))(order, x)
        return special.log_bessel_iv(order, x), special.bessel_iv_ratio(order, x), grad

    with jax.enable_x64(dtype == "float64"):
        log_iv, ratio, grad = jax.device_get(fn(jnp.asarray(order, dtype), jnp.asarray(x, dtype)))
    context = {"order": order, "x": x}
    assert np.isfinite(log_iv).all() and np.isfinite(ratio).all()
    assert_close("log I", log_iv, ref_log_iv, rtol, atol, dtype, sensitivity=x * ref_ratio + order, context=context)
    assert_close("R", ratio, ref_ratio, ratio_rtol, 0.0, dtype, context=context)
    assert_close("d log I", grad, ref_ratio + order / x, ratio_rtol, 0.0, dtype, context=context)


def test_table_agrees_with_scipy_where_scipy_is_usable():
    """Independent check of the reference table: scipy.special.ive (float64) where it is
    neither underflowed nor subnormal; and scipy's underflow where we stay exact."""
    rows = (TABLE["order_order"] <= 100) & (TABLE["order_x"] >= 1e-3)
    order, x, ref = TABLE["order_order"][rows], TABLE["order_x"][rows], TABLE["order_log_iv"][rows]
    ive = scipy.special.ive(order, x)
    usable = ive > 1e-280
    assert usable.sum() > 100
    np.testing.assert_allclose(np.log(ive[usable]) + x[usable], ref[usable], rtol=1e-12, atol=1e-12)
    # p = 512: scipy's ive(255, kappa) underflows to 0 for kappa <= 10, log C_512 stays exact.
    assert scipy.special.ive(255.0, 10.0) == 0.0
    rows = (TABLE["dim_dim"] == 512) & (TABLE["dim_kappa"] > 0) & (TABLE["dim_kappa"] <= 10)
    with jax.enable_x64(True):
        got = special.log_vmf_normalizer(jnp.asarray(TABLE["dim_kappa"][rows]), 512)
    np.testing.assert_allclose(np.asarray(got), TABLE["dim_log_c"][rows], rtol=1e-13)


def test_values_at_zero():
    """kappa = 0 limits: log C_p(0) = -log area(S^{p-1}) (nivmf.md: 127.0535 at p = 128,
    867.9681 at p = 512), A_p(0) = 0, A_p'(0) = 1/p; I_0(0) = 1, I_nu(0) = 0 for nu > 0.
    Arrays of the table's shape reuse the compiled kernels of the other tests."""
    with jax.enable_x64(True):
        zero = jnp.zeros(int((TABLE["dim_dim"] == DIMS[0]).sum()))
        for dim, expected in ((128, 127.0535), (512, 867.9681)):
            value = float(special.log_vmf_normalizer(zero, dim)[0])
            assert value == pytest.approx(expected, abs=5e-5)
            exact = math.lgamma(dim / 2) - math.log(2) - dim / 2 * math.log(math.pi)
            assert value == pytest.approx(exact, rel=1e-15)
        assert float(jax.hessian(special.log_vmf_normalizer)(0.0, 512)) == pytest.approx(-1.0 / 512, rel=1e-14)
        out = _dim_quantities(zero, 2)
        assert float(out["grad_log_c"][0]) == 0.0 and float(out["a"][0]) == 0.0
        assert float(out["log_iv"][0]) == 0.0 and float(out["grad_log_iv"][0]) == 0.0  # I_0(0) = 1, flat
        out = _dim_quantities(zero, 8)
        assert float(out["log_iv"][0]) == -np.inf and float(out["grad_log_iv"][0]) == np.inf
        assert float(out["ratio"][0]) == 0.0
        orders = jnp.zeros(TABLE["order_order"].size).at[1].set(3.0).at[2].set(25.0)
        x = jnp.zeros_like(orders)
        assert np.asarray(special.log_bessel_iv(orders, x))[:3].tolist() == [0.0, -np.inf, -np.inf]
        slope = jax.grad(lambda x: jnp.sum(special.log_bessel_iv(orders, x)))(x)
        assert np.asarray(slope)[:3].tolist() == [0.0, np.inf, np.inf]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_extreme_arguments_stay_finite(dtype):
    """kappa in {0, 1e-30, 1e-8, 1e30 (float32) / 1e300 (float64)}: log C_p ~ -kappa, A_p -> 1,
    gradients finite (same array shape as the table, so the compiled kernels are reused)."""
    big = 1e30 if dtype == "float32" else 1e300
    values = np.ones(int((TABLE["dim_dim"] == DIMS[0]).sum()))
    values[:4] = [0.0, 1e-30, 1e-8, big]
    with jax.enable_x64(dtype == "float64"):
        kappa = jnp.asarray(values, dtype)
        for dim in (2, 3, 41, 42, 512, 4096):
            out = _dim_quantities(kappa, dim)
            for name in ("log_c", "a", "grad_log_c", "ratio", "grad_log_iv"):
                assert np.isfinite(np.asarray(out[name])[1:]).all(), (dim, name)
            assert np.isfinite(np.asarray(out["log_iv"])[1:]).all(), dim
            assert float(out["a"][3]) == pytest.approx(1.0, abs=1e-6) and float(out["a"][0]) == 0.0
            assert float(out["log_c"][3]) == pytest.approx(-big, rel=1e-6)
            assert float(out["log_iv"][3]) == pytest.approx(big, rel=1e-6)


def test_ratio_within_amos_bounds():
    """x/(nu+1+sqrt((nu+1)^2+x^2)) <= R_nu(x) <= x/(nu+1/2+sqrt((nu+1/2)^2+x^2)) (nivmf spec 4.5)."""
    rng = np.random.default_rng(0)
    nu = np.concatenate([rng.uniform(0, 40, 3000), 10.0 ** rng.uniform(0, 3.5, 1000)])
    x = 10.0 ** rng.uniform(-6, 6, nu.size)
    with jax.enable_x64(True):
        traced = np.asarray(special.bessel_iv_ratio(jnp.asarray(nu), jnp.asarray(x)))
        static = np.asarray(special.bessel_iv_ratio(13.5, jnp.asarray(x)))
    for order, ratio in ((nu, traced), (13.5, static)):
        lower = x / (order + 1 + np.sqrt((order + 1) ** 2 + x**2))
        upper = x / (order + 0.5 + np.sqrt((order + 0.5) ** 2 + x**2))
        assert (ratio >= lower * (1 - 1e-14)).all() and (ratio <= upper * (1 + 1e-14)).all()


def test_jit_vmap_broadcast_and_traced_kappa():
    kappa = jnp.asarray([[0.5, 3.0, 40.0]])
    order = jnp.asarray([[0.0], [2.5], [30.0]])
    eager = special.log_bessel_iv(order, kappa)
    assert eager.shape == (3, 3)
    for row, nu in enumerate((0.0, 2.5, 30.0)):
        np.testing.assert_allclose(eager[row], special.log_bessel_iv(nu, kappa[0]), rtol=2e-6)
    per_row = jax.vmap(special.log_bessel_iv)(order[:, 0], jnp.broadcast_to(kappa, (3, 3)))
    np.testing.assert_allclose(per_row, eager, rtol=2e-6)
    # jit with a static dim, kappa traced inside the gradient of a composite:
    batch = jnp.asarray([[0.5, 3.0, 40.0], [900.0, 1e4, 0.0]])
    fn = jax.jit(jax.grad(lambda k, dim: jnp.sum(special.log_vmf_normalizer(k * k, dim))), static_argnums=1)
    want = -2 * batch * special.vmf_mean_resultant_length(batch * batch, 64)
    np.testing.assert_allclose(fn(batch, 64), want, rtol=2e-6)
    assert special.log_bessel_iv(2, jnp.asarray([1, 2])).dtype == jnp.float32


def test_bad_input():
    with pytest.raises(ValueError, match="order"):
        special.log_bessel_iv(-1.0, 1.0)
    with pytest.raises(ValueError, match="order"):
        special.bessel_iv_ratio(float("nan"), 1.0)
    for dim in (1, 0, 3.0, True, "512"):
        with pytest.raises(ValueError, match="dim"):
            special.log_vmf_normalizer(1.0, dim)
    with pytest.raises(ValueError, match="differentiable with respect to the order"):
        jax.grad(lambda o: special.log_bessel_iv(o, 2.0))(1.0)
    assert np.isnan(float(special.log_vmf_normalizer(-1.0, 8)))
    assert np.isnan(float(special.log_bessel_iv(1.0, -2.0)))
    assert np.isnan(float(special.log_bessel_iv(jnp.asarray(-1.0), 2.0)))
