"""probdml.distributions: vMF / nivMF densities, entropy and the reparameterised sampler.

References are independent of the code under test: mpmath (the table of
tests/make_bessel_table.py and closed forms at 30 digits), Monte Carlo integrals over the
sphere with uniform points, numerical quadrature (scipy) and the values stated in
nivmf.md (App. B).
"""

from __future__ import annotations

import functools
import math
import pathlib

import jax
import jax.numpy as jnp
import mpmath as mp
import numpy as np
import pytest
from scipy import integrate, stats

from probdml import distributions as dist
from probdml import special

TABLE = np.load(pathlib.Path(__file__).parent / "data" / "bessel_table.npz")
MC_POINTS = 200_000  # one shape for every Monte Carlo integral, so compiled kernels are shared


def log_area(dim: int) -> float:
    return math.log(2.0) + dim / 2 * math.log(math.pi) - math.lgamma(dim / 2)


def uniform_sphere(key, n: int, dim: int) -> jax.Array:
    x = jax.random.normal(key, (n, dim))
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def mc_integral(log_density, key, n: int, dim: int) -> tuple[float, float]:
    """Integral of exp(log_density) over S^{dim-1} (uniform MC) and its standard error."""
    values = np.asarray(jnp.exp(log_density(uniform_sphere(key, n, dim))), np.float64) * math.exp(log_area(dim))
    return float(values.mean()), float(values.std() / math.sqrt(n))


def mp_mean_resultant_length(kappa: float, dim: int) -> tuple[float, float]:
    """A_p(kappa) and A_p'(kappa) = 1 - A^2 - (p-1) A/kappa (closed form, 30 digits)."""
    with mp.workdps(30):
        if kappa == 0:
            return 0.0, 1.0 / dim
        k = mp.mpf(kappa)
        a = mp.besseli(mp.mpf(dim) / 2, k) / mp.besseli(mp.mpf(dim) / 2 - 1, k)
        return float(a), float(1 - a * a - (dim - 1) * a / k)


# --------------------------------------------------------------------------------------
# Densities and entropy.
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_entropy_matches_mpmath(dtype):
    """H = -log C_p - kappa A_p against mpmath on the whole table; relative 1e-12 / 2e-6,
    absolute 1e-12 / 1e-5 near 0, or 4 u |kappa H'| = 4 u kappa^2 A_p' where larger (the
    float rounding of kappa, as for log C_p in test_special)."""
    rtol, atol = {"float64": (1e-12, 1e-12), "float32": (2e-6, 1e-5)}[dtype]
    with jax.enable_x64(dtype == "float64"):
        for dim in np.unique(TABLE["dim_dim"]):
            rows = TABLE["dim_dim"] == dim
            kappa, want = TABLE["dim_kappa"][rows], TABLE["dim_entropy"][rows]
            got = np.asarray(dist.vmf_entropy(jnp.asarray(kappa, dtype), int(dim)), np.float64)
            allowance = 4 * 0.5 * np.finfo(dtype).eps * kappa**2 * TABLE["dim_d_ratio"][rows]
            tol = np.maximum(np.maximum(rtol * np.abs(want), atol), allowance)
            err = np.abs(got - want)
            assert (err <= tol).all(), (dim, kappa[np.argmax(err / tol)], np.max(err / tol))
    with jax.enable_x64(True):
        # dH/dkappa = -kappa A_p'(kappa).
        kappa = np.array([0.5, 30.0, 2000.0])
        for dim in (3, 128):
            grad = jax.grad(lambda k: jnp.sum(dist.vmf_entropy(k, dim)))(jnp.asarray(kappa))
            want = [-k * mp_mean_resultant_length(k, dim)[1] for k in kappa]
            np.testing.assert_allclose(np.asarray(grad), want, rtol=1e-9)


