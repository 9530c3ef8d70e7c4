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
        # the official --l2-norm 1 normalises x and u in the model (probdml: the embedding model's heads)
        unit = {"embedding": similarity.l2_normalize(jnp.asarray(x)), "uncertainty": similarity.l2_normalize(jnp.asarray(v))}
        out = fn(unit, {"embedding": jnp.asarray(proxies)})
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

# Each entry exercises a distinct code path (the Monte Carlo EL-nivMF gradient, the slowest to compile, is
# checked on an adversarial batch in tests/test_objective.py).
ADVERSARIAL_CONFIGS = {
    "cosine": ("cosine", {}),
    "dot": ("dot", {}),
    "l2": ("l2", {}),
    **{f"ism_{m}_{f}_{b}": ("introspective", {"alpha_mode": m, "ism_form": f, "beta_form": b})
       for m, f, b in [("cos", "relative", "sumvec"), ("euclid_norm", "absolute", "diff"),
                       ("sqeuclid_norm", "relative", "sum")]},
    "ism_compat": ("introspective", {"compat": True}),
    "bhattacharyya": ("bhattacharyya", {}),
    "kl": ("kl", {}),
    "loglik_nivmf_exact": ("loglik_nivmf", {"form": "exact"}),
    "el_nivmf": ("el_nivmf", {}),
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
    """One jitted function: each similarity's Pairwise for (a, b) and (a, a), and the gradient of the sum of
    all four matrices w.r.t. both bundles; vMF-kernel references also get proxy concentrations."""
    fns = {cid: (ADVERSARIAL_CONFIGS[cid][0], similarity.get_similarity(*ADVERSARIAL_CONFIGS[cid][:1],
                                                                        **ADVERSARIAL_CONFIGS[cid][1]))
           for cid in config_ids}

    def run(a, b, kappa, key):
        out = {}
        for cid, (name, fn) in fns.items():
            b_ref = dict(b)
            kind = similarity.PROXY_CONCENTRATION.get(name)
            if kind == "scalar":
                b_ref["kappa"] = kappa
            elif kind == "vector":
                b_ref["kappas"] = kappa[:, None] * jnp.linspace(0.5, 2.0, b["embedding"].shape[1])

            def total(a_, b_, fn=fn):
                ab, aa = fn(a_, b_, key=key, temperature=0.1), fn(a_, a_, key=key, temperature=0.1)
                return sum(jnp.sum(m) for m in (ab.similarity, ab.distance, aa.similarity, aa.distance))

            out[cid] = (fn(a, b_ref, key=key, temperature=0.1), fn(a, a, key=key),
                        jax.grad(total, argnums=(0, 1))(a, b_ref))
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
    kappa=st.lists(st.sampled_from([0.1, 1.0, 50.0, 1e4]), min_size=NB_, max_size=NB_),
)
def test_every_similarity_has_finite_gradients_on_adversarial_bundles(seed, a_kinds, b_kinds, u_kinds, b_equals_a,
                                                                      kappa):
    rng = np.random.default_rng(seed)
    a = {"embedding": jnp.asarray(_rows(rng, NA, DE, a_kinds)), "uncertainty": jnp.asarray(_rows(rng, NA, DUNC, u_kinds))}
    b_rows = _rows(rng, NB_, DE, b_kinds)
    if b_equals_a:
        b_rows = np.asarray(a["embedding"])[:NB_]
    b = {"embedding": jnp.asarray(b_rows)}
    results = _ALL_SIMILARITY_GRADS(a, b, jnp.asarray(kappa, jnp.float32), jax.random.key(seed))
    for cid, (pair_ab, pair_aa, grads) in results.items():
        for m in (pair_ab.similarity, pair_ab.distance, pair_aa.similarity, pair_aa.distance):
            assert np.all(np.isfinite(np.asarray(m))), (cid, "value")
        for g in jax.tree.leaves(grads):
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


