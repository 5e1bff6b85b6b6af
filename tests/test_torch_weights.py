"""PyTorch state_dicts in and out, the pretrained-zoo path, and the fine-tuning helpers.

The PyTorch twins of the zoo models (tests/torch_twins.py) are written from torch.nn with
torchvision's module names (torchvision itself does not install beside the local torch): their
state_dicts, saved as .pth and .safetensors, load into convnp's zoo and give the same eval outputs
(1e-4); convnp's weights saved back load into the torch nets (strict) and give convnp's outputs there.
"""

import math
import os
import sys

import numpy as np
import pytest

from convnp.errors import ConfigError, ShapeError
from convnp.finetune import class_heads, find_head, replace_head
from convnp.models import load_pretrained
from convnp.io.torch_weights import (
    MAX_LISTED,
    load_backbone,
    load_torch_state_dict,
    read_torch_state_dict,
    save_torch_state_dict,
)
from convnp.layers.activation import ReLU
from convnp.layers.conv import Conv2d
from convnp.layers.linear import Flatten, Linear
from convnp.layers.norm import BatchNorm1d
from convnp.losses import SoftmaxCrossEntropy
from convnp.models import get_model
from convnp.nets.sequential import Sequential
from convnp.optim import SGD
from tests import torch_twins
from tests.torch_twins import skip_weight_draws


def _torch():
    return pytest.importorskip("torch", reason="torch is the test oracle; install the test extra")


# --- the torch twins (tests/torch_twins.py), torchvision's names ---------------------------------------
@pytest.fixture(scope="module")
def twins():
    """The twin builders; torch runs single-threaded meanwhile (tiny convs on a shared 2-core machine
    spend more time in thread hand-offs than in arithmetic)."""
    T = torch_twins.twins()
    threads = T.torch.get_num_threads()
    T.torch.set_num_threads(1)
    yield {
        "lenet5": T.LeNet,
        "vgg11_bn": lambda num_classes: T.VGG(torch_twins.VGG11_PLAN, True, num_classes),
        "resnet18": T.ResNet18,
        # aux heads kept, as in torchvision's weights file (in eval mode they do not run)
        "googlenet": lambda num_classes: T.GoogLeNet(num_classes, aux_logits=True),
    }
    T.torch.set_num_threads(threads)


@pytest.fixture
def cheap_init(monkeypatch):
    """The weights get overwritten by a load, or only their shapes count: skip the He draws."""
    skip_weight_draws(monkeypatch)