def test_vmf_log_prob_integrates_to_one_and_broadcasts():
    key = jax.random.key(0)
    mu = jnp.asarray([0.6, 0.0, 0.8, 0.0, 0.0])
    for kappa in (0.0, 2.0, 10.0):
        value, se = mc_integral(lambda x: dist.vmf_log_prob(x, mu, kappa), key, MC_POINTS, 5)
        assert abs(value - 1.0) <= 4 * se + 1e-6, (kappa, value, se)
    x = uniform_sphere(key, 4, 5)
    mus = uniform_sphere(jax.random.key(1), 3, 5)
    kappas = jnp.asarray([0.5, 7.0, 300.0])
    got = dist.vmf_log_prob(x[:, None, :], mus[None], kappas)
    assert got.shape == (4, 3)
    want = special.log_vmf_normalizer(kappas, 5) + kappas * jnp.einsum("nd,md->nm", x, mus)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    with pytest.raises(ValueError, match="last axis"):
        dist.vmf_log_prob(x, mus[:, :3], 1.0)


def test_reference_log_normalizer_reproduces_the_official_fit():
    """docs/methods/nivmf.md, C1 (values of +log C_p's quadratic fit)."""
    assert float(dist.reference_log_normalizer(500.0, 512)) == pytest.approx(625.742, abs=5e-4)
    assert float(dist.reference_log_normalizer(100.0, 128)) == pytest.approx(91.541, abs=5e-4)
    assert float(dist.reference_log_normalizer(100.0, 256)) == float(dist.reference_log_normalizer(100.0, 512))
    # Its slope falls below -1 (impossible for -A_p) beyond kappa ~ 146 (p = 128) / 516 (p = 512).
    for dim, crossing in ((128, 146.0), (512, 516.0)):
        slope = jax.grad(dist.reference_log_normalizer)
        assert float(slope(crossing - 2.0, dim)) > -1.0 > float(slope(crossing + 2.0, dim))
    # Error against the exact normaliser at kappa = 500: -503 (p = 128), -56 (p = 512).
    with jax.enable_x64(True):
        for dim, error in ((128, -503.0), (512, -56.0)):
            diff = float(dist.reference_log_normalizer(500.0, dim) - special.log_vmf_normalizer(500.0, dim))
            assert diff == pytest.approx(error, abs=1.0)


def test_nivmf_exact_is_normalised_and_reduces_to_vmf():
    key = jax.random.key(2)
    cases = (
        (jnp.asarray([1.0, 2.0, 4.0]), jnp.ones(3) / math.sqrt(3.0)),
        (jnp.asarray([0.5, 1.0, 2.0, 3.0, 5.0]), uniform_sphere(jax.random.key(3), 1, 5)[0]),
    )
    for kappas, mu in cases:
        dim = kappas.shape[0]
        value, se = mc_integral(lambda x: dist.nivmf_log_prob(x, mu, kappas, form="exact"), key, MC_POINTS, dim)
        assert abs(value - 1.0) <= 4 * se, (dim, value, se)
    x = uniform_sphere(key, 16, 128)
    mu = uniform_sphere(jax.random.key(4), 1, 128)[0]
    for kappa in (0.3, 40.0, 900.0):
        got = dist.nivmf_log_prob(x, mu, jnp.full(128, kappa), form="exact")
        np.testing.assert_allclose(got, dist.vmf_log_prob(x, mu, kappa), rtol=2e-6, atol=2e-4)


