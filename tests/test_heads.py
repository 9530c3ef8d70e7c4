"""Embedding heads: initialisation laws, forward formulas, options and errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from probdml.models.heads import SemanticHead, TorchDense, UncertaintyHead, VMFHead, l2_normalize

IN, OUT = 2048, 512


def init(module, key=0, features=IN):
    return module.init(jax.random.key(key), jnp.zeros((1, features)))["params"]


def test_semantic_head_init_is_kaiming_normal_fan_out():
    """torch.nn.init.kaiming_normal_(W [out, in], mode="fan_out"): std sqrt(2 / out); b = 0."""
    params = init(SemanticHead(OUT))["dense"]
    kernel = np.asarray(params["kernel"])
    assert kernel.shape == (IN, OUT)
    reference = torch.nn.init.kaiming_normal_(torch.empty(OUT, IN), mode="fan_out").std().item()
    assert abs(reference / np.sqrt(2.0 / OUT) - 1) < 0.01
    assert abs(kernel.std() / np.sqrt(2.0 / OUT) - 1) < 0.01
    assert abs(kernel.mean()) < 5 * kernel.std() / np.sqrt(kernel.size)
    # Gaussian, not truncated or uniform: the fourth standardised moment is 3.
    assert abs(np.mean((kernel / kernel.std()) ** 4) - 3.0) < 0.05
    np.testing.assert_array_equal(params["bias"], np.zeros(OUT))


@pytest.mark.parametrize("head", [UncertaintyHead(OUT), TorchDense(OUT)])
def test_torch_default_linear_init(head):
    """nn.Linear default: W and b ~ U(-1/sqrt(in), 1/sqrt(in)), variance 1 / (3 in)."""
    params = init(head)
    params = params.get("dense", params)
    bound = 1 / np.sqrt(IN)
    for name in ("kernel", "bias"):
        value = np.asarray(params[name])
        assert np.abs(value).max() <= bound and np.abs(value).max() > 0.99 * bound
    kernel = np.asarray(params["kernel"])
    assert abs(kernel.var() * 3 * IN - 1) < 0.01
    linear = torch.nn.Linear(IN, OUT)
    assert abs(linear.weight.detach().var().item() * 3 * IN - 1) < 0.01
    assert linear.bias.detach().abs().max().item() <= bound


def test_vmf_head_multiplies_initial_weight_only():
    base = init(VMFHead(OUT), key=3)["dense"]
    scaled = init(VMFHead(OUT, init_norm_multiplier=100.0), key=3)["dense"]
    np.testing.assert_allclose(scaled["kernel"], 100.0 * np.asarray(base["kernel"]), rtol=1e-6)
    np.testing.assert_array_equal(scaled["bias"], base["bias"])
    assert np.abs(np.asarray(scaled["bias"])).max() <= 1 / np.sqrt(IN)


def test_forward_formulas():
    rng = np.random.default_rng(0)
    h = rng.normal(size=(5, 24)).astype(np.float32)
    w = rng.normal(size=(24, 6)).astype(np.float32)
    b = rng.normal(size=6).astype(np.float32)
    params = {"params": {"dense": {"kernel": w, "bias": b}}}
    affine = h @ w + b
    unit = affine / np.sqrt((affine**2).sum(-1, keepdims=True) + 1e-12)

    np.testing.assert_allclose(SemanticHead(6).apply(params, h), unit, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(SemanticHead(6, l2_normalize=False).apply(params, h), affine, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(UncertaintyHead(6).apply(params, h), unit, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        UncertaintyHead(6, l2_normalize=False, activation="relu").apply(params, h),
        np.maximum(affine, 0),
        rtol=1e-5,
        atol=1e-5,
    )
    relu_unit = np.maximum(affine, 0) / np.sqrt((np.maximum(affine, 0) ** 2).sum(-1, keepdims=True) + 1e-12)
    np.testing.assert_allclose(UncertaintyHead(6, activation="relu").apply(params, h), relu_unit, rtol=1e-5, atol=1e-6)
    vmf = VMFHead(6, init_norm_multiplier=50.0).apply(params, h)
    np.testing.assert_allclose(vmf, affine, rtol=1e-5, atol=1e-5)


def test_l2_normalize_at_zero_and_float64():
    """x / sqrt(||x||^2 + 1e-12): finite at 0 (the reference's `l2_norm`), dtype preserved."""
    np.testing.assert_array_equal(np.asarray(l2_normalize(jnp.zeros((2, 3)))), np.zeros((2, 3)))
    grad = jax.grad(lambda x: l2_normalize(x).sum())(jnp.zeros(3))
    assert np.all(np.isfinite(np.asarray(grad)))
    with jax.enable_x64(True):
        x = jnp.asarray([[3.0, 4.0]], jnp.float64)
        y = l2_normalize(x)
        assert y.dtype == jnp.float64
        np.testing.assert_allclose(np.asarray(y), [[0.6, 0.8]], rtol=1e-13)
        params = SemanticHead(4, param_dtype=jnp.float64).init(jax.random.key(0), x)
        out = jax.jit(SemanticHead(4, param_dtype=jnp.float64).apply)(params, x)
        assert out.dtype == jnp.float64
        np.testing.assert_allclose(float(jnp.sum(out**2)), 1.0, rtol=1e-12)


def test_heads_jit_and_grad():
    h = jax.random.normal(jax.random.key(1), (4, 32))
    head = UncertaintyHead(8, activation="relu")
    params = head.init(jax.random.key(2), h)
    grads = jax.jit(jax.grad(lambda p: jnp.sum(head.apply(p, h) ** 2 * jnp.arange(8.0))))(params)
    assert grads["params"]["dense"]["kernel"].shape == (32, 8)
    assert np.all(np.isfinite(np.asarray(grads["params"]["dense"]["kernel"])))


def test_bad_activation():
    with pytest.raises(ValueError, match=r"activation must be one of \('none', 'relu'\), got 'tanh'"):
        UncertaintyHead(4, activation="tanh").init(jax.random.key(0), jnp.zeros((1, 3)))