@jax.jit
def _kernels(mu_a, ka, mu_b, kb):
    """EL, Bhattacharyya, PPK rho = 2, KL and the point log-likelihood, as [5, N, M]."""
    return jnp.stack([similarity.ppk(mu_a, ka, mu_b, kb, rho=1.0), similarity.ppk(mu_a, ka, mu_b, kb, rho=0.5),
                      similarity.ppk(mu_a, ka, mu_b, kb, rho=2.0), similarity.vmf_kl(mu_a, ka, mu_b, kb),
                      similarity.vmf_loglik(mu_a, mu_b, kb)])


def test_vmf_kernels_match_mpmath_and_the_spec_values():
    p, k, kc, cos = 5, 3.0, 4.0, 0.6
    resultant = math.sqrt(k * k + kc * kc + 2 * k * kc * cos)
    with jax.enable_x64(True):
        el, bc, _, kl, loglik = (float(v[0, 0]) for v in _kernels(*_vmf_pair(p, k, kc, cos)))
    np.testing.assert_allclose(el, _mp_log_c(p, k) + _mp_log_c(p, kc) - _mp_log_c(p, resultant), rtol=1e-12)
    np.testing.assert_allclose(
        bc, 0.5 * (_mp_log_c(p, k) + _mp_log_c(p, kc)) - _mp_log_c(p, 0.5 * resultant), rtol=1e-11)
    np.testing.assert_allclose(
        kl, _mp_log_c(p, k) - _mp_log_c(p, kc) + _mp_mean_length(p, k) * (k - kc * cos), rtol=1e-12)
    np.testing.assert_allclose(loglik, _mp_log_c(p, kc) + kc * cos, rtol=1e-12)
    # docs/methods/nivmf.md#vmf-kernels
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
        el, bc, ppk2, kl, _ = (float(v[0, 0]) for v in _kernels(*_vmf_pair(p, kappa, kappa_c, cos)))
    for rho, value in ((1.0, el), (0.5, bc), (2.0, ppk2)):
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

        @jax.jit
        def both(x_, mu_, kappas_):
            ours = [similarity.nivmf_pairwise_log_prob(x_, mu_, kappas_, form=f) for f in similarity.NIVMF_FORMS]
            ref = [distributions.nivmf_log_prob(x_[:, None, :], mu_[None], kappas_[None], form=f)
                   for f in similarity.NIVMF_FORMS]
            return jnp.stack(ours), jnp.stack(ref)

        ours, ref = both(x, mu, kappas)
        np.testing.assert_allclose(ours, ref, rtol=1e-12)


def _nivmf_case(p=5, seed=2):
    rng = np.random.default_rng(seed)
    mu_a = _uniform_sphere(rng, 2, p)
    kappa_a = np.array([2.0, 6.0])
    mu_b = _uniform_sphere(rng, 3, p)
    kappas_b = rng.uniform(0.5, 3.0, size=(3, p))
    return mu_a, kappa_a, mu_b, kappas_b


def _quadrature(p, mu_a, kappa_a, log_niv, x, t):
    """log E_{vMF(mu_a_i, ka_i)}[exp(l_ij / t)] by uniform points x, with its standard error, and the
    standard error that an n-sample estimator drawing from the vMF itself has (n = 1)."""
    out = np.zeros((2, len(mu_a), log_niv.shape[1]))
    own_sd = np.zeros_like(out[0])
    for i in range(len(mu_a)):
        log_vmf = _mp_log_c(p, kappa_a[i]) + kappa_a[i] * (x @ mu_a[i])
        for j in range(log_niv.shape[1]):
            g = log_niv[:, j] / t
            out[:, i, j] = _mc_log_integral(log_vmf + g, _log_area(p))
            # E_vMF[e^{2g}] / E_vMF[e^g]^2 - 1 is the relative variance of one vMF sample of e^g
            second, _ = _mc_log_integral(log_vmf + 2 * g, _log_area(p))
            own_sd[i, j] = math.sqrt(max(math.exp(second - 2 * out[0, i, j]) - 1, 0.0))
    return out[0], out[1], own_sd


