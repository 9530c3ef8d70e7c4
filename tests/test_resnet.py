"""Flax ResNets against a torchvision-identical PyTorch ResNet (and torchvision if present)."""

from __future__ import annotations

import copy

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import traverse_util
from tests.torch_resnet import feature_map, pooled_features, randomize, torch_resnet

from probdml.models import resnet
from probdml.models.convert import convert_state_dict


def nhwc(x: torch.Tensor) -> np.ndarray:
    return x.detach().numpy().transpose(0, 2, 3, 1)


def to_flax(model: torch.nn.Module) -> tuple[dict, str, int | None]:
    return convert_state_dict({k: v.detach().numpy() for k, v in model.state_dict().items()})


def without_fc(variables: dict) -> dict:
    return {c: {k: v for k, v in tree.items() if k != "fc"} for c, tree in variables.items()}


def as_float64(variables: dict) -> dict:
    return jax.tree.map(lambda a: np.asarray(a, np.float64), variables)


@pytest.fixture(scope="module", params=["resnet18", "resnet50"])
def eval_pair(request):
    torch.manual_seed(0)
    model = randomize(torch_resnet(request.param), seed=1)
    variables, arch, num_classes = to_flax(model)
    assert arch == request.param and num_classes == 1000
    return request.param, model, variables


@pytest.mark.parametrize("shape", [(2, 3, 224, 224), (1, 3, 225, 193)], ids=["224x224", "225x193"])
def test_eval_parity_float32(eval_pair, shape):
    """Logits and avg+max features match the torch reference within 1e-4 (float32, eval)."""
    arch, model, variables = eval_pair
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(shape[-1]))
    with torch.no_grad():
        logits_ref = model(x).numpy()
        features_ref = pooled_features(model, x, "avg+max").numpy()
    classifier = resnet.resnet(arch, num_classes=1000)
    embedder = resnet.resnet(arch, pooling="avg+max")

    @jax.jit
    def forward(v, images):
        return classifier.apply(v, images), embedder.apply(without_fc(v), images)

    logits, features = forward(variables, nhwc(x))
    assert logits.shape == (shape[0], 1000) and logits.dtype == jnp.float32
    assert features.shape == (shape[0], 2048 if arch == "resnet50" else 512)
    assert np.abs(np.asarray(logits) - logits_ref).max() <= 1e-4
    assert np.abs(np.asarray(features) - features_ref).max() <= 1e-4


@pytest.fixture(scope="module")
def small_pair():
    """ResNet-18 reference in float64 (random weights, randomized BN) and its variables."""
    torch.manual_seed(2)
    model = randomize(torch_resnet("resnet18", num_classes=10), seed=3)
    variables, _, _ = to_flax(model)
    return model.double(), as_float64(variables), variables


@pytest.mark.parametrize("pooling", ["avg", "max", "avg+max", "none"])
def test_pooling_and_odd_sizes_float64(small_pair, pooling):
    """In float64 the two implementations agree to rounding, for every pooling, odd sizes."""
    model, variables, _ = small_pair
    x = torch.randn(2, 3, 65, 47, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ref = feature_map(model, x).numpy().transpose(0, 2, 3, 1) if pooling == "none" else (
            pooled_features(model, x, pooling).numpy()
        )
    with jax.enable_x64(True):
        out = jax.jit(resnet.resnet18(pooling=pooling).apply)(without_fc(variables), nhwc(x))
        assert out.dtype == jnp.float64
        np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-10, atol=1e-10)


def test_train_mode_matches_torch_batchnorm(small_pair):
    """train=True: batch statistics in the forward pass, running stats updated as torch does
    (momentum 0.1, unbiased variance)."""
    model, variables, _ = small_pair
    model = copy.deepcopy(model).train()
    x = torch.randn(3, 3, 40, 56, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = model(x).numpy()
    updated_ref, _, _ = to_flax(model)
    with jax.enable_x64(True):
        net = resnet.resnet18(num_classes=10)
        apply = jax.jit(lambda v, images: net.apply(v, images, train=True, mutable=["batch_stats"]))
        out, state = apply(variables, nhwc(x))
        np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-10, atol=1e-10)
        flat = traverse_util.flatten_dict(state["batch_stats"])
        flat_ref = traverse_util.flatten_dict(updated_ref["batch_stats"])
        assert flat.keys() == flat_ref.keys()
        for key in flat:
            np.testing.assert_allclose(np.asarray(flat[key]), flat_ref[key], rtol=1e-9, atol=1e-12, err_msg=str(key))
            assert not np.allclose(flat_ref[key], traverse_util.flatten_dict(variables["batch_stats"])[key])


