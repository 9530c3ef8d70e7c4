"""Similarities: the introspective metric's properties, the official-code preset, the registry."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from probdml import similarity
from probdml.errors import ConfigError


def _rng_batch(seed, n=5, m=4, d=6, du=3):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, d)), rng.normal(size=(m, d)), rng.normal(size=(n, du)), rng.normal(size=(m, du)))


def test_cosine_dot_l2_hand_values():
    x = jnp.array([[3.0, 4.0], [1.0, 0.0]])
    y = jnp.array([[0.0, 2.0]])
    np.testing.assert_allclose(similarity.cosine(x, y), [[0.8], [0.0]], rtol=1e-6)
    np.testing.assert_allclose(similarity.dot(x, y), [[8.0], [0.0]])
    np.testing.assert_allclose(similarity.neg_sq_euclidean(x, y), [[-(9.0 + 4.0)], [-(1.0 + 4.0)]])
    np.testing.assert_allclose(similarity.chord_distance(jnp.array([0.8, 1.0, -1.0])),
                               [math.sqrt(0.4), 0.0, 2.0], rtol=1e-6)
    grad = jax.grad(lambda c: similarity.chord_distance(c))(1.0)
    assert grad == 0.0


def test_chord_matches_pml_lp_distance():
    torch = pytest.importorskip("torch")
    pml_distances = pytest.importorskip("pytorch_metric_learning.distances")
    x, y, _, _ = _rng_batch(0, n=30, m=30)
    ref = pml_distances.LpDistance()(torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32))
    ours = similarity.chord_distance(similarity.cosine(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)))
    np.testing.assert_allclose(ours, ref.numpy(), rtol=2e-6, atol=1e-6)


# ----------------------------------------------------------------------------------------------------
# Introspective similarity metric


@pytest.mark.parametrize("alpha_mode", ["cos", "sqeuclid_norm", "euclid_norm"])
@pytest.mark.parametrize("ism_form", ["relative", "absolute"])
def test_ism_equals_base_at_zero_uncertainty(alpha_mode, ism_form):
    x, y, _, _ = _rng_batch(1)
    with jax.enable_x64(True):
        x, y = jnp.asarray(x), jnp.asarray(y)
        zeros_u, zeros_v = jnp.zeros((5, 3)), jnp.zeros((4, 3))
        out = similarity.introspective(x, y, zeros_u, zeros_v, alpha_mode=alpha_mode, ism_form=ism_form)
        cos = np.asarray(similarity.cosine(x, y))
        alpha = {"cos": 1 - cos, "sqeuclid_norm": 2 - 2 * cos, "euclid_norm": np.sqrt(2 - 2 * cos)}[alpha_mode]
        np.testing.assert_allclose(out.similarity, cos, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(out.distance, alpha, rtol=1e-12, atol=1e-14)
        certain = similarity.introspective(x, y, alpha_mode=alpha_mode, ism_form=ism_form)
        np.testing.assert_allclose(certain.distance, alpha, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("ism_form", ["relative", "absolute"])
def test_ism_strictly_decreasing_in_beta_and_bounded_by_alpha(ism_form):
    with jax.enable_x64(True):
        alpha = jnp.array([1e-3, 0.1, 0.7, 1.9])[:, None]
        betas = jnp.linspace(0.0, 2.0, 41)[None, :]  # r <= 400: e^{-r} does not underflow in float64
        d = np.asarray(similarity.introspective_distance(alpha, betas, tau=5.0, ism_form=ism_form))
        assert np.all(np.diff(d, axis=1) < 0)
        assert np.all(d > 0) and np.all(d <= np.asarray(alpha))
        np.testing.assert_allclose(d[:, 0], np.asarray(alpha)[:, 0], rtol=0)


def test_ism_gradient_wrt_alpha_is_h():
    tau = 5.0
    with jax.enable_x64(True):
        for alpha, beta in [(0.3, 0.0), (0.3, 1.5), (1.2, 6.0), (0.05, 0.5), (2.0, 40.0)]:
            r = beta / (tau * alpha)
            g = jax.grad(lambda a, b=beta: similarity.introspective_distance(a, b, tau=tau))(alpha)
            np.testing.assert_allclose(g, (1 + r) * math.exp(-r), rtol=1e-12)
            gb = jax.grad(lambda b, a=alpha: similarity.introspective_distance(a, b, tau=tau))(beta)
            np.testing.assert_allclose(gb, -math.exp(-r) / tau, rtol=1e-12)
            g_abs = jax.grad(lambda a, b=beta: similarity.introspective_distance(a, b, tau=tau, ism_form="absolute"))(
                alpha)
            np.testing.assert_allclose(g_abs, math.exp(-beta / tau), rtol=1e-12)
        # spec's table: H(1) = 0.736, H(2) = 0.406, H(3) = 0.199, H(5) = 0.040
        for r, h in [(1, 0.736), (2, 0.406), (3, 0.199), (5, 0.040)]:
            g = jax.grad(lambda a, r=r: similarity.introspective_distance(a, r * tau * 0.5, tau=tau))(0.5)
            assert abs(float(g) - h) < 6e-4


def _ism_grads_near_zero_alpha(alphas, x, u):
    """Gradients of D_IN w.r.t. (alpha, beta) at each alpha, and of every alpha_mode's metric at
    identical embeddings (alpha = 0 on the diagonal) w.r.t. (x, u)."""
    d_dist = jax.vmap(jax.grad(lambda a, b: similarity.introspective_distance(a, b), argnums=(0, 1)), (0, None))
    ga, gb = d_dist(alphas, jnp.asarray(2.0, alphas.dtype))

    def total(x_, u_):
        outs = [similarity.introspective(x_, x_, u_, u_, alpha_mode=m) for m in similarity.ALPHA_MODES]
        return sum(jnp.sum(o.similarity) + jnp.sum(o.distance) for o in outs)

    return ga, gb, *jax.grad(total, argnums=(0, 1))(x, u)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_ism_finite_gradients_as_alpha_goes_to_zero(dtype):
    with jax.enable_x64(True):
        alphas = jnp.asarray([0.0, 1e-30, 1e-9, 1e-6, 1e-3], dtype)
        x = jnp.asarray(np.random.default_rng(2).normal(size=(4, 6)), dtype)
        u = jnp.asarray(np.random.default_rng(3).normal(size=(4, 3)), dtype)
        for g in jax.jit(_ism_grads_near_zero_alpha)(alphas, x, u):
            assert np.all(np.isfinite(np.asarray(g)))


def test_ism_beta_forms_hand_computed():
    u = jnp.array([[1.0, 0.0], [0.0, 2.0]])
    v = jnp.array([[1.0, 1.0]])
    # |u0|^2 = 1, |u1|^2 = 4, |v|^2 = 2, u0.v = 1, u1.v = 2
    np.testing.assert_allclose(similarity.introspective_beta(u, v, beta_form="sum"), [[3.0], [6.0]])
    np.testing.assert_allclose(similarity.introspective_beta(u, v, beta_form="sumvec"), [[5.0], [10.0]])
    np.testing.assert_allclose(similarity.introspective_beta(u, v, beta_form="diff"), [[1.0], [2.0]])
    for form in similarity.BETA_FORMS:  # certain references: all forms are |u|^2
        np.testing.assert_allclose(similarity.introspective_beta(u, None, beta_form=form), [[1.0], [4.0]])


def test_ism_hand_computed_relative_and_absolute():
    x = jnp.array([[1.0, 0.0]])
    y = jnp.array([[0.6, 0.8]])  # cos = 0.6
    u = jnp.array([[0.5, 0.5]])  # |u|^2 = 0.5 against a certain reference
    tau = 2.0
    c = 0.4
    rel = similarity.introspective(x, y, u, None, tau=tau, beta_offset=0.1)
    r = 0.6 / (tau * c)
    np.testing.assert_allclose(rel.distance, [[c * math.exp(-r)]], rtol=1e-6)
    np.testing.assert_allclose(rel.similarity, [[1 - c * math.exp(-r)]], rtol=1e-6)
    ab = similarity.introspective(x, y, u, None, tau=tau, ism_form="absolute", alpha_mode="sqeuclid_norm")
    np.testing.assert_allclose(ab.distance, [[2 * c * math.exp(-0.5 / tau)]], rtol=1e-6)
    np.testing.assert_allclose(ab.similarity, [[1 - c * math.exp(-0.5 / tau)]], rtol=1e-6)
    eu = similarity.introspective(x, y, u, None, tau=tau, alpha_mode="euclid_norm")
    chord = math.sqrt(2 * c)
    dist = chord * math.exp(-0.5 / (tau * chord))
    np.testing.assert_allclose(eu.distance, [[dist]], rtol=1e-6)
    np.testing.assert_allclose(eu.similarity, [[1 - dist * dist / 2]], rtol=1e-6)


def _official_idml_similarity(x, v, p):
    """The official IDML Proxy_Anchor similarity, transcribed to numpy (model outputs normalised as
    y / sqrt(|y|^2 + 1e-12), proxies raw, proxy uncertainty 0)."""
    def l2n(a):
        return a / np.sqrt(np.sum(a * a, 1, keepdims=True) + 1e-12)

    x_mu, x_var = l2n(x), l2n(v)
    cos_ori = l2n(x_mu) @ l2n(p).T
    distance_mu = np.sum(x_mu ** 2, 1, keepdims=True) + np.sum(p ** 2, 1)[None, :] - 2 * x_mu @ p.T
    distance_var = np.sum(x_var ** 2, 1, keepdims=True) + np.zeros((1, p.shape[0]))
    return 1 - (1 - cos_ori) * np.exp(-(distance_var + 4) / (5 * distance_mu))


def test_ism_compat_preset_reproduces_official_code():
    rng = np.random.default_rng(4)
    x, v = rng.normal(size=(6, 8)), rng.normal(size=(6, 5))
    proxies = rng.normal(size=(3, 8)) * math.sqrt(2 / 3)
    with jax.enable_x64(True):
        fn = similarity.get_similarity("introspective", compat=True)
        out = fn({"embedding": jnp.asarray(x), "uncertainty": jnp.asarray(v)}, {"embedding": jnp.asarray(proxies)})
        # the official model normalises with sqrt(|y|^2 + 1e-12), probdml with max(|y|, 1e-12): 1e-12 apart
        np.testing.assert_allclose(out.similarity, _official_idml_similarity(x, v, proxies), rtol=1e-10)


# ----------------------------------------------------------------------------------------------------
# Registry


def test_registry_unknown_names_and_options():
    with pytest.raises(ConfigError, match="valid choices: .*cosine.*introspective"):
        similarity.get_similarity("cosin")
    with pytest.raises(ConfigError, match="no option.*taux.*valid options: .*tau"):
        similarity.get_similarity("introspective", taux=3.0)
    with pytest.raises(ConfigError, match="beta_form"):
        similarity.get_similarity("introspective", beta_form="product")
    with pytest.raises(ConfigError, match="tau must be > 0"):
        similarity.get_similarity("introspective", tau=0.0)


def test_registry_bundles():
    x, y, u, _ = _rng_batch(5)
    a = {"embedding": jnp.asarray(x, jnp.float32), "uncertainty": jnp.asarray(u, jnp.float32)}
    b = {"embedding": jnp.asarray(y, jnp.float32)}
    cos = similarity.get_similarity("cosine")(a, b)
    np.testing.assert_allclose(cos.similarity, similarity.cosine(a["embedding"], b["embedding"]))
    np.testing.assert_allclose(cos.distance, np.sqrt(np.maximum(2 - 2 * np.asarray(cos.similarity), 0)), rtol=1e-6)
    l2 = similarity.get_similarity("l2")(a, dict(b, kappa=jnp.array([1.0, 2.0, 3.0, 4.0])))
    proxy_points = np.array([1.0, 2.0, 3.0, 4.0])[:, None] * y / np.linalg.norm(y, axis=1, keepdims=True)
    expected = -np.sum((x[:, None, :] - proxy_points[None]) ** 2, -1)
    np.testing.assert_allclose(l2.similarity, expected, rtol=1e-5)
    np.testing.assert_allclose(l2.distance, np.sqrt(-expected), rtol=1e-5)
    ism = similarity.get_similarity("introspective", tau=3.0)(a, b)
    ref = similarity.introspective(a["embedding"], b["embedding"], a["uncertainty"], None, tau=3.0)
    np.testing.assert_allclose(ism.similarity, ref.similarity)


# ----------------------------------------------------------------------------------------------------
# Finite gradients of every similarity on adversarial bundles (hypothesis)

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

NA, NB_, DE, DUNC = 6, 5, 4, 3
ROW_KINDS = ("normal", "zero", "same_as_0", "huge", "tiny")

ADVERSARIAL_CONFIGS = {
    "cosine": ("cosine", {}),
    "dot": ("dot", {}),
    "l2": ("l2", {}),
    "l2_normalized": ("l2", {"normalize": True}),
    **{f"ism_{m}_{f}_{b}": ("introspective", {"alpha_mode": m, "ism_form": f, "beta_form": b})
       for m in ("cos", "euclid_norm", "compat_raw_proxy") for f in ("relative", "absolute")
       for b in ("sumvec", "diff")},
    "ism_compat": ("introspective", {"compat": True}),
}


def _rows(rng, n, d, kinds):
    rows = rng.normal(size=(n, d)).astype(np.float32)
    for i, kind in enumerate(kinds[:n]):
        if kind == "zero":
            rows[i] = 0.0
        elif kind == "same_as_0":
            rows[i] = rows[0]
        elif kind == "huge":
            rows[i] *= 1e4 / np.linalg.norm(rows[i])
        elif kind == "tiny":
            rows[i] *= 1e-6
    return rows


def _similarity_grads(config_ids):
    fns = {cid: similarity.get_similarity(n, **o) for cid, (n, o) in ((c, ADVERSARIAL_CONFIGS[c]) for c in config_ids)}

    def run(a, b):
        out = {}
        for cid, fn in fns.items():
            def total(a_, b_, fn=fn):
                p = fn(a_, b_)
                return jnp.sum(p.similarity) + jnp.sum(p.distance)

            out[cid] = (fn(a, b), jax.grad(total, argnums=(0, 1))(a, b), jax.grad(total)(a, a))
        return out

    return jax.jit(run)


_ALL_SIMILARITY_GRADS = _similarity_grads(list(ADVERSARIAL_CONFIGS))


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    a_kinds=st.lists(st.sampled_from(ROW_KINDS), min_size=NA, max_size=NA),
    b_kinds=st.lists(st.sampled_from(ROW_KINDS), min_size=NB_, max_size=NB_),
    u_kinds=st.lists(st.sampled_from(ROW_KINDS), min_size=NA, max_size=NA),
    b_equals_a=st.booleans(),
)
def test_every_similarity_has_finite_gradients_on_adversarial_bundles(seed, a_kinds, b_kinds, u_kinds, b_equals_a):
    rng = np.random.default_rng(seed)
    a = {"embedding": jnp.asarray(_rows(rng, NA, DE, a_kinds)), "uncertainty": jnp.asarray(_rows(rng, NA, DUNC, u_kinds))}
    b_rows = _rows(rng, NB_, DE, b_kinds)
    if b_equals_a:
        b_rows = np.asarray(a["embedding"])[:NB_]
    b = {"embedding": jnp.asarray(b_rows)}
    for cid, (pair, grads_ab, grads_aa) in _ALL_SIMILARITY_GRADS(a, b).items():
        assert np.all(np.isfinite(np.asarray(pair.similarity))), (cid, "similarity")
        assert np.all(np.isfinite(np.asarray(pair.distance))), (cid, "distance")
        for g in jax.tree.leaves((grads_ab, grads_aa)):
            assert np.all(np.isfinite(np.asarray(g))), (cid, "gradient")


# ----------------------------------------------------------------------------------------------------
# vMF kernels: mpmath closed forms, the spec's values, Monte Carlo on the sphere

import mpmath  # noqa: E402

from probdml import distributions  # noqa: E402


def _mp_log_c(p, kappa):
    """log C_p(kappa) with mpmath (30 digits)."""
    with mpmath.workdps(30):
        nu = mpmath.mpf(p) / 2 - 1
        k = mpmath.mpf(kappa)
        if k == 0:
            return float(mpmath.loggamma(mpmath.mpf(p) / 2) - mpmath.log(2) - mpmath.mpf(p) / 2 * mpmath.log(mpmath.pi))
        return float(nu * mpmath.log(k) - mpmath.mpf(p) / 2 * mpmath.log(2 * mpmath.pi) - mpmath.log(mpmath.besseli(nu, k)))


def _mp_mean_length(p, kappa):
    with mpmath.workdps(30):
        return float(mpmath.besseli(mpmath.mpf(p) / 2, kappa) / mpmath.besseli(mpmath.mpf(p) / 2 - 1, kappa))


def _unit(p, cos):
    """Two unit vectors in R^p with the given cosine."""
    a = np.zeros(p)
    a[0] = 1.0
    b = np.zeros(p)
    b[0], b[1] = cos, math.sqrt(1 - cos * cos)
    return a, b


def _vmf_pair(p=5, kappa=3.0, kappa_c=4.0, cos=0.6):
    a, b = _unit(p, cos)
    return (jnp.asarray(a[None]), jnp.asarray([kappa]), jnp.asarray(b[None]), jnp.asarray([kappa_c]))


def test_vmf_kernels_match_mpmath_and_the_spec_values():
    p, k, kc, cos = 5, 3.0, 4.0, 0.6
    resultant = math.sqrt(k * k + kc * kc + 2 * k * kc * cos)
    with jax.enable_x64(True):
        mu_a, ka, mu_b, kb = _vmf_pair(p, k, kc, cos)
        el = float(similarity.ppk(mu_a, ka, mu_b, kb, rho=1.0)[0, 0])
        bc = float(similarity.ppk(mu_a, ka, mu_b, kb, rho=0.5)[0, 0])
        kl = float(similarity.vmf_kl(mu_a, ka, mu_b, kb)[0, 0])
        loglik = float(similarity.vmf_loglik(mu_a, mu_b, kb)[0, 0])
    np.testing.assert_allclose(el, _mp_log_c(p, k) + _mp_log_c(p, kc) - _mp_log_c(p, resultant), rtol=1e-12)
    np.testing.assert_allclose(
        bc, 0.5 * (_mp_log_c(p, k) + _mp_log_c(p, kc)) - _mp_log_c(p, 0.5 * resultant), rtol=1e-11)
    np.testing.assert_allclose(
        kl, _mp_log_c(p, k) - _mp_log_c(p, kc) + _mp_mean_length(p, k) * (k - kc * cos), rtol=1e-12)
    np.testing.assert_allclose(loglik, _mp_log_c(p, kc) + kc * cos, rtol=1e-12)
    # specs/nivmf.md section 2 (D1, D4)
    assert abs(el - (-2.5887)) < 1e-4 and abs(bc - (-0.2003)) < 1e-4 and abs(kl - 0.8314) < 1e-4


def _uniform_sphere(rng, n, p):
    x = rng.normal(size=(n, p))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _log_area(p):
    return math.log(2) + p / 2 * math.log(math.pi) - math.lgamma(p / 2)


def _mc_log_integral(values_log, log_area):
    """log(area * mean(exp(v))) and its standard error in log space (delta method)."""
    m = values_log.max()
    w = np.exp(values_log - m)
    return log_area + m + math.log(w.mean()), w.std() / w.mean() / math.sqrt(len(w))


@pytest.mark.parametrize("kappa,kappa_c,cos", [(3.0, 4.0, 0.6), (1.0, 6.0, -0.3), (8.0, 2.0, 0.95)])
def test_vmf_kernels_agree_with_monte_carlo(kappa, kappa_c, cos):
    """Closed forms vs 10^6 uniform points on S^4 (numpy, independent of probdml), within 4 standard errors."""
    p, n = 5, 1_000_000
    rng = np.random.default_rng(0)
    x = _uniform_sphere(rng, n, p)
    a, b = _unit(p, cos)
    log_fa = _mp_log_c(p, kappa) + kappa * (x @ a)
    log_fb = _mp_log_c(p, kappa_c) + kappa_c * (x @ b)
    with jax.enable_x64(True):
        mu_a, ka, mu_b, kb = _vmf_pair(p, kappa, kappa_c, cos)
        closed = {rho: float(similarity.ppk(mu_a, ka, mu_b, kb, rho=rho)[0, 0]) for rho in (1.0, 0.5, 2.0)}
        kl = float(similarity.vmf_kl(mu_a, ka, mu_b, kb)[0, 0])
    for rho, value in closed.items():
        est, se = _mc_log_integral(rho * (log_fa + log_fb), _log_area(p))
        assert abs(est - value) < 4 * se, (rho, est, value, se)
    # KL = area E_unif[f_a (log f_a - log f_b)]
    integrand = np.exp(log_fa + _log_area(p)) * (log_fa - log_fb)
    se = integrand.std() / math.sqrt(n)
    assert abs(integrand.mean() - kl) < 4 * se


def test_nivmf_pairwise_log_prob_matches_distributions():
    rng = np.random.default_rng(1)
    p = 6
    with jax.enable_x64(True):
        x = jnp.asarray(_uniform_sphere(rng, 4, p))
        mu = jnp.asarray(_uniform_sphere(rng, 3, p))
        kappas = jnp.asarray(rng.uniform(0.2, 5.0, size=(3, p)))
        for form in similarity.NIVMF_FORMS:
            ours = similarity.nivmf_pairwise_log_prob(x, mu, kappas, form=form)
            ref = distributions.nivmf_log_prob(x[:, None, :], mu[None], kappas[None], form=form)
            np.testing.assert_allclose(ours, ref, rtol=1e-12)


def _nivmf_case(p=5, seed=2):
    rng = np.random.default_rng(seed)
    mu_a = _uniform_sphere(rng, 2, p)
    kappa_a = np.array([2.0, 6.0])
    mu_b = _uniform_sphere(rng, 3, p)
    kappas_b = rng.uniform(0.5, 3.0, size=(3, p))
    return mu_a, kappa_a, mu_b, kappas_b


@pytest.mark.parametrize("form", ["reference_linear", "stretched", "exact"])
def test_el_nivmf_monte_carlo_matches_independent_quadrature(form):
    """probdml's estimators (closed form where it exists, else its sampler-based Monte Carlo with 2e5
    samples) against log E_vMF[nivMF] by 10^6 uniform points (numpy) within 4 combined standard errors."""
    p = 5
    mu_a, kappa_a, mu_b, kappas_b = _nivmf_case(p)
    rng = np.random.default_rng(3)
    x = _uniform_sphere(rng, 1_000_000, p)
    with jax.enable_x64(True):
        xj = jnp.asarray(x)
        log_niv = np.asarray(similarity.nivmf_pairwise_log_prob(xj, jnp.asarray(mu_b), jnp.asarray(kappas_b),
                                                                form=form))  # [n, M]
        n_mc = 200_000
        ours = np.asarray(similarity.el_nivmf(
            jnp.asarray(mu_a), jnp.asarray(kappa_a), jnp.asarray(mu_b), jnp.asarray(kappas_b), form=form,
            estimator="monte_carlo", num_samples=n_mc, key=jax.random.key(0)))
        if form == "reference_linear":
            closed = np.asarray(similarity.el_nivmf(jnp.asarray(mu_a), jnp.asarray(kappa_a), jnp.asarray(mu_b),
                                                    jnp.asarray(kappas_b)))
            np.testing.assert_allclose(ours, closed, atol=0.02)
    for i in range(2):
        log_vmf = _mp_log_c(p, kappa_a[i]) + kappa_a[i] * (x @ mu_a[i])
        for j in range(3):
            est, se = _mc_log_integral(log_vmf + log_niv[:, j], _log_area(p))
            # our estimate's own standard error is about sqrt(1e6 / 2e5) times larger than the quadrature's
            tol = 4 * se * (1 + math.sqrt(1_000_000 / n_mc)) + 1e-3
            if form == "reference_linear":
                assert abs(est - closed[i, j]) < 4 * se
            assert abs(est - ours[i, j]) < tol, (form, i, j, est, ours[i, j], se)


def test_el_nivmf_temperature_placement():
    p = 5
    mu_a, kappa_a, mu_b, kappas_b = (jnp.asarray(v) for v in _nivmf_case(p))
    t = 0.5
    with jax.enable_x64(True):
        args = [jnp.asarray(v, jnp.float64) for v in (mu_a, kappa_a, mu_b, kappas_b)]
        outside = similarity.el_nivmf(*args, temperature=t)
        np.testing.assert_allclose(outside, similarity.el_nivmf(*args, temperature=1.0))  # T unused outside
        inside = similarity.el_nivmf(*args, temperature=t, temperature_placement="inside")
        mc = similarity.el_nivmf(*args, temperature=t, temperature_placement="inside", estimator="monte_carlo",
                                 num_samples=200_000, key=jax.random.key(5))
        np.testing.assert_allclose(mc, inside, atol=0.05)
        # log E[niv^(1/T)] >= (1/T) log E[niv] (Jensen, T < 1), strictly here
        assert np.all(np.asarray(inside) > np.asarray(outside) / t)


def test_el_nivmf_with_isotropic_kappas_is_the_el_kernel():
    """exact nivMF with K = kappa I is vMF(mu, kappa): its EL kernel is the closed-form PPK (rho = 1)."""
    p = 5
    rng = np.random.default_rng(6)
    with jax.enable_x64(True):
        mu_a, mu_b = jnp.asarray(_uniform_sphere(rng, 2, p)), jnp.asarray(_uniform_sphere(rng, 3, p))
        ka, kb = jnp.array([2.0, 5.0]), jnp.array([1.0, 3.0, 4.0])
        mc = similarity.el_nivmf(mu_a, ka, mu_b, kb[:, None] * jnp.ones(p), form="exact", estimator="monte_carlo",
                                 num_samples=200_000, key=jax.random.key(7))
        np.testing.assert_allclose(mc, similarity.ppk(mu_a, ka, mu_b, kb), atol=0.02)


def test_kl_reference_mode_reproduces_the_official_formula():
    p, k, kc, cos = 5, 3.0, 4.0, 0.6
    with jax.enable_x64(True):
        a = {"embedding": jnp.asarray(_unit(p, 1.0)[0][None] * k)}
        b = {"embedding": jnp.asarray(_unit(p, cos)[1][None]), "kappa": jnp.array([kc])}
        ref = similarity.get_similarity("kl", reference_sign=True, exact_mean_length=False)(a, b).similarity
        default = similarity.get_similarity("kl")(a, b)
    np.testing.assert_allclose(ref, [[_mp_log_c(p, k) - _mp_log_c(p, kc) + k - kc * cos]], rtol=1e-12)  # ~1.138
    assert abs(float(ref[0, 0]) - 1.138) < 1e-3
    np.testing.assert_allclose(default.similarity, [[-0.8314]], atol=1e-4)
    np.testing.assert_allclose(default.distance, [[0.8314]], atol=1e-4)
