"""ProxyAnchor against values worked out by hand from its definition."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from probdml import losses


def test_hand_computed_two_samples_two_proxies():
    # sim rows: samples; columns: proxies. labels: sample 0 -> proxy 0, sample 1 -> proxy 0.
    sim = jnp.array([[0.5, -0.2], [0.3, 0.1]])
    labels = jnp.array([0, 0])
    a, m = 32.0, 0.1
    # Positive term: only proxy 0 has positives: log(1 + e^{-a(0.5-m)} + e^{-a(0.3-m)}), divided by 1.
    pos = math.log(1 + math.exp(-a * (0.5 - m)) + math.exp(-a * (0.3 - m)))
    # Negative term: proxy 0 has no negatives -> log 1 = 0; proxy 1: both samples are negatives.
    neg = (0.0 + math.log(1 + math.exp(a * (-0.2 + m)) + math.exp(a * (0.1 + m)))) / 2
    got = losses.proxy_anchor(sim, labels, margin=m, alpha=a)
    assert float(got) == pytest.approx(pos + neg, rel=1e-6)


def test_hand_computed_three_classes_with_mask():
    sim = jnp.array([[0.9, 0.0, -0.1], [0.2, 0.7, 0.4], [0.1, 0.1, 0.1]])
    labels = jnp.array([0, 1, 2])
    a, m = 2.0, 0.5
    mask = jnp.array([True, True, False])  # the third sample is padding
    pos = (math.log(1 + math.exp(-a * (0.9 - m))) + math.log(1 + math.exp(-a * (0.7 - m)))) / 2
    neg = (
        math.log(1 + math.exp(a * (0.2 + m)))
        + math.log(1 + math.exp(a * (0.0 + m)))
        + math.log(1 + math.exp(a * (-0.1 + m)) + math.exp(a * (0.4 + m)))
    ) / 3
    got = losses.proxy_anchor(sim, labels, margin=m, alpha=a, sample_mask=mask)
    assert float(got) == pytest.approx(pos + neg, rel=1e-6)


def test_stable_for_large_logits_and_finite_gradient():
    sim = jnp.array([[-1.0, 1.0], [1.0, -1.0]])
    labels = jnp.array([0, 1])
    a, m = 1000.0, 0.1
    # log(1 + e^x) ~ x for huge x: pos per proxy = a (1 + m); neg per proxy = a (1 + m).
    want = a * (1 + m) + a * (1 + m)
    got = losses.proxy_anchor(sim, labels, margin=m, alpha=a)
    assert float(got) == pytest.approx(want, rel=1e-6)
    grad = jax.grad(lambda s: losses.proxy_anchor(s, labels, margin=m, alpha=a))(sim)
    assert np.all(np.isfinite(np.asarray(grad)))