def test_frozen_bn_stats_uses_running_statistics(small_pair):
    _, variables, _ = small_pair
    x = np.random.default_rng(6).normal(size=(2, 33, 40, 3))
    with jax.enable_x64(True):
        frozen = resnet.resnet18(num_classes=10, frozen_bn_stats=True)
        out, state = jax.jit(lambda v: frozen.apply(v, x, train=True, mutable=["batch_stats"]))(variables)
        out_eval = jax.jit(resnet.resnet18(num_classes=10).apply)(variables, x)
        np.testing.assert_allclose(np.asarray(out), np.asarray(out_eval), rtol=1e-12, atol=1e-12)
        jax.tree.map(np.testing.assert_array_equal, state["batch_stats"], variables["batch_stats"])


def test_gradients_match_torch_and_frozen_affine(small_pair):
    """d(sum_k c_k logit_k)/d(params) equals torch autograd; frozen affine zeroes BN grads only."""
    model, variables, _ = small_pair
    model = copy.deepcopy(model).eval()
    x = torch.randn(2, 3, 48, 40, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    c = torch.linspace(-1.0, 1.0, 10, dtype=torch.float64)
    (model(x) * c).sum().backward()
    grads_ref = {k: p.grad.numpy() for k, p in model.named_parameters()}
    expected = {
        ("conv1", "kernel"): grads_ref["conv1.weight"].transpose(2, 3, 1, 0),
        ("layer2_0", "downsample_bn", "scale"): grads_ref["layer2.0.downsample.1.weight"],
        ("layer4_1", "bn2", "bias"): grads_ref["layer4.1.bn2.bias"],
        ("fc", "kernel"): grads_ref["fc.weight"].T,
    }
    with jax.enable_x64(True):
        for frozen_affine in (False, True):
            net = resnet.resnet18(num_classes=10, frozen_bn_affine=frozen_affine)

            def objective(params):
                logits = net.apply({"params": params, "batch_stats": variables["batch_stats"]}, nhwc(x))
                return jnp.sum(logits * c.numpy())

            grads = traverse_util.flatten_dict(jax.jit(jax.grad(objective))(variables["params"]))
            for path, ref in expected.items():
                if frozen_affine and resnet.is_batchnorm_path(path):
                    assert np.all(np.asarray(grads[path]) == 0.0)
                else:
                    assert np.abs(ref).max() > 0
                    np.testing.assert_allclose(np.asarray(grads[path]), ref, rtol=1e-8, atol=1e-12, err_msg=str(path))


def test_batchnorm_mask_freezes_exactly_the_bn_parameters():
    with torch.device("meta"):
        model = torch_resnet("resnet50")
    bn_names = {n for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    n_bn_params = sum(p.numel() for n, p in model.named_parameters() if n.rpartition(".")[0] in bn_names)
    net = resnet.resnet50(num_classes=1000)
    params = jax.eval_shape(net.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))["params"]
    mask = resnet.batchnorm_mask(params)
    masked = sum(int(np.prod(p.shape)) for p, m in zip(jax.tree.leaves(params), jax.tree.leaves(mask)) if m)
    assert len(bn_names) == 1 + 3 * 16 + 4  # stem, three per bottleneck, four downsamples
    assert masked == n_bn_params
    assert len([m for m in jax.tree.leaves(mask) if m]) == 2 * len(bn_names)
    assert not mask["fc"]["kernel"] and not mask["layer3_0"]["downsample_conv"]["kernel"]

    # A one-block-per-stage net with random values (initialisers compile slowly on CPU).
    small = resnet.ResNet(stage_sizes=(1, 1, 1, 1), block="basic", num_classes=10)
    shapes = jax.eval_shape(small.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    rng = np.random.default_rng(0)
    variables = jax.tree.map(lambda s: (0.1 * rng.normal(size=s.shape)).astype(np.float32), shapes)
    labels = jax.tree.map(lambda bn: "frozen" if bn else "train", resnet.batchnorm_mask(variables["params"]))
    tx = optax.multi_transform({"train": optax.adamw(1e-2), "frozen": optax.set_to_zero()}, labels)
    x = jnp.ones((2, 32, 32, 3))

    @jax.jit
    def step(params):
        def loss(p):
            return jnp.sum(small.apply({"params": p, "batch_stats": variables["batch_stats"]}, x) ** 2)

        updates, _ = tx.update(jax.grad(loss)(params), tx.init(params), params)
        return optax.apply_updates(params, updates)

    params = variables["params"]
    new = step(params)
    np.testing.assert_array_equal(new["bn1"]["scale"], params["bn1"]["scale"])
    np.testing.assert_array_equal(new["layer2_0"]["downsample_bn"]["bias"], params["layer2_0"]["downsample_bn"]["bias"])
    assert not np.array_equal(new["conv1"]["kernel"], params["conv1"]["kernel"])


def test_init_follows_torchvision():
    """Conv kernels ~ N(0, 2 / (k^2 out)) (kaiming fan-out); BN scale 1, bias 0, stats (0, 1).

    Checked on one residual block (compiling a whole network's initialisers takes long on
    CPU); the fc's PyTorch-default init is checked in test_heads.py.
    """
    block = resnet.ResidualBlock(width=256, stride=2, block="basic")
    variables = block.init(jax.random.key(1), jnp.zeros((1, 8, 8, 128)))
    kernel = np.asarray(variables["params"]["conv2"]["kernel"])
    assert kernel.shape == (3, 3, 256, 256)
    assert abs(kernel.std() / np.sqrt(2.0 / (9 * 256)) - 1) < 0.01
    assert abs(kernel.mean()) < 5 * kernel.std() / np.sqrt(kernel.size)
    shortcut = np.asarray(variables["params"]["downsample_conv"]["kernel"])
    assert shortcut.shape == (1, 1, 128, 256)
    assert abs(shortcut.std() / np.sqrt(2.0 / 256) - 1) < 0.05
    np.testing.assert_array_equal(variables["params"]["bn1"]["scale"], np.ones(256))
    np.testing.assert_array_equal(variables["params"]["downsample_bn"]["bias"], np.zeros(256))
    np.testing.assert_array_equal(variables["batch_stats"]["bn2"]["mean"], np.zeros(256))
    np.testing.assert_array_equal(variables["batch_stats"]["bn2"]["var"], np.ones(256))


def test_bfloat16_compute(small_pair):
    net32 = resnet.resnet18(pooling="avg")
    net16 = resnet.resnet18(pooling="avg", dtype=jnp.bfloat16)
    x = np.random.default_rng(2).normal(size=(2, 64, 64, 3)).astype(np.float32)
    variables = without_fc(small_pair[2])
    out16 = jax.jit(net16.apply)(variables, x)
    out32 = jax.jit(net32.apply)(variables, x)
    assert out16.dtype == jnp.float32  # bfloat16 compute, outputs promoted to at least float32
    assert not np.array_equal(np.asarray(out16), np.asarray(out32))  # the compute really ran in bfloat16
    assert jax.tree.map(lambda a: a.dtype, variables["params"]["conv1"]) == {"kernel": jnp.float32}
    rel = float(jnp.linalg.norm(out16 - out32) / jnp.linalg.norm(out32))
    assert rel < 0.05


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pooling": "mean"}, "pooling must be one of"),
        ({"num_classes": 10, "pooling": "none"}, "num_classes needs pooled features"),
    ],
)
def test_bad_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        resnet.resnet18(**kwargs).init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))


