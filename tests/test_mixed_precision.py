"""Mixed precision (`model.dtype`): 16-bit compute in the network, float32 parameters, optimizer state,
outputs, similarities, special functions and losses; and why those must not run in 16 bits."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special as sp

from probdml import metrics, models, parallel, train


def _tiny(tiny_config, dtype):
    config = tiny_config.copy_and_resolve_references()
    config.model.dtype = dtype
    return config


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_16_bit_network_keeps_float32_state_and_outputs_and_finite_loss(tiny_config, dtype):
    config = _tiny(tiny_config, dtype)
    mesh = parallel.make_mesh(1)
    setup = train.create_setup(config, mesh, 5, (8, 8, 1))
    floats = [x for x in jax.tree.leaves((setup.state.params, setup.state.opt_state)) if jnp.issubdtype(x.dtype, jnp.floating)]
    assert floats and all(x.dtype == jnp.float32 for x in floats)
    images = np.random.default_rng(0).standard_normal((8, 8, 8, 1)).astype(np.float32)
    variables = {"params": setup.state.params["model"]}
    jaxpr = str(jax.make_jaxpr(lambda v, x: setup.model.apply(v, x))(variables, images))
    short = {"bfloat16": "bf16", "float16": "f16"}[dtype]
    assert "conv_general_dilated" in jaxpr and f"{short}[8,8,8," in jaxpr  # the convolutions run in 16 bits
    out = setup.model.apply(variables, images)
    assert all(v.dtype == jnp.float32 for v in out.values())
    ref = models.build_model(_tiny(tiny_config, "float32").model).apply(variables, images)
    np.testing.assert_allclose(out["embedding"], ref["embedding"], rtol=0.05, atol=0.05 * float(jnp.max(jnp.abs(ref["embedding"]))))
    labels = np.arange(8, dtype=np.int32) % 5
    state, step_metrics = setup.train_step(setup.state, parallel.global_batch(mesh, {"image": images, "label": labels}))
    assert all(np.isfinite(float(v)) for v in jax.device_get(step_metrics).values())
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.params))


def _log_vmf_normalizer_f64(kappa, p):
    """log C_p(kappa) in float64 from SciPy: (p/2-1) log k - (p/2) log 2 pi - log(ive(p/2-1, k)) - k."""
    nu = p / 2 - 1
    return nu * np.log(kappa) - (p / 2) * np.log(2 * np.pi) - np.log(sp.ive(nu, kappa)) - kappa


def test_vmf_normalizer_is_unsafe_in_16_bits_and_float32_is_not():
    """The EL kernel between image vMFs, log C(|q|) + log C(|r|) - log C(|q + r|), cancels terms of
    hundreds of nats: bfloat16 (8 significant bits, spacing 4 at 512) loses whole nats, and in float16
    the squared norm |q|^2 of a concentration-300 embedding (9e4) overflows the range (65504)."""
    rng = np.random.default_rng(0)
    p = 128
    q = rng.standard_normal((16, p))
    q *= rng.uniform(260, 340, (16, 1)) / np.linalg.norm(q, axis=1, keepdims=True)  # concentrations 260..340
    r = q[::-1] + rng.standard_normal((16, p)) * 2.0
    exact = (_log_vmf_normalizer_f64(np.linalg.norm(q, axis=1), p)[:, None]
             + _log_vmf_normalizer_f64(np.linalg.norm(r, axis=1), p)[None, :]
             - _log_vmf_normalizer_f64(np.linalg.norm(q[:, None] + r[None], axis=2), p))
    ours = np.asarray(metrics.el_vmf_similarity(jnp.asarray(q, jnp.float32), jnp.asarray(r, jnp.float32)), np.float64)
    assert np.max(np.abs(ours - exact)) < 0.05
    to_bf16 = lambda a: np.asarray(jnp.asarray(a, jnp.float32).astype(jnp.bfloat16).astype(jnp.float32), np.float64)
    rounded = (to_bf16(_log_vmf_normalizer_f64(np.linalg.norm(q, axis=1), p))[:, None]
               + to_bf16(_log_vmf_normalizer_f64(np.linalg.norm(r, axis=1), p))[None, :]
               - to_bf16(_log_vmf_normalizer_f64(np.linalg.norm(q[:, None] + r[None], axis=2), p)))
    assert np.max(np.abs(rounded - exact)) > 1.0
    with np.errstate(over="ignore"):
        assert np.isinf(np.sum(q.astype(np.float16) ** 2, axis=1, dtype=np.float16)).all()


def test_ism_exponent_is_unsafe_in_bfloat16_and_float32_is_not():
    """ISM decay e^{-r}, r = beta / (tau alpha), alpha = 1 - cos: for near pairs alpha is a difference of
    numbers near 1, which bfloat16 resolves to 2^-8 only: alpha is 0 or off by 100%, e^{-r} by orders
    of magnitude."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((64, 32))
    y = x + rng.standard_normal((64, 32)) * 0.03  # alpha ~ 5e-4
    cos = np.sum(x * y, 1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))
    beta, tau = 1e-2, 5.0
    exact = np.exp(-beta / (tau * (1 - cos)))
    for dtype, bound in ((jnp.float32, 1e-2), (jnp.bfloat16, None)):
        c = jnp.sum(jnp.asarray(x, dtype) * jnp.asarray(y, dtype), 1) * jax.lax.rsqrt(
            jnp.sum(jnp.asarray(x, dtype) ** 2, 1) * jnp.sum(jnp.asarray(y, dtype) ** 2, 1))
        alpha = np.asarray((1 - c).astype(jnp.float32), np.float64)
        decay = np.exp(-beta / (tau * np.maximum(alpha, 1e-6)))
        err = np.max(np.abs(np.log(np.maximum(decay, 1e-300)) - np.log(exact)))
        if bound is not None:
            assert err < bound
        else:
            assert err > 1.0


