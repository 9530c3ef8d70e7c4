"""`compat` modes against independent implementations of the official computations.

- The official EL-nivMF sampler (its blended b, a, d and accept loop): accepted-sample statistics and
  acceptance rates against a numpy transcription of the algorithm, across the b-mixture switch; its
  gradient at mu = e_1 (hand-derived); vmap over keys draws what a loop over keys draws.
- The compat EL-nivMF loss: mean and mean gradient over 400 keys against a torch evaluation of the
  official formula (numpy-drawn accepted proposals, torch autograd through b).
- The IDML compat metric in ProxyAnchor: value and full gradient against a torch forward of the official
  loss at --l2-norm 0 and 1.
- Contradictory option pairs raise a one-line ConfigError naming both options.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from probdml import losses, similarity
from probdml.errors import ConfigError
from probdml.models.heads import l2_normalize as model_l2_normalize

# ----------------------------------------------------------------------------------------------------
# Independent numpy / torch transcriptions of the official algorithms


def np_official_bad(kappa: np.ndarray, dim: int):
    """(b, a, d) as the official sampler computes them: b blends b_true and m / (4 kappa) for 10 < kappa < 11."""
    m = dim - 1.0
    root = np.sqrt(4.0 * kappa ** 2 + m ** 2)
    b_exact = (root - 2.0 * kappa) / m
    weight = np.minimum(np.maximum(kappa - 10.0, 0.0), 1.0)
    b = weight * m / (4.0 * kappa) + (1.0 - weight) * b_exact
    a = (m + 2.0 * kappa + root) / 4.0
    return b, a, 4.0 * a * b / (1.0 + b) - m * np.log(m)


def np_official_proposals(rng: np.random.Generator, kappa: np.ndarray, dim: int):
    """Accepted Beta proposals eps (shape of kappa) of the official loop, one proposal per round per draw,
    and the number of proposals each draw needed."""
    m = dim - 1.0
    b, a, d = np_official_bad(kappa, dim)
    eps = np.zeros(kappa.shape)
    rounds = np.zeros(kappa.shape)
    pending = np.ones(kappa.shape, bool)
    while pending.any():
        where = np.nonzero(pending)
        e = rng.beta(m / 2.0, m / 2.0, size=where[0].shape)
        u = rng.uniform(1e-20, 1.0 - 1e-20, size=where[0].shape)
        t = 2.0 * a[where] * b[where] / (1.0 - (1.0 - b[where]) * e)
        ok = m * np.log(t) - t + d[where] > np.log(u)
        rounds[where] += 1
        hit = tuple(ix[ok] for ix in where)
        eps[hit] = e[ok]
        pending[hit] = False
    return eps, rounds


def _se(x: np.ndarray) -> float:
    return float(np.std(x, ddof=1) / math.sqrt(len(x)))


# ----------------------------------------------------------------------------------------------------
# 1. The official sampler


SAMPLER_GRID = {128: (5.0, 10.0, 10.5, 11.0, 70.0), 512: (5.0, 10.5, 11.0, 110.0)}


@pytest.mark.parametrize("dim", sorted(SAMPLER_GRID))
def test_official_sampler_matches_numpy_transcription(dim):
    n = 20000
    kappas = np.array(SAMPLER_GRID[dim])
    rng = np.random.default_rng(dim)
    eps, rounds = np_official_proposals(rng, np.broadcast_to(kappas, (n, len(kappas))).copy(), dim)
    b, _, _ = np_official_bad(kappas, dim)
    w_ref = (1.0 - (1.0 + b) * eps) / (1.0 - (1.0 - b) * eps)
    sample = jax.jit(similarity.official_vmf_cosines, static_argnums=2)
    w = np.asarray(sample(jax.random.key(dim), jnp.broadcast_to(jnp.asarray(kappas, jnp.float32), (n, len(kappas))),
                          dim), np.float64)
    for j in range(len(kappas)):
        for moment in (1, 2):
            ours, ref = w[:, j] ** moment, w_ref[:, j] ** moment
            tol = 4.0 * math.hypot(_se(ours), _se(ref))
            assert abs(ours.mean() - ref.mean()) < tol, (dim, kappas[j], moment, ours.mean(), ref.mean())
    # acceptance: probdml's test on numpy-drawn proposals vs the numpy loop's accepted / proposed
    e = rng.beta((dim - 1) / 2.0, (dim - 1) / 2.0, size=(n, len(kappas)))
    log_u = np.log(rng.uniform(1e-20, 1.0, size=(n, len(kappas))))
    with jax.enable_x64(True):
        bad = similarity.official_wood_parameters(jnp.asarray(kappas, jnp.float64), dim)
        accepted = np.asarray(similarity.official_accepts(jnp.asarray(e), jnp.asarray(log_u), *bad, dim))
    rate_ref = n / rounds.sum(axis=0)
    rate = accepted.mean(axis=0)
    tol = 4.0 * np.sqrt(rate_ref * (1 - rate_ref) / rounds.sum(axis=0) + rate * (1 - rate) / n) + 1e-6
    np.testing.assert_array_less(np.abs(rate - rate_ref), tol)
    above = kappas >= 11.0
    assert np.all(rate_ref[above] > 0.999)  # the blended b accepts almost every proposal (the bias)


@pytest.fixture
def xla_unoptimised():
    """XLA with most optimisations off for one test: compiling the sampler dominates its tiny programs."""
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)


def test_official_sample_gradient_at_mu_e1(xla_unoptimised):
    # mu = e_1 gives h = e_1 - mu = 0: the official u = h / max(|h|, 1e-7) is 0, z = x - 2 (x.u) u is
    # quadratic in u, so dz/dmu = 0 there (torch's norm has a zero gradient at 0; an unguarded sqrt gives
    # 0 * inf = NaN). x = [w, sqrt(1 - w^2) v] is then unrotated. p = 3 (the Householder step is the same for
    # every p; no rejection loop to compile): w = 1 + L / kappa, L = log(u + (1 - u) e^{-2 kappa}), so with
    # u recovered from w, dw/dkappa = (1 - w) / kappa - 2 (1 - e^L) e^{-2 kappa} / (kappa (1 - e^{-2 kappa}) e^L).
    dim, n, k = 3, 3, 2.0
    mu = jnp.array([[1.0, 0.0, 0.0], [0.6, 0.0, 0.8]])
    kappa = jnp.array([k, 30.0])
    weights = jnp.asarray(np.random.default_rng(0).normal(size=(n, 2, dim)), jnp.float32)

    def total(mu_, kappa_, weights_, key):
        x = similarity.official_vmf_sample(key, mu_, kappa_, n)
        return jnp.sum(x * weights_), x

    (g_mu, g_kappa), x = jax.jit(jax.grad(total, argnums=(0, 1), has_aux=True))(mu, kappa, weights, jax.random.key(0))
    assert np.all(np.isfinite(g_mu)) and np.all(np.isfinite(g_kappa))
    np.testing.assert_array_equal(g_mu[0], 0.0)
    x0, c0 = np.asarray(x[:, 0], np.float64), np.asarray(weights[:, 0], np.float64)
    w = x0[:, 0]
    assert np.all(1.0 - w * w > 1e-6)  # the 1e-7 clamp is inactive: x_j = sqrt(1 - w^2) v_j
    el, tail = np.exp(k * (w - 1.0)), math.exp(-2.0 * k)
    dw = (1.0 - w) / k - 2.0 * (1.0 - el) * tail / (k * (1.0 - tail) * el)
    dx = np.concatenate([np.ones((n, 1)), -w[:, None] * x0[:, 1:] / (1.0 - w * w)[:, None]], axis=1) * dw[:, None]
    assert float(g_kappa[0]) == pytest.approx(np.sum(dx * c0), rel=1e-3)


def test_official_sample_vmap_over_keys_equals_loop_over_keys(xla_unoptimised):
    # vmap turns the rejection while_loop's predicate into a batched one (the body runs for every key while
    # any key has a pending draw; finished keys keep their state). lax.map runs the unbatched loop key by key,
    # as a Python loop over keys would. A different accepted proposal would move w by O(0.1); rounding by ~1e-7.
    dim, n = 4, 5
    mu = jnp.asarray(np.random.default_rng(1).normal(size=(4, dim)), jnp.float32)
    mu = mu / jnp.linalg.norm(mu, axis=1, keepdims=True)
    kappa = jnp.array([0.5, 5.0, 10.5, 30.0])  # Wood's exact b, the blend, and b_app (acceptance ~1)

    def draw(key, mu_, kappa_):
        return similarity.official_vmf_sample(key, mu_, kappa_, n)

    def both(keys, mu_, kappa_):
        batched = jax.vmap(draw, in_axes=(0, None, None))(keys, mu_, kappa_)
        return batched, jax.lax.map(lambda k: draw(k, mu_, kappa_), keys)

    keys = jax.random.split(jax.random.key(3), 6)
    batched, looped = jax.jit(both)(keys, mu, kappa)
    np.testing.assert_allclose(np.asarray(batched), np.asarray(looped), rtol=0, atol=1e-6)
    assert np.asarray(batched).std(axis=0).min() > 1e-3  # the keys give different draws


# ----------------------------------------------------------------------------------------------------
# 2. The compat EL-nivMF loss


P, B, C, TEMP = 128, 8, 5, 0.5
IMAGE_KAPPAS = np.array([4.0, 9.0, 10.3, 10.7, 12.0, 30.0, 70.0, 150.0])


def _fixed_inputs():
    rng = np.random.default_rng(20)
    dirs = rng.normal(size=(B, P))
    e = dirs / np.linalg.norm(dirs, axis=1, keepdims=True) * IMAGE_KAPPAS[:, None]
    proxy_dirs = rng.normal(size=(C, P))
    kappas = rng.uniform(0.5, 3.0, size=(C, P))
    labels = np.array([0, 1, 2, 3, 4, 0, 1, 2])
    return e, proxy_dirs, kappas, labels


def torch_official_losses(e, proxy_dirs, kappas, labels, num_keys, num_samples=5, seed=0):
    """Per-key official ProxyNCA++ EL-nivMF losses [K] (no guidance) and d loss / d scale at scale 1, where
    the embeddings are scale * e: float64 torch, accepted proposals from `np_official_proposals`."""
    rng = np.random.default_rng(seed)
    scale = torch.ones(num_keys, dtype=torch.float64, requires_grad=True)
    x_img = torch.tensor(e)[None] * scale[:, None, None]  # [K, B, P]
    kappa = x_img.norm(dim=-1)  # [K, B]
    mu = x_img / kappa[..., None]
    m = P - 1.0
    root = torch.sqrt(4 * kappa ** 2 + m ** 2)
    weight = torch.clamp(kappa - 10.0, 0.0, 1.0)
    b = weight * m / (4 * kappa) + (1 - weight) * (root - 2 * kappa) / m  # [K, B]
    k_np = np.broadcast_to(kappa.detach().numpy()[:, None, :], (num_keys, num_samples, B)).copy()
    eps, _ = np_official_proposals(rng, k_np, P)
    eps = torch.tensor(eps)
    w = (1 - (1 + b[:, None]) * eps) / (1 - (1 - b[:, None]) * eps)  # [K, S, B]
    v = torch.tensor(rng.normal(size=(num_keys, num_samples, B, P - 1)))
    v = v / v.norm(dim=-1, keepdim=True)
    x = torch.cat([w[..., None], torch.sqrt(torch.clamp(1 - w ** 2, min=1e-7))[..., None] * v], dim=-1)
    h = -mu.clone()
    h[..., 0] += 1.0
    h = h / h.norm(dim=-1, keepdim=True).clamp_min(1e-7)
    x = x - 2 * (x * h[:, None]).sum(-1, keepdim=True) * h[:, None]  # [K, S, B, P]
    pk = torch.tensor(kappas)
    wc = torch.tensor(proxy_dirs / np.linalg.norm(proxy_dirs, axis=1, keepdims=True)) * pk  # [C, P]
    wn = wc.norm(dim=-1)
    quad = 127 - 0.01909 * wn - 0.003355 * wn ** 2
    cos = torch.einsum("ksbp,cp->ksbc", x, wc) / (x.norm(dim=-1)[..., None] * wn)
    logl = (quad + wn * cos + torch.log(pk).sum(-1) - torch.log(wn)) / TEMP
    s = torch.logsumexp(logl, dim=1) - math.log(num_samples)  # [K, B, C]
    lab = torch.tensor(labels)
    per_key = (torch.logsumexp(s, dim=-1) - s[:, torch.arange(B), lab]).mean(-1)  # [K]
    per_key.sum().backward()
    return per_key.detach().numpy(), scale.grad.numpy()


def _per_key_losses(fn, e, proxy, labels, num_keys, key):
    """Per-key compat losses [K] and d loss_k / d scale_k: the batch is replicated K times in one call (the
    images of a replica draw their own samples, as under K independent keys) instead of a vmap over keys."""
    tiled = jnp.tile(jnp.asarray(e, jnp.float32), (num_keys, 1))
    lab = jnp.tile(jnp.asarray(labels), num_keys)

    def total(scale, tiled, lab, proxy, key):  # every array an argument: no constant folding at compile time
        sim = fn({"embedding": tiled * jnp.repeat(scale, B)[:, None]}, proxy, key=key, temperature=TEMP).similarity
        per_image = jax.nn.logsumexp(sim, axis=1) - sim[jnp.arange(sim.shape[0]), lab]
        per_key = per_image.reshape(num_keys, B).mean(axis=1)
        return jnp.sum(per_key), per_key

    grads, per_key = jax.jit(jax.grad(total, has_aux=True))(jnp.ones(num_keys, jnp.float32), tiled, lab, proxy, key)
    return np.asarray(per_key, np.float64), np.asarray(grads, np.float64)


def test_compat_el_nivmf_loss_matches_official_formula_in_distribution():
    e, proxy_dirs, kappas, labels = _fixed_inputs()
    proxy = {"embedding": jnp.asarray(proxy_dirs, jnp.float32), "kappas": jnp.asarray(kappas, jnp.float32)}
    compat = similarity.get_similarity("el_nivmf", compat=True)
    values, grads = _per_key_losses(compat, e, proxy, labels, 400, jax.random.key(7))
    ref_values, ref_grads = torch_official_losses(e, proxy_dirs, kappas, labels, num_keys=1000)
    for ours, ref in ((values, ref_values), (grads, ref_grads)):
        assert abs(ours.mean() - ref.mean()) < 4.0 * math.hypot(_se(ours), _se(ref)), (ours.mean(), ref.mean())
        assert 0.8 < ours.std() / ref.std() < 1.25  # the spread too
    # the exact sampler (same estimator otherwise) has a different mean: the official one is reproduced
    exact = similarity.get_similarity("el_nivmf", **{**similarity.EL_NIVMF_COMPAT_PRESET, "sampler": "exact"})
    exact_values, _ = _per_key_losses(exact, e, proxy, labels, 100, jax.random.key(8))
    assert abs(exact_values.mean() - ref_values.mean()) > 5 * math.hypot(_se(exact_values), _se(ref_values))


# ----------------------------------------------------------------------------------------------------
# 3. IDML compat in ProxyAnchor


def torch_official_idml_proxy_anchor(x0, v0, proxies, labels, l2_norm: bool, margin=0.1, alpha=32.0):
    """The official IDML Proxy_Anchor forward on the model outputs (x, v) = l2_norm(x0, v0) or (x0, v0):
    the exponent uses |x|^2 + |P|^2 - 2 x P^T on x as given, beta = |v|^2 + 4, tau = 5."""
    def unit(a):
        return a / torch.sqrt((a * a).sum(1, keepdim=True) + 1e-12)

    x, v = (unit(x0), unit(v0)) if l2_norm else (x0, v0)
    cos_ori = unit(x) @ unit(proxies).T
    dist = (x * x).sum(1, keepdim=True) + (proxies * proxies).sum(1)[None] - 2 * x @ proxies.T
    beta = (v * v).sum(1, keepdim=True)
    cos = 1 - (1 - cos_ori) * torch.exp(-(beta + 4) / (5 * dist))
    pos = torch.nn.functional.one_hot(labels, proxies.shape[0]).double()
    pos_sum = (pos * torch.exp(-alpha * (cos - margin))).sum(0)
    neg_sum = ((1 - pos) * torch.exp(alpha * (cos + margin))).sum(0)
    valid = (pos.sum(0) > 0).sum()
    return torch.log1p(pos_sum).sum() / valid + torch.log1p(neg_sum).sum() / proxies.shape[0]


@pytest.mark.parametrize("l2_norm", [0, 1])
def test_idml_compat_value_and_gradient_match_official(l2_norm):
    rng = np.random.default_rng(30 + l2_norm)
    x0, v0 = rng.normal(size=(6, 8)) * 1.7, rng.normal(size=(6, 5)) * 0.6
    proxies = rng.normal(size=(4, 8)) * math.sqrt(2 / 4)
    labels = np.array([0, 1, 2, 0, 1, 3])
    tensors = [torch.tensor(a, requires_grad=True) for a in (x0, v0, proxies)]
    ref = torch_official_idml_proxy_anchor(*tensors, torch.tensor(labels), bool(l2_norm))
    ref.backward()
    fn = similarity.get_similarity("introspective", compat=True)

    def loss(x, v, p):
        if l2_norm:  # what the embedding model does with normalize_embedding / uncertainty_l2_normalize
            x, v = model_l2_normalize(x), model_l2_normalize(v)
        sim = fn({"embedding": x, "uncertainty": v}, {"embedding": p}).similarity
        return losses.proxy_anchor(sim, jnp.asarray(labels), margin=0.1, alpha=32.0)

    with jax.enable_x64(True):
        value, grads = jax.value_and_grad(loss, argnums=(0, 1, 2))(*(jnp.asarray(a) for a in (x0, v0, proxies)))
        assert float(value) == pytest.approx(float(ref), rel=1e-10)
        for ours, theirs in zip(grads, tensors):
            np.testing.assert_allclose(np.asarray(ours), theirs.grad.numpy(), rtol=1e-8, atol=1e-12)


# ----------------------------------------------------------------------------------------------------
# 4. Contradictory options


CONTRADICTIONS = [
    ("el_nivmf", {"estimator": "closed_form", "normalizer": "reference_quadratic"}, ("estimator", "normalizer")),
    ("el_nivmf", {"form": "exact"}, ("estimator", "form")),
    ("el_nivmf", {"estimator": "monte_carlo", "proxy_constant": "reference_quadratic"},
     ("estimator", "proxy_constant")),
    ("el_nivmf", {"sampler": "official"}, ("estimator", "sampler")),
    ("el_nivmf", {"estimator": "monte_carlo", "sampler": "official"}, ("sampler", "kappa_gradient")),
    ("el_nivmf", {"compat": True, "num_samples": 20}, ("compat", "num_samples")),
    ("el_nivmf", {"compat": True, "normalizer": "exact"}, ("compat", "normalizer")),
    ("el_nivmf", {"compat": True, "sampler": "exact"}, ("compat", "sampler")),
    ("el_nivmf", {"compat": True, "temperature_placement": "outside"}, ("compat", "temperature_placement")),
    ("introspective", {"compat": True, "tau": 3.0}, ("compat", "tau")),
    ("introspective", {"compat": True, "alpha_mode": "cos"}, ("compat", "alpha_mode")),
    ("kl_nivmf", {"form": "stretched"}, ("estimator", "form")),
    ("bhattacharyya_nivmf", {"form": "exact"}, ("estimator", "form")),
]


@pytest.mark.parametrize("name,options,named", CONTRADICTIONS, ids=[f"{n}-{'-'.join(o)}" for n, o, _ in CONTRADICTIONS])
def test_contradictory_options_raise_one_line_config_error(name, options, named):
    with pytest.raises(ConfigError) as info:
        similarity.get_similarity(name, **options)
    message = str(info.value)
    assert "\n" not in message and all(f"{option}=" in message for option in named), message


def test_consistent_options_pass():
    similarity.get_similarity("el_nivmf", compat=True, num_samples=5, sampler="official")
    similarity.get_similarity("el_nivmf", estimator="closed_form", proxy_constant="reference_quadratic")
    similarity.get_similarity("el_nivmf", estimator="monte_carlo", sampler="official", kappa_gradient="proposal")
    similarity.get_similarity("introspective", compat=True, tau=5.0)