def test_bad_arch_and_layout():
    with pytest.raises(ValueError, match="unknown architecture 'resnet19'.*resnet18"):
        resnet.resnet("resnet19")
    with pytest.raises(ValueError, match=r"NHWC.*\(1, 3, 32, 32\)"):
        resnet.resnet18().init(jax.random.key(0), jnp.zeros((1, 3, 32, 32)))
    with pytest.raises(ValueError, match="pooling must be one of"):
        resnet.global_pool(jnp.zeros((1, 2, 2, 4)), "sum")
    with pytest.raises(ValueError, match=r"block must be one of \('basic', 'bottleneck'\), got 'wide'"):
        resnet.ResidualBlock(width=8, block="wide").init(jax.random.key(0), jnp.zeros((1, 4, 4, 8)))


def test_against_torchvision():
    """Same parity check against torchvision itself, where it is installed."""
    torchvision = pytest.importorskip(
        "torchvision", reason="torchvision is not installed (test-only dependency); parity was checked against "
        "the torchvision-identical reference in tests/torch_resnet.py"
    )
    torch.manual_seed(8)
    tv = randomize(torchvision.models.resnet50(weights=None), seed=9)
    reference = torch_resnet("resnet50")
    assert [(k, v.shape) for k, v in tv.state_dict().items()] == [
        (k, v.shape) for k, v in reference.state_dict().items()
    ]
    variables, arch, _ = to_flax(tv)
    assert arch == "resnet50"
    classifier = resnet.resnet50(num_classes=1000)
    embedder = resnet.resnet50(pooling="avg+max")
    forward = jax.jit(lambda v, images: (classifier.apply(v, images), embedder.apply(without_fc(v), images)))
    for shape in [(2, 3, 224, 224), (1, 3, 225, 193)]:
        x = torch.randn(*shape)
        with torch.no_grad():
            logits_ref = tv(x).numpy()
            features_ref = pooled_features(tv, x, "avg+max").numpy()
        logits, features = forward(variables, nhwc(x))
        assert np.abs(np.asarray(logits) - logits_ref).max() <= 1e-4
        assert np.abs(np.asarray(features) - features_ref).max() <= 1e-4