def test_nivmf_code_forms_have_the_stated_integrals():
    """S^2, K = diag(1, 2, 4), mu = (1,1,1)/sqrt 3 (nivmf.md 1.4): N-mc integrates to
    det K/|Kmu| = 8/sqrt 7 = 3.024 exactly, N-pt to 4.25 (spec, two decimals)."""
    kappas = jnp.asarray([1.0, 2.0, 4.0])
    mu = jnp.ones(3) / math.sqrt(3.0)
    key = jax.random.key(5)
    linear, se = mc_integral(lambda x: dist.nivmf_log_prob(x, mu, kappas, form="reference_linear"), key, MC_POINTS, 3)
    assert abs(linear - 8.0 / math.sqrt(7.0)) <= 4 * se
    stretched, se = mc_integral(lambda x: dist.nivmf_log_prob(x, mu, kappas, form="stretched"), key, MC_POINTS, 3)
    assert abs(stretched - 4.25) <= 4 * se + 0.005
    # normalizer options: the official quadratic, or any callable.
    x = uniform_sphere(key, 8, 3)
    quad = dist.nivmf_log_prob(x, mu, kappas, form="reference_linear", normalizer="reference_quadratic")
    fit_512 = lambda k, d: dist.reference_log_normalizer(k, 512)  # noqa: E731
    custom = dist.nivmf_log_prob(x, mu, kappas, form="reference_linear", normalizer=fit_512)
    np.testing.assert_allclose(quad, custom, rtol=1e-6)  # p = 3 gets the p = 512 fit, as in the official code
    with pytest.raises(ValueError, match="form"):
        dist.nivmf_log_prob(x, mu, kappas, form="linear")
    with pytest.raises(ValueError, match="normalizer"):
        dist.nivmf_log_prob(x, mu, kappas, normalizer="quadratic")


# --------------------------------------------------------------------------------------
# Sampler. Samples are drawn in jitted chunks (fixed shapes, one compile per function and
# dimension) and accumulated in float64 numpy.
# --------------------------------------------------------------------------------------

SAMPLER_DIMS = (3, 16, 128, 512)
SAMPLER_KAPPAS = (0.0, 0.1, 5.0, 20.0, 100.0, 300.0, 1000.0, 1e4)


def _random_direction(dim: int, seed: int) -> jax.Array:
    return uniform_sphere(jax.random.key(seed), 1, dim)[0]


def draw(fn, chunks: int, *args):
    """Concatenates fn(key_i, *args) over chunks (along axis 0 of every output)."""
    outs = [jax.device_get(fn(jax.random.key(1000 + i), *args)) for i in range(chunks)]
    return [np.concatenate([np.asarray(o[j], np.float64) for o in outs]) for j in range(len(outs[0]))]


def within(samples, value, k=4.0, slack=0.0):
    samples = np.asarray(samples, np.float64)
    return abs(samples.mean() - value) <= k * samples.std() / math.sqrt(samples.size) + slack


@functools.partial(jax.jit, static_argnames="n")
def _moments_chunk(key, mu, kappa, tangent, n):
    """mu.x, v.x (v = roll(mu)), the tangential residual, and the directional derivatives of
    mu.x and v.x along (kappa, mu) -> (kappa + 1, mu + t): one jvp covers both parameters."""
    v = jnp.roll(mu, 1)
    x, x_dot = jax.jvp(lambda k, m: dist.vmf_sample(key, m, k, (n,)), (kappa, mu), (jnp.ones_like(kappa), tangent))
    cos = x @ mu
    return cos, x_dot @ mu, x_dot @ v, x - cos[..., None] * mu, jnp.linalg.norm(x, axis=-1)


@pytest.mark.parametrize("dim", SAMPLER_DIMS)
def test_sampler_moments_and_gradients(dim):
    """For kappa in {0, 0.1, 5, 20, 100, 300, 1000, 1e4} (n = 4000 each), within 4 standard
    errors: E[mu.x] = A_p, E[(mu.x)^2] = 1 - (p-1) A_p/kappa (1/p at 0), the tangential part
    averages to 0, and the pathwise derivatives along (kappa + 1, mu + t), t a tangent at mu,
    average to the closed forms (mpmath): d E[mu.x] = A_p'(kappa) (d/dmu E[mu_0.x] = A_p mu.t
    = 0) and d E[v.x] = A_p'(kappa) v.mu + A_p v.t."""
    mu = _random_direction(dim, dim)
    tangent = _random_direction(dim, dim + 1)
    tangent = tangent - (tangent @ mu) * mu
    v = jnp.roll(mu, 1)
    v_mu, v_t = float(v @ mu), float(v @ tangent)
    cos, cos_dot, proj_dot, residual, norms = draw(_moments_chunk, 8, mu, jnp.asarray(SAMPLER_KAPPAS), tangent, 500)
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)
    for j, k in enumerate(SAMPLER_KAPPAS):
        a, a_dot = mp_mean_resultant_length(k, dim)
        c = cos[:, j]
        assert within(c, a), ("mean", k, c.mean(), a)
        assert within(c * c, 1.0 - (dim - 1) * a / k if k > 0 else 1.0 / dim, slack=1e-6), ("second moment", k)
        r = residual[:, j]
        assert np.abs(r.mean(0)).max() <= 4.5 * r.std(0).max() / math.sqrt(r.shape[0]), ("tangential mean", k)
        assert within(cos_dot[:, j], a_dot, slack=1e-4 * a_dot), ("kappa gradient", k, cos_dot[:, j].mean(), a_dot)
        assert within(proj_dot[:, j], a_dot * v_mu + a * v_t, slack=1e-6), ("mu gradient", k)