def test_float16_overflows_in_logsumexp_losses_and_miner_weights_but_not_after_the_cast():
    """ProxyAnchor's exp(alpha (s + margin)) at alpha = 32, s = 1 is e^35 = 1.6e15 and the
    distance-weighted miner's d^(2 - dim) at d = 0.5, dim = 128 is 2^126: both overflow float16
    (max 65504). The objective sees float32 outputs (models.float32_outputs), where both are finite
    and the loss equals a float64 evaluation of the formula on the same (float16-rounded) embeddings."""
    from probdml import losses, mining, similarity

    with np.errstate(over="ignore"):
        assert np.isinf(np.exp(np.float16(32.0) * np.float16(1.1)))
        assert np.isinf(np.float16(0.5) ** np.float16(-126))
    rng = np.random.default_rng(2)
    e16 = jnp.asarray(rng.standard_normal((12, 16)), jnp.float16)
    proxies = rng.standard_normal((3, 16))
    labels = np.arange(12) % 3
    out = models.float32_outputs({"embedding": e16})["embedding"]
    assert out.dtype == jnp.float32
    sim = similarity.cosine(out, jnp.asarray(proxies, jnp.float32))
    loss = float(losses.proxy_anchor(sim, jnp.asarray(labels), alpha=32.0, margin=0.1))
    e = np.asarray(e16, np.float64)
    s = (e / np.linalg.norm(e, axis=1, keepdims=True)) @ (proxies / np.linalg.norm(proxies, axis=1, keepdims=True)).T
    pos = labels[:, None] == np.arange(3)[None]
    pos_term = np.mean([np.log1p(np.sum(np.exp(-32 * (s[pos[:, c], c] - 0.1)))) for c in range(3)])
    neg_term = np.mean([np.log1p(np.sum(np.exp(32 * (s[~pos[:, c], c] + 0.1)))) for c in range(3)])
    np.testing.assert_allclose(loss, pos_term + neg_term, rtol=1e-5)
    unit = out / jnp.linalg.norm(out, axis=1, keepdims=True)
    dist = jnp.sqrt(jnp.maximum(similarity.sq_euclidean(unit, unit), 0.0))
    w = np.asarray(mining.distance_weighted_weights(dist, jnp.asarray(labels), dim=128))
    assert np.all(np.isfinite(w)) and np.allclose(w.sum(axis=1)[w.sum(axis=1) > 0], 1.0, atol=1e-5)


def _train_digits(tiny_config, tmp_path, dtype: str, seed: int) -> tuple[dict, list[float]]:
    """The tiny digits run (30 steps, loss logged every step, one evaluation at the end): its final test
    metrics and its logged training losses."""
    config = _tiny(tiny_config, dtype)
    config.seed = seed
    config.num_steps, config.log_every, config.eval_every, config.checkpoint_every = 30, 1, 30, 30
    config.eval.clustering = False
    workdir = tmp_path / f"{dtype}_{seed}"
    final = train.train_and_evaluate(config, str(workdir))
    with open(workdir / "metrics.jsonl") as f:
        losses = [row["train/loss"] for row in map(json.loads, f) if "train/loss" in row]
    return final, losses


def test_bfloat16_training_reaches_float32_recall_within_seed_noise(tiny_config, tmp_path):
    """bf16 compute on digits: every logged loss finite, and test recall@1 as far from the float32 run of the
    same seed as two float32 seeds are from each other, or at most 3 binomial standard errors of a recall@1
    measured on the test set (sqrt(p (1 - p) / n)), whichever is larger."""
    f32, f32_losses = _train_digits(tiny_config, tmp_path, "float32", 0)
    other, _ = _train_digits(tiny_config, tmp_path, "float32", 1)
    bf16, bf16_losses = _train_digits(tiny_config, tmp_path, "bfloat16", 0)
    assert len(bf16_losses) == 30 and all(np.isfinite(bf16_losses))
    assert f32_losses != bf16_losses  # the bf16 run did compute in bf16
    p, n = f32["recall@1"], 896  # digits' test split: classes 5-9 of sklearn's 1797 digits
    noise = max(abs(f32["recall@1"] - other["recall@1"]), 3 * np.sqrt(p * (1 - p) / n))
    assert abs(bf16["recall@1"] - f32["recall@1"]) <= noise, (bf16["recall@1"], f32["recall@1"], other["recall@1"])
    assert f32["recall@1"] > 0.5  # the runs learned something: chance is about 0.2