@jax.jit
def _el_nivmf_all(mu_a, kappa_a, mu_b, kappas_b, key):
    """Closed form (outside, and inside at T = 0.5), and the sampler-based estimate of the exact form
    (inside, T = 0.5, 5000 samples)."""
    closed_out = similarity.el_nivmf(mu_a, kappa_a, mu_b, kappas_b, temperature=0.5)
    closed_in = similarity.el_nivmf(mu_a, kappa_a, mu_b, kappas_b, temperature=0.5, temperature_placement="inside")
    mc = similarity.el_nivmf(mu_a, kappa_a, mu_b, kappas_b, form="exact", estimator="monte_carlo",
                             num_samples=5_000, temperature=0.5, temperature_placement="inside", key=key)
    return closed_out, closed_in, mc


def test_el_nivmf_closed_form_and_monte_carlo_match_independent_quadrature():
    """EL-nivMF against log E_vMF[nivMF^(1/T')] by 10^6 uniform points on S^4 (numpy quadrature of
    probdml's density, checked against probdml.distributions above), within 4 standard errors:
    the closed form (reference_linear, T' = 1 and T' = T = 0.5) and the Monte Carlo estimator through
    probdml.distributions.vmf_sample (exact form, T inside)."""
    p, t = 5, 0.5
    mu_a, kappa_a, mu_b, kappas_b = _nivmf_case(p)
    x = _uniform_sphere(np.random.default_rng(3), 1_000_000, p)
    with jax.enable_x64(True):
        closed_out, closed_in, mc = (np.asarray(v) for v in _el_nivmf_all(
            *(jnp.asarray(v) for v in (mu_a, kappa_a, mu_b, kappas_b)), jax.random.key(0)))
        niv = jax.jit(lambda x_, form: similarity.nivmf_pairwise_log_prob(
            x_, jnp.asarray(mu_b), jnp.asarray(kappas_b), form=form), static_argnums=1)
        log_linear, log_exact = np.asarray(niv(jnp.asarray(x), "reference_linear")), np.asarray(
            niv(jnp.asarray(x), "exact"))
    for t_eff, closed in ((1.0, closed_out), (t, closed_in)):
        est, se, _ = _quadrature(p, mu_a, kappa_a, log_linear, x, t_eff)
        assert np.all(np.abs(est - closed) < 4 * se), (t_eff, est, closed, se)
    est, se, own_sd = _quadrature(p, mu_a, kappa_a, log_exact, x, t)
    tol = 4 * np.sqrt(se ** 2 + own_sd ** 2 / 5_000)
    assert np.all(np.abs(est - mc) < tol), (est, mc, tol)
    # the temperature inside is not (1/T) log E[niv]: Jensen makes it larger for T < 1
    assert np.all(closed_in > closed_out / t)


def test_kl_reference_mode_reproduces_the_official_formula():
    p, k, kc, cos = 5, 3.0, 4.0, 0.6
    with jax.enable_x64(True):
        a = {"embedding": jnp.asarray(_unit(p, 1.0)[0][None] * k)}
        b = {"embedding": jnp.asarray(_unit(p, cos)[1][None]), "kappa": jnp.array([kc])}
        ref = jax.jit(similarity.get_similarity("kl", reference_sign=True, exact_mean_length=False))(a, b).similarity
        default = jax.jit(similarity.get_similarity("kl"))(a, b)
    np.testing.assert_allclose(ref, [[_mp_log_c(p, k) - _mp_log_c(p, kc) + k - kc * cos]], rtol=1e-12)  # ~1.138
    assert abs(float(ref[0, 0]) - 1.138) < 1e-3
    np.testing.assert_allclose(default.similarity, [[-0.8314]], atol=1e-4)
    np.testing.assert_allclose(default.distance, [[0.8314]], atol=1e-4)