def _exact_cdf(dim: int, kappa: float):
    """CDF of w = mu.x (density prop. to exp(kappa t) (1-t^2)^((p-3)/2)) on a grid, by quadrature."""
    grid = np.linspace(-1.0, 1.0, 4001)
    log_density = lambda t: kappa * (t - 1.0) + 0.5 * (dim - 3) * np.log1p(-t * t)
    pieces = [integrate.quad(lambda t: np.exp(log_density(t)), a, b)[0] for a, b in zip(grid[:-1], grid[1:])]
    cdf = np.concatenate([[0.0], np.cumsum(pieces)])
    return lambda w: np.interp(w, grid, cdf / cdf[-1])


@functools.partial(jax.jit, static_argnames=("n", "dim"))
def _cosines_chunk(key, kappa, n, dim):
    mu = jnp.zeros(dim).at[0].set(-1.0)  # the reflection branch of the rotation
    return (dist.vmf_sample(key, mu, kappa, (n,)) @ mu,)


@pytest.mark.parametrize(("dim", "kappa"), [(2, 0.0), (2, 5.0), (16, 0.0), (16, 20.0)])
def test_sampler_cosine_distribution(dim, kappa):
    """Kolmogorov-Smirnov: at kappa = 0, (1 + mu.x)/2 ~ Beta((p-1)/2, (p-1)/2) (uniform on the
    sphere); otherwise mu.x against its exact CDF (scipy quadrature). n = 4000."""
    (cos,) = draw(_cosines_chunk, 4, jnp.asarray(kappa), 1000, dim)
    if kappa == 0:
        result = stats.kstest((1.0 + cos) / 2.0, stats.beta((dim - 1) / 2, (dim - 1) / 2).cdf)
    else:
        result = stats.kstest(cos, _exact_cdf(dim, kappa))
    assert result.pvalue > 1e-3, result


def _proposal_gradient_quadrature(dim: int, kappa: float) -> float:
    """E over accepted Wood proposals of dw/dkappa at fixed eps (scipy quadrature, textbook
    form of Wood's sampler): the official code's and s-vae's kappa gradient."""
    m1 = dim - 1.0

    def b_of(k):
        return m1 / (2 * k + math.sqrt(4 * k * k + m1 * m1))

    def w_of(eps, k):
        b = b_of(k)
        return (1 - (1 + b) * eps) / (1 - (1 - b) * eps)

    b = b_of(kappa)
    x0 = (1 - b) / (1 + b)

    def accepted_density(eps):
        w = w_of(eps, kappa)
        log_accept = kappa * (w - x0) + m1 * (math.log1p(-x0 * w) - math.log1p(-x0 * x0))
        return stats.beta.pdf(eps, m1 / 2, m1 / 2) * math.exp(log_accept)

    def dw_dkappa(eps, h=1e-6):
        return (w_of(eps, kappa * (1 + h)) - w_of(eps, kappa * (1 - h))) / (2 * h * kappa)

    mass = integrate.quad(accepted_density, 0, 1, limit=200)[0]
    return integrate.quad(lambda e: accepted_density(e) * dw_dkappa(e), 0, 1, limit=200)[0] / mass