def _randomize_torch(torch, model, seed):
    """Random biases and batch-norm statistics (the default init has zeros/ones there)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                t.fill_(seed + 5)
            elif name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif name.endswith(("running_mean", "bias")):
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
            elif t.ndim == 1:  # BN scale
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)


def _randomize_np(net, seed):
    """New values everywhere: BN scales and variances drawn in (0.5, 1.5), every other array scaled and
    shifted by its own random scalars (cheap for VGG's 100M-weight layer)."""
    rng = np.random.default_rng(seed)
    for name, arr in net.state_dict().items():
        if arr.dtype.kind != "f":
            arr[...] = 3
        elif name.endswith("running_var") or (arr.ndim == 1 and name.endswith("weight")):
            arr[...] = rng.uniform(0.5, 1.5, arr.shape)
        else:
            arr *= arr.dtype.type(rng.uniform(0.7, 1.3))
            arr += arr.dtype.type(rng.normal(0, 0.02))


def _close(got, want, atol=1e-4):
    scale = max(1.0, float(np.abs(want).max()))
    np.testing.assert_allclose(got, want, rtol=0, atol=atol * scale)


# model -> (twin kwargs, input shape, formats read into convnp, formats written back). VGG's 129M
# weights make each file 0.5 GB, so it goes one way per format; the others go both ways in both.
BOTH = (".pth", ".safetensors")
CASES = {
    "lenet5": ({"num_classes": 10}, (1, 28, 28), BOTH, BOTH),
    "vgg11_bn": ({"num_classes": 5}, (3, 32, 32), (".pth",), (".safetensors",)),
    "resnet18": ({"num_classes": 7}, (3, 64, 64), BOTH, BOTH),
    "googlenet": ({"num_classes": 6}, (3, 64, 64), BOTH, BOTH),
}


@pytest.mark.parametrize("name", list(CASES))
def test_torch_weights_round_trip(name, twins, tmp_path, cheap_init):
    """torch -> .pth/.safetensors -> convnp (same outputs) -> .pth/.safetensors -> torch (same outputs)."""
    torch = _torch()
    from safetensors.torch import load_file, save_file

    twin_kwargs, shape, formats_in, formats_out = CASES[name]
    torch.manual_seed(0)
    ref = twins[name](**twin_kwargs).eval()
    _randomize_torch(torch, ref, seed=1)
    sd = ref.state_dict()
    x = np.random.default_rng(0).standard_normal((2, *shape)).astype(np.float32)
    with torch.no_grad():
        want = ref(torch.from_numpy(x)).numpy()

    net = None
    for suffix in formats_in:
        path = str(tmp_path / f"{name}{suffix}")
        if suffix == ".pth":
            torch.save(sd, path)
        else:
            save_file({k: v.contiguous() for k, v in sd.items()}, path)
        if net is None:
            net = load_pretrained(name, path, rng=0)  # num_classes from the file's head
        else:
            _randomize_np(net, seed=2)  # a second load must overwrite everything
            load_torch_state_dict(net, path, exclude=["aux1", "aux2"] if name == "googlenet" else ())
        _close(net.forward(x), want)
        os.remove(path)
    assert net.state_dict()[find_head(net) + ".weight"].shape[0] == twin_kwargs["num_classes"]
    tracked = [v for k, v in net.state_dict().items() if k.endswith("num_batches_tracked")]
    assert all(v.dtype == np.int64 and v.shape == () and int(v) == 6 for v in tracked)

    # back to torch: new weights in convnp, saved, loaded strictly into the torch net
    _randomize_np(net, seed=3)
    ours = net.forward(x)
    for suffix in formats_out:
        path = str(tmp_path / f"ours{suffix}")
        save_torch_state_dict(net, path)
        loaded = torch.load(path, weights_only=True) if suffix == ".pth" else load_file(path)
        assert all(v.dtype == torch.int64 and v.shape == () for k, v in loaded.items()
                   if k.endswith("num_batches_tracked"))
        assert all(v.dtype == torch.float32 for k, v in loaded.items() if not k.endswith("num_batches_tracked"))
        with torch.no_grad():
            for t in ref.state_dict().values():
                t.zero_()
        aux = {k: v for k, v in ref.state_dict().items() if k.startswith(("aux1.", "aux2."))}
        ref.load_state_dict({**aux, **loaded}, strict=True)  # convnp's googlenet here has no aux heads
        with torch.no_grad():
            _close(ref(torch.from_numpy(x)).numpy(), ours)
        del loaded
        os.remove(path)


def test_googlenet_aux_heads(twins, tmp_path):
    """torchvision's GoogLeNet file carries aux1/aux2: dropped for aux_logits=False, loaded with True."""
    torch = _torch()
    torch.manual_seed(0)
    ref = twins["googlenet"](num_classes=4).eval()
    _randomize_torch(torch, ref, seed=4)
    path = str(tmp_path / "g.pth")
    torch.save(ref.state_dict(), path)
    plain = load_pretrained("googlenet", path, rng=0)
    assert not any(k.startswith("aux") for k in plain.state_dict())
    full = load_pretrained("googlenet", path, aux_logits=True, rng=0)
    for k, v in ref.state_dict().items():
        np.testing.assert_array_equal(full.state_dict()[k], v.numpy(), err_msg=k)
    x = np.random.default_rng(1).standard_normal((1, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        _close(full.forward(x), ref(torch.from_numpy(x)).numpy())
    # a fresh head for another class count replaces all three class layers
    other = load_pretrained("googlenet", path, num_classes=9, aux_logits=True, rng=0)
    assert [(p, lay.out_features) for p, lay in class_heads(other)] == [("fc", 9), ("aux1.fc2", 9), ("aux2.fc2", 9)]
    np.testing.assert_array_equal(other.state_dict()["aux1.fc1.weight"], ref.state_dict()["aux1.fc1.weight"].numpy())


def _lenet_file(tmp_path, num_classes=10, seed=0, name="lenet.safetensors"):
    net = get_model("lenet5", num_classes=num_classes, rng=seed)
    _randomize_np(net, seed)
    path = str(tmp_path / name)
    save_torch_state_dict(net, path)
    return net, path


def test_num_classes_from_file_or_a_fresh_head(tmp_path):
    src, path = _lenet_file(tmp_path, num_classes=5)
    same = load_pretrained("lenet5", path)  # the file decides: 5 classes
    assert same.state_dict()["classifier.4.weight"].shape == (5, 84)
    for k, v in src.state_dict().items():
        np.testing.assert_array_equal(same.state_dict()[k], v)
    fresh = load_pretrained("lenet5", path, num_classes=3, rng=0)  # backbone loaded, head fresh
    assert fresh.state_dict()["classifier.4.weight"].shape == (3, 84)
    assert not np.any(fresh.state_dict()["classifier.4.bias"])
    np.testing.assert_array_equal(fresh.state_dict()["classifier.2.weight"], src.state_dict()["classifier.2.weight"])
    np.testing.assert_array_equal(fresh.state_dict()["features.0.weight"], src.state_dict()["features.0.weight"])
    # the same on a net already built for the new task
    net = get_model("lenet5", num_classes=3, rng=0)
    head = net.state_dict()["classifier.4.weight"].copy()
    assert load_backbone(net, path) == ["classifier.4"]
    np.testing.assert_array_equal(net.state_dict()["classifier.4.weight"], head)
    np.testing.assert_array_equal(net.state_dict()["classifier.2.bias"], src.state_dict()["classifier.2.bias"])
    assert load_backbone(get_model("lenet5", num_classes=5, rng=0), path) == []  # same size: all loaded


def test_state_dict_sources(tmp_path):
    torch = _torch()
    src, _ = _lenet_file(tmp_path)
    sd = src.state_dict()
    x = np.random.default_rng(0).standard_normal((2, 1, 28, 28)).astype(np.float32)
    want = src.forward(x)
    tensors = {k: torch.from_numpy(v.copy()) for k, v in sd.items()}
    sources = {
        "numpy dict": dict(sd),
        "torch dict": tensors,
        "DataParallel prefix": {f"module.{k}": v for k, v in tensors.items()},
        "checkpoint wrapper": {"epoch": 3, "state_dict": tensors},
        "float16 tensors": {k: v.half() for k, v in tensors.items()},
        "bfloat16 tensors": {k: v.bfloat16() for k, v in tensors.items()},
    }
    for what, source in sources.items():
        net = get_model("lenet5", rng=1)
        assert load_torch_state_dict(net, source) == ([], [])
        _close(net.forward(x), want, atol=1e-4 if "16" not in what else 3e-2)
    # a .pth with the checkpoint wrapper, and files whose suffix lies (the content is sniffed)
    torch.save({"model": tensors, "optimizer": {"lr": 0.1}}, tmp_path / "ckpt.pt")
    save_torch_state_dict(src, tmp_path / "really_safetensors.pth", format="safetensors")
    save_torch_state_dict(src, tmp_path / "really_torch.safetensors", format="torch")
    for fname in ("ckpt.pt", "really_safetensors.pth", "really_torch.safetensors"):
        net = get_model("lenet5", rng=1)
        load_torch_state_dict(net, tmp_path / fname)
        _close(net.forward(x), want)


def test_old_batchnorm_files_without_num_batches_tracked(tmp_path):
    bn_net = Sequential(Flatten(), BatchNorm1d(4), Linear(4, 2, rng=0))
    sd = {k: v.copy() for k, v in bn_net.state_dict().items() if not k.endswith("num_batches_tracked")}
    sd["1.running_mean"] += 0.5
    bn_net.buffers["1.num_batches_tracked"][...] = 9
    assert load_torch_state_dict(bn_net, sd) == ([], [])
    assert int(bn_net.state_dict()["1.num_batches_tracked"]) == 0  # PyTorch fills it with 0 too
    np.testing.assert_array_equal(bn_net.state_dict()["1.running_mean"], sd["1.running_mean"])


# --- errors ---------------------------------------------------------------------------------------
def test_weights_of_another_architecture(tmp_path):
    _, path = _lenet_file(tmp_path)
    net = get_model("resnet18", num_classes=10, rng=0)
    before = {k: v.copy() for k, v in net.state_dict().items()}
    with pytest.raises(ConfigError) as err:
        load_torch_state_dict(net, path)
    msg = str(err.value)
    assert "lenet.safetensors" in msg and "into Sequential" in msg
    assert "122 missing key(s): 'conv1.weight', 'bn1.weight'" in msg
    assert "10 unexpected key(s): " in msg and "'features.0.weight'" in msg
    assert f"... and {len(before) - MAX_LISTED} more" in msg  # long lists are cut, with the count
    assert "another architecture" in msg
    assert msg.count("'layer") <= MAX_LISTED
    for k, v in net.state_dict().items():  # nothing was written
        np.testing.assert_array_equal(v, before[k])
    with pytest.raises(ConfigError, match="another architecture"):
        load_pretrained("resnet18", path)
    # a close relative: resnet18's file into resnet34 lacks the extra blocks
    small = get_model("resnet18", num_classes=4, rng=0)
    save_torch_state_dict(small, tmp_path / "r18.safetensors")
    with pytest.raises(ConfigError, match=r"missing key\(s\): 'layer1.2.conv1.weight'"):
        load_pretrained("resnet34", tmp_path / "r18.safetensors")


def test_extra_keys_and_strict_false(tmp_path):
    src, _ = _lenet_file(tmp_path)
    sd = dict(src.state_dict())
    sd["extra.weight"] = np.ones(3, np.float32)
    del sd["classifier.4.bias"]
    net = get_model("lenet5", rng=1)
    with pytest.raises(ConfigError, match=r"1 missing key\(s\): 'classifier.4.bias'; "
                                          r"1 unexpected key\(s\): 'extra.weight'"):
        load_torch_state_dict(net, sd)
    missing, unexpected = load_torch_state_dict(net, sd, strict=False)
    assert (missing, unexpected) == (["classifier.4.bias"], ["extra.weight"])
    np.testing.assert_array_equal(net.state_dict()["features.0.weight"], src.state_dict()["features.0.weight"])
    # exclude: neither loaded nor required
    net2 = get_model("lenet5", rng=1)
    head = net2.state_dict()["classifier.4.weight"].copy()
    del sd["extra.weight"]
    assert load_torch_state_dict(net2, sd, exclude=["classifier.4"]) == ([], [])
    np.testing.assert_array_equal(net2.state_dict()["classifier.4.weight"], head)


def test_wrong_shapes_name_the_keys(tmp_path):
    _, path = _lenet_file(tmp_path, num_classes=10)
    net = get_model("lenet5", num_classes=5, rng=0)
    before = {k: v.copy() for k, v in net.state_dict().items()}
    with pytest.raises(ShapeError, match=r"'classifier.4.weight' is \(10, 84\) in the file, \(5, 84\) in the net"
                                         r".*load_backbone.*exclude=\['classifier.4'\].*replace_head"):
        load_torch_state_dict(net, path)
    with pytest.raises(ShapeError, match="wrong shape"):  # strict=False never hides a shape mismatch
        load_torch_state_dict(net, path, strict=False)
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_truncated_and_foreign_files(tmp_path):
    torch = _torch()
    src, st_path = _lenet_file(tmp_path)
    pth = str(tmp_path / "w.pth")
    save_torch_state_dict(src, pth)
    for path in (st_path, pth):
        with open(path, "rb") as f:
            data = f.read()
        cut = str(tmp_path / ("cut_" + os.path.basename(path)))
        with open(cut, "wb") as f:
            f.write(data[: len(data) // 2])
        with pytest.raises(ConfigError, match="truncated or corrupt"):
            load_torch_state_dict(get_model("lenet5"), cut)
    text = tmp_path / "notes.txt"
    text.write_text("not weights")
    with pytest.raises(ConfigError, match="neither a safetensors file nor a PyTorch"):
        read_torch_state_dict(text)
    with pytest.raises(ConfigError, match="does not exist"):
        read_torch_state_dict(tmp_path / "missing.pth")
    with pytest.raises(ConfigError, match="expected a path or a state_dict"):
        read_torch_state_dict(42)
    # weights_only=True refuses arbitrary pickled objects: nothing is executed
    evil = str(tmp_path / "evil.pth")
    torch.save({"w": torch.zeros(2), "obj": _Unpicklable()}, evil)
    with pytest.raises(ConfigError, match="weights_only"):
        read_torch_state_dict(evil)
    listed = str(tmp_path / "list.pth")
    torch.save([torch.zeros(2)], listed)
    with pytest.raises(ConfigError, match="expected a state_dict"):
        read_torch_state_dict(listed)
    with pytest.raises(ConfigError, match="holds no tensors"):
        read_torch_state_dict({"epoch": 1, "lr": 0.1})
    with pytest.raises(ConfigError, match="'name' is a str"):
        read_torch_state_dict({"w": np.zeros(2), "name": "zeros"})


class _Unpicklable:
    """A custom class: torch.load(weights_only=True) must refuse to rebuild it."""

    def __reduce__(self):
        return (print, ("this must never run",))


def test_without_torch(tmp_path, monkeypatch):
    src, st_path = _lenet_file(tmp_path)
    pth = str(tmp_path / "w.pth")
    save_torch_state_dict(src, pth)
    monkeypatch.setitem(sys.modules, "torch", None)  # as if PyTorch were not installed
    net = get_model("lenet5", rng=1)
    load_torch_state_dict(net, st_path)  # safetensors needs no torch
    np.testing.assert_array_equal(net.state_dict()["features.0.weight"], src.state_dict()["features.0.weight"])
    with pytest.raises(ConfigError, match="needs PyTorch.*safetensors"):
        load_torch_state_dict(net, pth)
    with pytest.raises(ConfigError, match="needs PyTorch.*save to a .safetensors path"):
        save_torch_state_dict(net, tmp_path / "out.pth")
    save_torch_state_dict(net, tmp_path / "out.safetensors")


def test_save_is_atomic_and_checks_arguments(tmp_path):
    net = get_model("lenet5", rng=0)
    out = save_torch_state_dict(net, tmp_path / "w.safetensors")
    assert os.listdir(tmp_path) == ["w.safetensors"] and out.endswith("w.safetensors")
    with pytest.raises(ConfigError, match="format must be"):
        save_torch_state_dict(net, tmp_path / "w.bin", format="onnx")
    with pytest.raises(ConfigError, match="does not exist"):
        save_torch_state_dict(net, tmp_path / "nope" / "w.safetensors")
    with pytest.raises(ConfigError, match="has no parameters"):
        save_torch_state_dict(Sequential(ReLU()), tmp_path / "r.safetensors")


# --- fine-tuning -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name, head, in_features", [
    ("lenet5", "classifier.4", 84), ("alexnet", "classifier.6", 4096), ("vgg11_bn", "classifier.6", 4096),
    ("resnet18", "fc", 512), ("resnet50", "fc", 2048), ("googlenet", "fc", 1024), ("resnet20", "fc", 64),
    ("cifar_convnet", "18", 256),
])
def test_replace_head_on_zoo_models(name, head, in_features, cheap_init):
    net = get_model(name)
    assert find_head(net) == head
    before = set(net.state_dict())
    new = replace_head(net, 3, rng=0)
    assert isinstance(new, Linear) and (new.in_features, new.out_features) == (in_features, 3)
    assert net.state_dict()[f"{head}.weight"].shape == (3, in_features)
    assert set(net.state_dict()) == before  # same names: saves and loads as before
    assert net.output_shape(net.input_shape) == (3,)
    w = net.state_dict()[f"{head}.weight"]
    assert abs(float(w.std()) - 0.01) < 0.003 and not net.state_dict()[f"{head}.bias"].any()


def test_replace_head_he_init_and_seed():
    net = get_model("lenet5", rng=0)
    replace_head(net, 50, rng=0, std=None)  # He: N(0, 2/84)
    assert abs(float(net.state_dict()["classifier.4.weight"].std()) - math.sqrt(2 / 84)) < 0.02
    a, b = get_model("lenet5", rng=0), get_model("lenet5", rng=0)
    replace_head(a, 4, rng=7)
    replace_head(b, 4, rng=7)
    np.testing.assert_array_equal(a.state_dict()["classifier.4.weight"], b.state_dict()["classifier.4.weight"])
    with pytest.raises(ConfigError, match="std must be a positive number"):
        replace_head(a, 4, std=0)


def test_replace_head_errors():
    with pytest.raises(ConfigError, match="no Linear layer"):
        replace_head(Sequential(Conv2d(1, 2, 3)), 3)
    with pytest.raises(ConfigError, match="followed by '2'"):
        find_head(Sequential(Flatten(), Linear(4, 3), BatchNorm1d(3)))
    net = get_model("lenet5", rng=0)
    with pytest.raises(ConfigError, match="positive int"):
        replace_head(net, 0)
    with pytest.raises(ConfigError, match="is a Conv2d, not a Linear"):
        replace_head(net, 3, head="features.0")
    with pytest.raises(ConfigError, match="has no child 'fc'"):
        replace_head(net, 3, head="fc")
    with pytest.raises(ConfigError, match="expected a net"):
        find_head(Linear(3, 2))


def test_frozen_prefix_and_group_lr_on_a_zoo_net():
    """The optimizer's frozen= and param_groups select a zoo net's parameters by name prefix."""
    net = get_model("lenet5", num_classes=4, rng=0)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((8, 1, 28, 28)).astype(np.float32), rng.integers(0, 4, 8)
    loss = SoftmaxCrossEntropy()
    cases = [(SGD(lr=0.1, momentum=0.9, frozen=["features"]), ("features",)),
             (SGD(lr=0.1, param_groups=[{"params": ["features", "classifier.0"], "lr": 0.0}]),
              ("features", "classifier.0"))]
    for opt, fixed in cases:
        start = {k: v.copy() for k, v in net.named_parameters().items()}
        for _ in range(3):
            _, d = loss(net.forward(x, train=True), y)
            net.backward(d)
            opt.step(net.named_parameters(), net.named_grads())
        for k, v in net.named_parameters().items():
            if k.startswith(fixed):
                np.testing.assert_array_equal(v, start[k], err_msg=k)
            else:
                assert not np.array_equal(v, start[k]), k


def _digits(split, classes):
    from convnp.data.datasets import load_dataset

    ds = load_dataset("digits", split)
    keep = np.isin(ds.y, classes)
    return np.ascontiguousarray(ds.x[keep]), (ds.y[keep] - min(classes)).astype(np.int64)


def _train(net, opt, x, y, epochs, seed):
    loss = SoftmaxCrossEntropy()
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        order = rng.permutation(len(x))
        for i in range(0, len(x), 32):
            idx = order[i:i + 32]
            _, d = loss(net.forward(x[idx], train=True), y[idx])
            net.backward(d)
            opt.step(net.named_parameters(), net.named_grads())


def _accuracy(net, x, y):
    return float(np.mean(np.argmax(net.forward(x), axis=1) == y))


def test_fine_tune_digits_with_frozen_features(tmp_path):
    """Pretrain the notes' 3-layer ConvNet on digits 0-4 (8x8), save it as a PyTorch-style file, load it
    for digits 5-9 with a fresh head and the conv layer frozen: a short fine-tune lifts the test
    accuracy from chance to over 85%, and the frozen weights do not move."""
    pytest.importorskip("sklearn", reason="the digits dataset comes with scikit-learn")
    xa, ya = _digits("train", [0, 1, 2, 3, 4])
    xb, yb = _digits("train", [5, 6, 7, 8, 9])
    xb_test, yb_test = _digits("test", [5, 6, 7, 8, 9])
    small = {"input_size": 8, "in_channels": 1, "filters": 16, "hidden": 64}
    pre = get_model("cs231n_3layer", num_classes=5, rng=0, **small)
    _train(pre, SGD(lr=0.05, momentum=0.9), xa, ya, epochs=3, seed=0)
    path = save_torch_state_dict(pre, tmp_path / "digits04.safetensors")

    net = load_pretrained("cs231n_3layer", path, rng=1, **small)
    assert find_head(net) == "6"
    replace_head(net, 5, rng=1)  # digits 5-9: as many classes as before, but a new task
    conv = {k: v.copy() for k, v in net.named_parameters().items() if k.startswith("0.")}
    np.testing.assert_array_equal(conv["0.weight"], pre.named_parameters()["0.weight"])
    before = _accuracy(net, xb_test, yb_test)
    _train(net, SGD(lr=0.03, momentum=0.9, frozen=["0"]), xb, yb, epochs=2, seed=1)
    after = _accuracy(net, xb_test, yb_test)
    for k, v in conv.items():
        np.testing.assert_array_equal(net.named_parameters()[k], v, err_msg=k)
    assert before < 0.45, before
    assert after > 0.85, after
