"""torchvision -> Flax weight conversion, checkpoint files, loading and merging."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import traverse_util
from tests.torch_resnet import pooled_features, randomize, torch_resnet

from probdml.models import convert, resnet
from probdml.models.heads import SemanticHead

ARCHS = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def meta_state_dict(arch: str, num_classes: int = 1000) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        return torch_resnet(arch, num_classes).state_dict()


def numpy_state(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def r18():
    torch.manual_seed(0)
    return randomize(torch_resnet("resnet18", num_classes=7), seed=1)


@pytest.mark.parametrize("arch", ARCHS)
def test_expected_keys_and_shapes_match_torchvision_layout(arch):
    """The converter's key table is the reference state dict (order and shapes), and maps
    one-to-one onto the Flax model's variables with transposed layouts."""
    state = meta_state_dict(arch, num_classes=11)
    reference = [(k, tuple(v.shape)) for k, v in state.items() if not k.endswith("num_batches_tracked")]
    assert list(convert.torch_state_shapes(arch, 11).items()) == reference
    assert convert.infer_arch(state) == arch

    variables = jax.eval_shape(resnet.resnet(arch, num_classes=11).init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    flat = {k: v.shape for k, v in traverse_util.flatten_dict(variables).items()}
    mapped = {convert.flax_path(k): shape for k, shape in reference}
    assert mapped.keys() == flat.keys()
    for path, shape in mapped.items():
        layout = {4: (2, 3, 1, 0), 2: (1, 0), 1: (0,)}[len(shape)]
        assert flat[path] == tuple(shape[i] for i in layout), path


def test_known_paths():
    """A few hand-written torchvision -> probdml names."""
    assert convert.flax_path("conv1.weight") == ("params", "conv1", "kernel")
    assert convert.flax_path("bn1.running_var") == ("batch_stats", "bn1", "var")
    assert convert.flax_path("layer3.4.conv2.weight") == ("params", "layer3_4", "conv2", "kernel")
    assert convert.flax_path("layer2.0.downsample.0.weight") == ("params", "layer2_0", "downsample_conv", "kernel")
    assert convert.flax_path("layer2.0.downsample.1.weight") == ("params", "layer2_0", "downsample_bn", "scale")
    assert convert.flax_path("layer4.1.bn2.running_mean") == ("batch_stats", "layer4_1", "bn2", "mean")
    assert convert.flax_path("fc.weight") == ("params", "fc", "kernel")


def test_converted_values(r18):
    sd = numpy_state(r18)
    variables, arch, num_classes = convert.convert_state_dict(sd)
    assert (arch, num_classes) == ("resnet18", 7)
    p, s = variables["params"], variables["batch_stats"]
    np.testing.assert_array_equal(p["conv1"]["kernel"][2, 5, 1, 40], sd["conv1.weight"][40, 1, 2, 5])
    np.testing.assert_array_equal(
        p["layer3_0"]["downsample_conv"]["kernel"][0, 0], sd["layer3.0.downsample.0.weight"][:, :, 0, 0].T
    )
    np.testing.assert_array_equal(p["layer3_0"]["downsample_bn"]["scale"], sd["layer3.0.downsample.1.weight"])
    np.testing.assert_array_equal(s["layer4_1"]["bn2"]["var"], sd["layer4.1.bn2.running_var"])
    np.testing.assert_array_equal(p["fc"]["kernel"], sd["fc.weight"].T)
    np.testing.assert_array_equal(p["fc"]["bias"], sd["fc.bias"])
    assert all(a.dtype == np.float32 for a in jax.tree.leaves(variables))


def test_infer_arch_rejects_unknown_layouts():
    state = {k: v for k, v in meta_state_dict("resnet18").items() if not k.startswith("layer4.1.")}
    with pytest.raises(ValueError, match=r"basic blocks per stage \(2, 2, 2, 1\)"):
        convert.infer_arch(state)
    with pytest.raises(ValueError, match="unknown architecture 'vgg16'"):
        convert.torch_state_shapes("vgg16")


def test_missing_misshaped_and_unexpected_parameters(r18):
    sd = numpy_state(r18)
    missing = {k: v for k, v in sd.items() if k not in ("layer2.1.bn1.running_var", "layer4.0.conv1.weight")}
    with pytest.raises(ValueError, match=r"missing parameter 'layer2\.1\.bn1\.running_var'"):
        convert.convert_state_dict(missing)
    bad = dict(sd, **{"layer3.0.conv2.weight": np.zeros((256, 256, 3, 1), np.float32)})
    message = r"'layer3\.0\.conv2\.weight' has shape \(256, 256, 3, 1\), expected \(256, 256, 3, 3\)"
    with pytest.raises(ValueError, match=message):
        convert.convert_state_dict(bad)
    with pytest.raises(ValueError, match=r"unexpected parameter 'layer1\.0\.se\.weight'"):
        convert.convert_state_dict(dict(sd, **{"layer1.0.se.weight": np.zeros(3, np.float32)}))
    with pytest.raises(ValueError, match=r"missing parameter 'fc\.bias'"):
        convert.convert_state_dict({k: v for k, v in sd.items() if k != "fc.bias"})
    message = r"'layer1\.0\.conv1\.weight' has shape \(64, 64, 3, 3\), expected \(64, 64, 1, 1\) for resnet50"
    with pytest.raises(ValueError, match=message):
        convert.convert_state_dict(sd, arch="resnet50")


def test_headless_prefixed_wrapped_and_cadene_state_dicts(r18, tmp_path):
    sd = numpy_state(r18)
    headless = {k: v for k, v in sd.items() if not k.startswith("fc.")}
    variables, _, num_classes = convert.convert_state_dict(headless)
    assert num_classes is None and "fc" not in variables["params"]
    cadene = {k.replace("fc.", "last_linear."): v for k, v in sd.items()}
    variables, _, num_classes = convert.convert_state_dict(cadene)
    np.testing.assert_array_equal(variables["params"]["fc"]["kernel"], sd["fc.weight"].T)

    path = str(tmp_path / "checkpoint.pth")
    torch.save({"state_dict": {"module." + k: v for k, v in r18.state_dict().items()}, "epoch": 3}, path)
    loaded = convert.read_state_dict(path, prefix="module.")
    assert loaded.keys() == sd.keys()
    np.testing.assert_array_equal(loaded["layer1.1.conv2.weight"], sd["layer1.1.conv2.weight"])


def test_pth_and_safetensors_round_trips(r18, tmp_path):
    from safetensors.torch import save_file

    pth, st = str(tmp_path / "r18.pth"), str(tmp_path / "r18.safetensors")
    torch.save(r18.state_dict(), pth)
    save_file(r18.state_dict(), st)
    expected, _, _ = convert.convert_state_dict(numpy_state(r18))
    for source in (pth, st):
        out = str(tmp_path / ("out_" + os.path.basename(source).replace(".", "_")))
        metadata = convert.convert_file(source, out)
        with open(source, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        assert metadata == {
            "format": "probdml-resnet",
            "version": 1,
            "arch": "resnet18",
            "num_classes": 7,
            "source": os.path.basename(source),
            "sha256": digest,
        }
        loaded = convert.load_pretrained(out, arch="resnet18")
        assert jax.tree.structure(loaded) == jax.tree.structure(expected)
        jax.tree.map(np.testing.assert_array_equal, loaded, expected)
        assert all(isinstance(a, np.ndarray) and a.dtype == np.float32 for a in jax.tree.leaves(loaded))
    with pytest.raises(ValueError, match="holds resnet18 weights, but the model is resnet50"):
        convert.load_pretrained(out, arch="resnet50")


def test_loading_never_unpickles_arbitrary_objects(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"conv1.weight": Payload()}, f, protocol=2)
    with pytest.raises(pickle.UnpicklingError):
        convert.read_state_dict(str(path))
    assert not marker.exists()


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="weight file not found"):
        convert.read_state_dict(str(tmp_path / "absent.pth"))
    npz = tmp_path / "weights.npz"
    np.savez(npz, a=np.zeros(2))
    with pytest.raises(ValueError, match=r"unsupported weight file; use \.pth, \.pt, \.bin or \.safetensors"):
        convert.read_state_dict(str(npz))
    notdict = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], notdict)
    with pytest.raises(ValueError, match="expected a state dict"):
        convert.read_state_dict(str(notdict))
    with pytest.raises(FileNotFoundError, match="is not a converted checkpoint"):
        convert.load_pretrained(str(tmp_path))