@functools.partial(jax.jit, static_argnames="n")
def _gradient_modes_chunk(key, mu, kappa, n):
    def cos(mode):
        return lambda k: dist.vmf_sample(key, mu, k, (n,), kappa_gradient=mode) @ mu

    one = jnp.ones_like(kappa)
    return jax.jvp(cos("proposal"), (kappa,), (one,))[1], jax.jvp(cos("implicit"), (kappa,), (one,))[1]


def test_proposal_gradient_reproduces_the_biased_reference():
    """kappa_gradient='proposal' (official code): at p = 16, kappa = 20 its expectation is
    the quadrature value (4% below A_p'), while the default is unbiased (n = 20000)."""
    dim, kappa = 16, 20.0
    mu = _random_direction(dim, 7)
    proposal, implicit = draw(_gradient_modes_chunk, 10, mu, jnp.asarray(kappa), 2000)
    _, a_dot = mp_mean_resultant_length(kappa, dim)
    biased = _proposal_gradient_quadrature(dim, kappa)
    assert biased < 0.97 * a_dot
    assert within(proposal, biased)
    assert within(implicit, a_dot)
    assert not within(proposal, a_dot)


@functools.partial(jax.jit, static_argnames="n")
def _closed_form_chunk(key, mu, mu_c, n):
    x = dist.vmf_sample(key, mu, 3.0, (n,))
    return jnp.exp(dist.vmf_log_prob(x, mu_c, 4.0)), dist.vmf_log_prob(x, mu, 3.0) - dist.vmf_log_prob(x, mu_c, 4.0)


def test_sampler_expectations_match_closed_forms():
    """docs/methods/nivmf.md#vmf-kernels: p = 5, kappa = 3, kappa_c = 4, cos(mu, mu_c) = 0.6:
    log E_{vMF(mu,3)}[vMF(x; mu_c, 4)] = -2.5887 and KL(vMF(mu,3) || vMF(mu_c,4)) = 0.8314."""
    mu = jnp.asarray([1.0, 0.0, 0.0, 0.0, 0.0])
    mu_c = jnp.asarray([0.6, 0.8, 0.0, 0.0, 0.0])
    density, log_ratio = draw(_closed_form_chunk, 10, mu, mu_c, 10000)
    se = density.std() / density.mean() / math.sqrt(density.size)
    assert abs(math.log(density.mean()) - (-2.5887)) <= 4 * se + 5e-5
    assert within(log_ratio, 0.8314, slack=5e-5)


def test_sampler_shapes_and_bad_input():
    """Shapes and dtypes (abstract evaluation: no compile); every other sampler test runs it
    under jax.jit."""
    mu = jax.ShapeDtypeStruct((3, 4), jnp.float32)  # batch (3,)
    kappa = jax.ShapeDtypeStruct((2, 1), jnp.float32)  # broadcasts to (2, 3)
    key = jax.random.key(1)
    out = jax.eval_shape(lambda k, m, c: dist.vmf_sample(k, m, c, (5,)), key, mu, kappa)
    assert out.shape == (5, 2, 3, 4) and out.dtype == jnp.float32
    with jax.enable_x64(True):
        out = jax.eval_shape(lambda k, m: dist.vmf_sample(k, m, 2.0), key, jax.ShapeDtypeStruct((7,), jnp.float64))
        assert out.shape == (7,) and out.dtype == jnp.float64
    mu = jnp.ones((3, 4)) / 2.0
    with pytest.raises(ValueError, match="kappa_gradient"):
        dist.vmf_sample(key, mu, 1.0, kappa_gradient="rejection")
    with pytest.raises(ValueError, match="num_proposals"):
        dist.vmf_sample(key, mu, 1.0, num_proposals=0)
    with pytest.raises(ValueError, match="dim"):
        dist.vmf_sample(key, jnp.ones((3, 1)), 1.0)
    with pytest.raises(ValueError, match="dim"):
        dist.vmf_entropy(1.0, 1)