class Embedder(nn.Module):
    """A DML-style model: ResNet backbone (avg+max pooling) under "backbone", then a head."""

    arch: str = "resnet18"

    @nn.compact
    def __call__(self, x, train: bool = False):
        h = resnet.resnet(self.arch, pooling="avg+max", frozen_bn_stats=True, name="backbone")(x, train)
        return h, SemanticHead(16, name="head")(h)


@pytest.fixture(scope="module")
def embedder_variables():
    return jax.eval_shape(Embedder().init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))


def test_merge_into_fresh_model(r18, tmp_path):
    """Converted file -> load_pretrained -> merge -> the model reproduces the torch features."""
    path = str(tmp_path / "r18.safetensors")
    from safetensors.torch import save_file

    save_file(r18.state_dict(), path)
    convert.convert_file(path, str(tmp_path / "ckpt"))
    pretrained = convert.load_pretrained(str(tmp_path / "ckpt"))
    model = Embedder()
    # Shapes of every variable, real values for the head (initialising the whole network
    # would compile every initialiser, which is slow on CPU and irrelevant here).
    fresh = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    fresh["params"]["head"] = SemanticHead(16).init(jax.random.key(1), jnp.zeros((1, 512)))["params"]
    merged = convert.merge_pretrained(fresh, pretrained, at="backbone")
    jax.tree.map(np.testing.assert_array_equal, merged["params"]["head"], fresh["params"]["head"])
    assert "fc" not in merged["params"]["backbone"]
    x = torch.randn(2, 3, 41, 37, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = pooled_features(r18, x, "avg+max").numpy()
    h, _ = jax.jit(model.apply)(merged, x.numpy().transpose(0, 2, 3, 1))
    assert np.abs(np.asarray(h) - ref).max() <= 1e-4


def test_merge_names_first_missing_or_misshaped_parameter(r18, embedder_variables):
    pretrained, _, _ = convert.convert_state_dict(numpy_state(r18))
    flat = traverse_util.flatten_dict(pretrained)
    del flat[("batch_stats", "layer3_1", "bn2", "mean")]
    del flat[("params", "layer4_0", "conv1", "kernel")]
    message = r"lacks parameter 'params/layer4_0/conv1/kernel' \(needed for 'params/backbone/layer4_0/conv1/kernel'\)"
    with pytest.raises(ValueError, match=message):
        convert.merge_pretrained(embedder_variables, traverse_util.unflatten_dict(flat), at="backbone")
    flat = traverse_util.flatten_dict(pretrained)
    flat[("params", "layer2_1", "bn1", "scale")] = np.ones(64, np.float32)
    message = (
        r"'params/layer2_1/bn1/scale' has shape \(64,\), "
        r"but the model's 'params/backbone/layer2_1/bn1/scale' has shape \(128,\)"
    )
    with pytest.raises(ValueError, match=message):
        convert.merge_pretrained(embedder_variables, traverse_util.unflatten_dict(flat), at="backbone")
    with pytest.raises(ValueError, match="model variables have no module 'params/encoder'"):
        convert.merge_pretrained(embedder_variables, pretrained, at="encoder")


def test_merge_rejects_another_architecture(embedder_variables):
    r34 = {k: v for k, v in traverse_util.flatten_dict(
        jax.eval_shape(resnet.resnet34().init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    ).items()}
    pretrained = traverse_util.unflatten_dict({k: np.zeros(v.shape, np.float32) for k, v in r34.items()})
    with pytest.raises(ValueError, match=r"'params/layer1_2/bn1/bias' has no place in the model"):
        convert.merge_pretrained(embedder_variables, pretrained, at="backbone")
    r50 = traverse_util.flatten_dict(
        jax.eval_shape(resnet.resnet50().init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    )
    pretrained = traverse_util.unflatten_dict({k: np.zeros(v.shape, np.float32) for k, v in r50.items()})
    with pytest.raises(ValueError, match=r"'params/layer1_0/conv1/kernel' has shape \(1, 1, 64, 64\)"):
        convert.merge_pretrained(embedder_variables, pretrained, at="backbone")


def test_merge_reports_in_natural_order():
    """With layer3_9 and layer3_10 missing, the error names layer3_9 (not lexicographic)."""
    target = jax.eval_shape(resnet.resnet101().init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    flat = {k: np.zeros(v.shape, np.float32) for k, v in traverse_util.flatten_dict(target).items()}
    del flat[("params", "layer3_10", "conv2", "kernel")]
    del flat[("params", "layer3_9", "conv3", "kernel")]
    with pytest.raises(ValueError, match=r"lacks parameter 'params/layer3_9/conv3/kernel'"):
        convert.merge_pretrained(target, traverse_util.unflatten_dict(flat))
    flat[("params", "layer3_9", "conv3", "kernel")] = np.zeros((1, 1, 256, 1024), np.float32)
    flat[("params", "layer3_10", "conv2", "kernel")] = np.zeros((3, 3, 256, 256), np.float32)
    merged = convert.merge_pretrained(target, traverse_util.unflatten_dict(flat))
    assert jax.tree.structure(merged) == jax.tree.structure(target)


def test_command_line(r18, tmp_path):
    from safetensors.torch import save_file

    source = str(tmp_path / "r18.safetensors")
    save_file(r18.state_dict(), source)
    out = str(tmp_path / "converted")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run(
        [sys.executable, "-m", "probdml.models.convert", f"--torch={source}", f"--out={out}"],
        capture_output=True, text=True, env=env, cwd=ROOT, check=False,
    )
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed["arch"] == "resnet18" and printed["out"] == out
    assert convert.read_metadata(out)["num_classes"] == 7
    result = subprocess.run(
        [sys.executable, "-m", "probdml.models.convert", f"--torch={source}"],
        capture_output=True, text=True, env=env, cwd=ROOT, check=False,
    )
    assert result.returncode != 0 and "--out" in result.stderr
