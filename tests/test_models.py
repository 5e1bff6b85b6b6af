"""The model zoo: parameter counts, shapes, torchvision names, and equality with PyTorch nets.

The PyTorch reference nets (tests/torch_twins.py) are written with torch.nn only (torchvision is
not a dependency), mirroring torchvision's module names. Their weights (and randomised BatchNorm
statistics) are loaded into ours with our strict ``load_state_dict``, which also checks that our
state names are exactly torchvision's.
"""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from convnp.errors import ConfigError, ShapeError, StateError
from convnp.layers.base import layer_from_config, layer_to_config
from convnp.notation.spec import to_spec
from convnp.models import (
    AdaptiveAvgPool2d,
    AuxSequential,
    ZeroPadShortcut,
    get_model,
    list_models,
    model_info,
)
from convnp.nets.blocks import Bottleneck
from tests.gradcheck import check_layer_gradients
from tests.torch_twins import skip_weight_draws, twins

ALL_MODELS = ["lenet5", "cs231n_3layer", "cifar_convnet", "cifar_fast", "alexnet", "alexnet_v1", "zfnet",
              "vgg11", "vgg13", "vgg16", "vgg19", "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn", "googlenet",
              "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnet20", "resnet32", "resnet44",
              "resnet56"]

# Parameter counts at the models' default classes (1000 for ImageNet nets, 10 for MNIST/CIFAR ones).
PARAMS = {
    # torchvision's published numbers
    "alexnet": 61_100_840,
    "vgg11": 132_863_336, "vgg13": 133_047_848, "vgg16": 138_357_544, "vgg19": 143_667_240,
    "vgg11_bn": 132_868_840, "vgg13_bn": 133_053_736, "vgg16_bn": 138_365_992, "vgg19_bn": 143_678_248,
    "googlenet": 6_624_904,
    "resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032, "resnet101": 44_549_160,
    "resnet152": 60_192_808,
    # LeNet-5: conv1 1*6*25+6 = 156, conv2 6*16*25+16 = 2,416, fc 400*120+120 = 48,120,
    # fc 120*84+84 = 10,164, fc 84*10+10 = 850; total 61,706
    "lenet5": 61_706,
    # CONV7-32: 3*32*49+32 = 4,736; FC-100: (16*16*32)*100+100 = 819,300; FC-10: 1,010; total 825,046
    "cs231n_3layer": 825_046,
    # convs (9*Cin+1)*Cout: 896 + 9,248 + 18,496 + 36,928 + 73,856 + 147,584 = 287,008;
    # FC-256: 2048*256+256 = 524,544; FC-10: 2,570; total 814,122
    "cifar_convnet": 814_122,
    # whitening conv 3*24*4+24 = 312; 3x3 convs (no bias) 24*64*9 = 13,824, 64*64*9 = 36,864,
    # 64*128*9 = 73,728, 3 * 128*128*9 = 442,368; BNs 2*(64+64+128+128+128+128) = 1,280;
    # FC-10 without bias 128*10 = 1,280; total 569,656
    "cifar_fast": 569_656,
    # AlexNet 2012, single tower: conv1 3*96*121+96 = 34,944; conv2 96*256*25+256 = 614,656;
    # conv3 256*384*9+384 = 885,120; conv4 384*384*9+384 = 1,327,488; conv5 384*256*9+256 = 884,992
    # (convs 3,747,200); fc6 9216*4096+4096 = 37,752,832; fc7 4096*4096+4096 = 16,781,312;
    # fc8 4096*1000+1000 = 4,097,000 (fcs 58,631,144); total 62,378,344
    "alexnet_v1": 62_378_344,
    # ZF Net: conv1 3*96*49+96 = 14,208; conv2..5 and the FCs as alexnet_v1:
    # 614,656 + 885,120 + 1,327,488 + 884,992 + 58,631,144; total 62,357,608
    "zfnet": 62_357_608,
    # CIFAR ResNet-20, option A: conv1 432 + bn 32 = 464; stage 1: 3 blocks * 2 * (2,304 + 32) = 14,016;
    # stage 2: (4,608+64) + (9,216+64) + 4 * (9,216+64) = 51,072; stage 3: (18,432+128) + (36,864+128)
    # + 4 * (36,864+128) = 203,520; fc 64*10+10 = 650; total 269,722 (the paper's "0.27M")
    "resnet20": 269_722,
    # each extra block per stage adds 2*(2,336) + 2*(9,280) + 2*(36,992) = 97,216 (three stages):
    # resnet32 (n=5) = 269,722 + 2*97,216; resnet44 (n=7) + 4*97,216; resnet56 (n=9) + 6*97,216
    "resnet32": 464_154, "resnet44": 658_586, "resnet56": 853_018,
}

IMAGENET = {"alexnet", "vgg11", "vgg13", "vgg16", "vgg19", "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn",
            "googlenet", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "alexnet_v1", "zfnet"}


@pytest.fixture
def cheap_init(monkeypatch):
    """Counting parameters needs their shapes, not their values: skip the random draws."""
    skip_weight_draws(monkeypatch)


def _x(shape, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _randomize_bn(net, seed=1):
    """Non-trivial BatchNorm statistics and affine params, so eval-mode BN is really tested."""
    rng = np.random.default_rng(seed)
    for _, layer in net.named_modules():
        if type(layer).__name__.startswith("BatchNorm"):
            c = layer.num_features
            layer.buffers["running_mean"][...] = rng.normal(0, 0.1, c)
            layer.buffers["running_var"][...] = rng.uniform(0.5, 1.5, c)
            layer.params["weight"][...] = rng.uniform(0.5, 1.5, c)
            layer.params["bias"][...] = rng.normal(0, 0.1, c)


# --- registry -------------------------------------------------------------------------------------
def test_list_models_names_and_order():
    assert list_models() == ALL_MODELS
    assert list_models("resnet") == ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]
    assert list_models("resnet_cifar") == ["resnet20", "resnet32", "resnet44", "resnet56"]
    with pytest.raises(ConfigError, match="unknown family"):
        list_models("transformer")


def test_get_model_errors():
    with pytest.raises(ConfigError, match="did you mean 'resnet18'"):
        get_model("resnet-18")
    with pytest.raises(ConfigError, match="unknown option.*'depth'"):
        get_model("lenet5", depth=3)
    with pytest.raises(ConfigError, match="num_classes"):
        get_model("lenet5", num_classes=0)
    with pytest.raises(ConfigError, match="input_size"):
        get_model("lenet5", input_size=30)
    with pytest.raises(ConfigError, match="shortcut"):
        get_model("resnet20", shortcut="C")
    with pytest.raises(ConfigError, match="dropout"):
        get_model("cifar_convnet", dropout=1.5)
    with pytest.raises(ConfigError, match="aux_logits"):
        get_model("googlenet", aux_logits="yes")
    assert set(model_info("googlenet").options) == {"aux_logits", "dropout", "dropout_aux", "in_channels"}


@pytest.mark.parametrize("name", ALL_MODELS)
def test_param_count_and_default_shape(name, cheap_init):
    info = model_info(name)
    net = get_model(name)
    assert net.num_params == PARAMS[name]
    assert sum(p.size for p in net.named_parameters().values()) == PARAMS[name]
    assert net.input_shape == info.input_shape
    classes = 1000 if name in IMAGENET else 10
    assert info.num_classes == classes
    assert net.output_shape(net.input_shape) == (classes,)
    assert get_model(name, num_classes=7).output_shape(info.input_shape) == (7,)


def test_param_counts_of_options(cheap_init):
    # torchvision's GoogLeNet with aux heads: aux1 (512 in) 65,536 + 256 + 2,098,176 + 1,025,000 = 3,188,968;
    # aux2 (528 in) 67,584 + 256 + 2,098,176 + 1,025,000 = 3,191,016; 6,624,904 + both = 13,004,888
    assert get_model("googlenet", aux_logits=True).num_params == 13_004_888
    # option B adds two 1x1 projections + BN: 16*32 + 64 = 576 and 32*64 + 128 = 2,176
    assert get_model("resnet20", shortcut="B").num_params == 269_722 + 576 + 2_176
    # BN recipe: convs without bias 286,560, six BN 2*(2*32 + 2*64 + 2*128) = 896, FC-256 no bias 524,288,
    # BN1d 512, FC-10 2,570; total 814,826
    assert get_model("cifar_convnet", batch_norm=True).num_params == 814_826
    assert get_model("lenet5", input_size=32).num_params == 61_706
    assert get_model("resnet18", in_channels=1).num_params == 11_689_512 - 2 * 64 * 49


def test_paper_sizes(cheap_init):
    """The volumes the papers print, layer by layer."""
    def sizes(net):
        return [shape[1] for _, layer, shape in net.features.shapes(net.input_shape)
                if type(layer).__name__ in ("Conv2d", "MaxPool2d")]
    assert sizes(get_model("alexnet_v1")) == [55, 27, 27, 13, 13, 13, 13, 6]
    assert sizes(get_model("zfnet")) == [110, 55, 26, 13, 13, 13, 13, 6]
    assert sizes(get_model("alexnet")) == [55, 27, 27, 13, 13, 13, 13, 6]
    assert [s[1] for _, _, s in get_model("lenet5").features.shapes((1, 28, 28))] == [28, 28, 14, 10, 10, 5]
    net = get_model("resnet18")
    assert [s for n, _, s in net.shapes() if n.startswith("layer")] == [
        (64, 56, 56), (128, 28, 28), (256, 14, 14), (512, 7, 7)]
    gnet = get_model("googlenet")
    assert [s for n, _, s in gnet.shapes() if n.startswith("maxpool") or n == "inception5b"] == [
        (64, 56, 56), (192, 28, 28), (480, 14, 14), (832, 7, 7), (1024, 7, 7)]
    with pytest.raises(ShapeError, match="not an integer"):  # the paper's net needs 227, not 224
        get_model("alexnet_v1").output_shape((3, 224, 224))


def test_torchvision_state_names(cheap_init):
    sd = get_model("resnet18").state_dict()
    assert len(sd) == 122  # torchvision's resnet18 state_dict: 62 params + 60 BN buffers
    for key in ("conv1.weight", "bn1.num_batches_tracked", "layer1.0.conv1.weight", "layer2.0.downsample.0.weight",
                "layer2.0.downsample.1.running_var", "layer4.1.bn2.bias", "fc.weight", "fc.bias"):
        assert key in sd, key
    assert "layer1.0.downsample.0.weight" not in sd
    sd = get_model("resnet50").state_dict()
    assert sd["layer1.0.conv2.weight"].shape == (64, 64, 3, 3)
    assert sd["layer2.0.downsample.0.weight"].shape == (512, 256, 1, 1)
    assert len(sd) == 320  # torchvision's resnet50: 161 params + 159 BN buffers
    vgg = get_model("vgg16").named_parameters()
    assert [k for k in vgg if k.startswith("classifier")] == [
        "classifier.0.weight", "classifier.0.bias", "classifier.3.weight", "classifier.3.bias",
        "classifier.6.weight", "classifier.6.bias"]
    assert "features.28.weight" in vgg and vgg["features.28.weight"].shape == (512, 512, 3, 3)
    assert "features.40.weight" in get_model("vgg16_bn").named_parameters()
    assert list(get_model("alexnet").named_parameters())[:2] == ["features.0.weight", "features.0.bias"]
    g = get_model("googlenet", aux_logits=True).state_dict()
    for key in ("conv1.conv.weight", "conv1.bn.running_var", "inception3a.branch1.conv.weight",
                "inception3a.branch2.1.bn.weight", "inception4e.branch3.1.conv.weight",
                "inception5b.branch4.1.conv.weight", "aux1.conv.conv.weight", "aux2.fc1.weight", "aux2.fc2.bias",
                "fc.weight"):
        assert key in g, key
    assert g["inception3a.branch3.1.conv.weight"].shape == (32, 16, 3, 3)  # torchvision's 3x3, not 5x5
    assert "conv1.conv.bias" not in g


# --- PyTorch reference nets (tests/torch_twins.py) ---------------------------------------------------
@pytest.fixture(scope="module")
def T():
    return twins()


def _sync(T, ours, theirs, seed=1):
    """Randomise the torch net's BatchNorm statistics and affine params, then load its state into
    ours. Our strict load_state_dict checks the names are the same set: torchvision's."""
    torch = T.torch
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in theirs.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(c, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(c, generator=gen) * 0.1)
    assert set(theirs.state_dict()) == set(ours.state_dict())
    ours.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()})


def _compare(T, ours, theirs, x, train, grads=(), atol=1e-4, seed=3):
    """Forward (and with ``grads`` the input and named parameter gradients) within atol, relative to scale."""
    theirs.train(train)
    theirs.zero_grad(set_to_none=True)
    xt = T.torch.tensor(x, requires_grad=True)
    out_t = theirs(xt)
    out = ours.forward(x, train=train)
    outs, outs_t = (out, out_t) if isinstance(out, tuple) else ((out,), (out_t,))
    assert len(outs) == len(outs_t)
    for o, ot in zip(outs, outs_t):
        ot = ot.detach().numpy()
        assert o.shape == ot.shape
        scale = max(1.0, float(np.abs(ot).max()))
        np.testing.assert_allclose(o, ot, rtol=0, atol=atol * scale)
    if not grads:
        return
    rng = np.random.default_rng(seed)
    douts = [rng.standard_normal(o.shape).astype(o.dtype) for o in outs]
    T.torch.autograd.backward([ot for ot in outs_t], [T.torch.from_numpy(d) for d in douts])
    dx = ours.backward(tuple(douts) if isinstance(out, tuple) else douts[0])
    expected = {"input": (dx, xt.grad.numpy())}
    named_t = dict(theirs.named_parameters())
    for key in grads:
        expected[key] = (ours.named_grads()[key], named_t[key].grad.numpy())
    for key, (a, b) in expected.items():
        scale = max(1e-3, float(np.abs(b).max()))
        np.testing.assert_allclose(a, b, rtol=0, atol=atol * scale, err_msg=key)


# Gradients are compared in float64: in float32 a pre-activation within ~1e-6 of zero can land on
# the other side of a ReLU in one implementation (it happens in resnet20 at seed 0: one unit of
# layer2.2.relu1 at 1.2e-6), which changes that unit's gradient outright. Forward-only checks run
# in float32, where such a flip moves the output by ~1e-6.

def test_lenet5_matches_torch(T):
    net = get_model("lenet5", rng=0, dtype="float64")
    ref = T.LeNet().double()
    _sync(T, net, ref)
    _compare(T, net, ref, _x((2, 1, 28, 28), dtype=np.float64), train=True, grads=list(net.named_parameters()),
             atol=1e-9)
    # float32 forward too
    net32, ref32 = get_model("lenet5", rng=0), T.LeNet()
    _sync(T, net32, ref32)
    _compare(T, net32, ref32, _x((2, 1, 28, 28)), train=False, atol=1e-5)


def test_alexnet_matches_torch_at_64(T, cheap_init):
    # 64x64: conv1 (64-11+4)/4+1 = 15.25 -> 15 (floor), pools 7, 3, 1; the adaptive pool spreads 1x1 to 6x6
    net = get_model("alexnet", num_classes=5)
    ref = T.AlexNet(5)
    _sync(T, net, ref)
    _compare(T, net, ref, _x((2, 3, 64, 64)), train=False)


def test_vgg11_bn_matches_torch_at_32(T, cheap_init):
    # 32x32: five pools give 1x1x512, which the adaptive pool repeats to 7x7 before the 25088-input FC
    from tests.torch_twins import VGG11_PLAN   # written out independently of convnp's own table
    net = get_model("vgg11_bn", num_classes=4)
    ref = T.VGG(VGG11_PLAN, True, 4)
    _sync(T, net, ref)
    _compare(T, net, ref, _x((2, 3, 32, 32)), train=False)


def test_resnet18_matches_torch_at_64(T):
    net = get_model("resnet18", num_classes=6, rng=0, dtype="float64")
    ref = T.ResNet18(6).double()
    _sync(T, net, ref)
    x = _x((2, 3, 64, 64), dtype=np.float64)
    _compare(T, net, ref, x, train=False, grads=["conv1.weight", "layer2.0.downsample.0.weight", "fc.bias"],
             atol=1e-9)
    # training mode (at 32x32 to save time; layer4 is then 1x1): batch statistics and the running averages
    _compare(T, net, ref, x[:, :, :32, :32].copy(), train=True, grads=["layer4.1.bn2.weight", "layer1.0.conv2.weight"],
             atol=1e-9)
    for key in ("bn1.running_mean", "layer3.0.bn1.running_var", "layer4.1.bn2.num_batches_tracked"):
        np.testing.assert_allclose(net.state_dict()[key], ref.state_dict()[key].numpy(), rtol=1e-12)
    # and the float32 net's forward
    net32 = get_model("resnet18", num_classes=6)
    net32.load_state_dict({k: v.astype(np.float32) if v.dtype == np.float64 else v for k, v in net.state_dict().items()})
    ref.float()
    _compare(T, net32, ref, x.astype(np.float32), train=False)


def test_bottleneck_v15_matches_torch(T):
    block = Bottleneck(32, 16, 2, rng=0, dtype="float64")
    ref = T.Bottleneck(32, 16, 2, T.projection(32, 64, 2)).double()
    _sync(T, block, ref)
    assert block.state_dict()["conv2.weight"].shape == (16, 16, 3, 3)
    x = _x((2, 32, 9, 10), dtype=np.float64)  # odd and even sizes: 9 -> 5 and 10 -> 5 (floor)
    _compare(T, block, ref, x, train=False, grads=["conv2.weight", "downsample.0.weight"], atol=1e-9)
    _compare(T, block, ref, x, train=True, grads=["conv1.weight", "bn3.bias"], atol=1e-9)


def test_cifar_resnet20_option_a_matches_torch(T):
    net = get_model("resnet20", rng=0, dtype="float64")
    ref = T.CifarResNet(3).double()
    _sync(T, net, ref)
    x = _x((2, 3, 32, 32), dtype=np.float64)
    _compare(T, net, ref, x, train=False, grads=["conv1.weight", "layer2.0.conv1.weight", "fc.weight"], atol=1e-9)
    _compare(T, net, ref, x, train=True, grads=["layer3.2.bn2.bias", "layer1.0.bn1.weight"], atol=1e-9)


def test_googlenet_matches_torch_at_64(T):
    # 64x64: conv1 32 (floor of 32.5), maxpool1 16, maxpool2 8, maxpool3 4, maxpool4 2 (all ceil), avgpool 1
    net = get_model("googlenet", num_classes=5, rng=0, dtype="float64")
    ref = T.GoogLeNet(5).double()
    _sync(T, net, ref)
    _compare(T, net, ref, _x((2, 3, 64, 64), dtype=np.float64), train=False,
             grads=["conv1.conv.weight", "inception4c.branch3.1.conv.weight"], atol=1e-9)


def test_googlenet_aux_heads_match_torch(T):
    # dropout 0 so training mode is deterministic. 32x32 input: conv1 16, maxpool1 8, maxpool2 4, maxpool3 2,
    # so the heads read inception4a/4d at 2x2 (the adaptive pool spreads that to 4x4); maxpool4 gives 1x1
    net = get_model("googlenet", num_classes=3, aux_logits=True, dropout=0.0, dropout_aux=0.0, rng=0,
                    dtype="float64")
    assert isinstance(net, AuxSequential)
    ref = T.GoogLeNet(3, aux_logits=True, dropout=0.0, dropout_aux=0.0).double()
    _sync(T, net, ref)
    x = _x((2, 3, 32, 32), dtype=np.float64)
    _compare(T, net, ref, x, train=True, grads=["aux1.fc2.weight", "aux2.conv.conv.weight", "conv2.conv.weight"],
             atol=1e-9)
    # eval: only the logits, and backward gives the heads zero gradients
    out = net.forward(x, train=False)
    assert out.shape == (2, 3)
    dx = net.backward(np.ones_like(out))
    assert dx.shape == x.shape
    assert not np.any(net.named_grads()["aux1.fc1.weight"])
    # a head without a loss (None) contributes nothing: same dx as a zero gradient
    outs = net.forward(x, train=True)
    d = np.ones_like(outs[0])
    dx_none = net.backward((d, None, None))
    net.forward(x, train=True)
    dx_zero = net.backward((d, np.zeros_like(outs[1]), np.zeros_like(outs[2])))
    np.testing.assert_allclose(dx_none, dx_zero, rtol=0, atol=1e-12)
    net.forward(x, train=True)
    with pytest.raises(ShapeError, match="tuple"):
        net.backward(d)


# --- forward/backward on small inputs, one per family ---------------------------------------------
@pytest.mark.parametrize("name, options, shape", [
    ("cs231n_3layer", {}, (2, 3, 32, 32)),
    ("cifar_convnet", {}, (2, 3, 32, 32)),
    ("cifar_convnet", {"batch_norm": True}, (2, 3, 32, 32)),
    ("cifar_fast", {}, (2, 3, 32, 32)),
    ("resnet20", {"shortcut": "B"}, (2, 3, 32, 32)),
    ("lenet5", {"input_size": 32, "in_channels": 3}, (2, 3, 32, 32)),
])
def test_small_nets_train_step(name, options, shape):
    net = get_model(name, rng=0, **options)
    x = _x(shape)
    out = net.forward(x, train=True)
    assert out.shape == (2, 10)
    dx = net.backward(np.ones_like(out))
    assert dx.shape == x.shape and np.all(np.isfinite(dx))
    assert set(net.named_grads()) == set(net.named_parameters())
    for key, g in net.named_grads().items():
        assert g.shape == net.named_parameters()[key].shape, key


def test_small_nets_are_the_notes_specs():
    assert to_spec(get_model("cs231n_3layer")) == \
        "INPUT[32x32x3] -> CONV7-32 -> RELU -> POOL2 -> FC-100 -> RELU -> FC-10"
    assert to_spec(get_model("cifar_convnet")) == ("INPUT[32x32x3] -> [CONV3-32 -> RELU]*2 -> POOL2 -> "
                                                 "[CONV3-64 -> RELU]*2 -> POOL2 -> [CONV3-128 -> RELU]*2 -> POOL2 "
                                                 "-> FC-256 -> RELU -> FC-10")
    assert to_spec(get_model("cifar_convnet", batch_norm=True)).endswith(
        "[CONV3-128/NB -> BN -> RELU]*2 -> POOL2 -> FC-256/NB -> BN -> RELU -> DROPOUT0.3 -> FC-10")


def test_float64_and_seeds():
    a = get_model("resnet20", rng=5, dtype="float64")
    b = get_model("resnet20", rng=5, dtype="float64")
    assert all(v.dtype == np.float64 for v in a.named_parameters().values())
    for k, v in a.state_dict().items():
        np.testing.assert_array_equal(v, b.state_dict()[k])
    x = _x((1, 3, 8, 8), dtype=np.float64)
    assert a.forward(x).dtype == np.float64


# --- config round trip ------------------------------------------------------------------------------
@pytest.mark.parametrize("name, options, shape", [
    ("resnet20", {}, (2, 3, 16, 16)),
    ("googlenet", {"aux_logits": True, "num_classes": 4}, (1, 3, 40, 40)),
    ("lenet5", {}, (2, 1, 28, 28)),
])
def test_config_round_trip(name, options, shape):
    net = get_model(name, rng=0, **options)
    _randomize_bn(net)
    entry = json.loads(json.dumps(layer_to_config(net)))
    clone = layer_from_config(entry, "test")
    assert type(clone) is type(net)
    assert clone.get_config() == net.get_config()
    assert clone.input_shape == net.input_shape
    clone.load_state_dict({k: v.copy() for k, v in net.state_dict().items()})
    x = _x(shape)
    np.testing.assert_array_equal(clone.forward(x), net.forward(x))


def test_aux_sequential_errors():
    from convnp.layers.activation import ReLU
    with pytest.raises(ConfigError, match="trunk"):
        AuxSequential([("a", ReLU())], [("h", "nope", ReLU())])
    net = AuxSequential([("a", ReLU()), ("b", ReLU())], [("h", "a", ReLU())], input_shape=(1, 2, 2))
    assert net.output_shape() == (1, 2, 2)
    with pytest.raises(StateError):
        net.backward(np.ones((1, 1, 2, 2), np.float32))
    out = net.forward(np.ones((1, 1, 2, 2), np.float32), train=True)
    assert isinstance(out, tuple) and len(out) == 2
    assert "h <- a" in repr(net)


# --- AdaptiveAvgPool2d ------------------------------------------------------------------------------
def _naive_adaptive(x, oh, ow):
    """The definition: bin i spans floor(i*H/OH) .. ceil((i+1)*H/OH) - 1; plain loops."""
    n, c, h, w = x.shape
    out = np.zeros((n, c, oh, ow))
    for a in range(n):
        for ch in range(c):
            for i in range(oh):
                h0, h1 = (i * h) // oh, -(-((i + 1) * h) // oh)
                for j in range(ow):
                    w0, w1 = (j * w) // ow, -(-((j + 1) * w) // ow)
                    total = 0.0
                    for r in range(h0, h1):
                        for s in range(w0, w1):
                            total += x[a, ch, r, s]
                    out[a, ch, i, j] = total / ((h1 - h0) * (w1 - w0))
    return out


@pytest.mark.parametrize("hw, out", [((7, 7), 7), ((13, 10), (6, 4)), ((1, 1), 7), ((5, 9), 3), ((8, 8), 2)])
def test_adaptive_avg_pool_naive_and_gradcheck(hw, out):
    layer = AdaptiveAvgPool2d(out)
    x = _x((2, 3, *hw), dtype=np.float64)
    y = layer.forward(x)
    np.testing.assert_allclose(y, _naive_adaptive(x, *layer.output_size), rtol=1e-12, atol=1e-12)
    assert y.shape[1:] == layer.output_shape(x.shape[1:])
    errors = check_layer_gradients(AdaptiveAvgPool2d(out), _x((1, 2, *hw), dtype=np.float64))
    assert max(errors.values()) < 1e-6


@settings(max_examples=25, deadline=None)
@given(h=st.integers(1, 12), w=st.integers(1, 12), oh=st.integers(1, 8), ow=st.integers(1, 8))
def test_adaptive_avg_pool_matches_torch(h, w, oh, ow):
    torch = pytest.importorskip("torch", reason="torch is the test oracle; install the test extra")
    x = _x((2, 3, h, w), seed=h * 100 + w)
    layer = AdaptiveAvgPool2d((oh, ow))
    y = layer.forward(x)
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.nn.functional.adaptive_avg_pool2d(xt, (oh, ow))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-5, atol=1e-6)
    dout = _x(y.shape, seed=1)
    yt.backward(torch.from_numpy(dout))
    np.testing.assert_allclose(layer.backward(dout), xt.grad.numpy(), rtol=1e-5, atol=1e-6)


def test_adaptive_avg_pool_contract():
    layer = AdaptiveAvgPool2d((6, 4))
    assert repr(layer) == "AdaptiveAvgPool2d(output_size=(6, 4))"
    assert AdaptiveAvgPool2d.from_config(json.loads(json.dumps(layer.get_config()))).output_size == (6, 4)
    assert AdaptiveAvgPool2d(7).get_config() == {"output_size": 7}
    with pytest.raises(ConfigError):
        AdaptiveAvgPool2d(0)
    with pytest.raises(StateError):
        layer.backward(np.ones((1, 1, 6, 4), np.float32))
    with pytest.raises(ShapeError, match="4-d"):
        layer.forward(np.ones((2, 3, 4), np.float32))
    x = _x((1, 2, 6, 4))
    y = layer.forward(x)
    assert y is not x and np.array_equal(y, x)  # same size: the identity (a copy)
    nan = layer.forward(np.full((1, 1, 12, 8), np.nan, np.float32))
    assert np.isnan(nan).all()


# --- ZeroPadShortcut (option A) --------------------------------------------------------------------
@pytest.mark.parametrize("cin, cout, stride, hw", [(16, 32, 2, (8, 8)), (4, 8, 2, (7, 5)), (3, 3, 1, (4, 4)),
                                                    (2, 5, 3, (7, 7))])
def test_zero_pad_shortcut(cin, cout, stride, hw):
    layer = ZeroPadShortcut(cin, cout, stride)
    x = _x((2, cin, *hw), dtype=np.float64)
    y = layer.forward(x)
    pad = (cout - cin) // 2
    # naive definition: channel pad+c, pixel (i, j) is x[c, i*stride, j*stride]; every other channel 0
    expected = np.zeros((2, cout, (hw[0] - 1) // stride + 1, (hw[1] - 1) // stride + 1))
    for c in range(cin):
        for i in range(expected.shape[2]):
            for j in range(expected.shape[3]):
                expected[:, pad + c, i, j] = x[:, c, i * stride, j * stride]
    np.testing.assert_array_equal(y, expected)
    assert y.shape[1:] == layer.output_shape(x.shape[1:])
    check_layer_gradients(ZeroPadShortcut(cin, cout, stride), x)
    assert ZeroPadShortcut.from_config(layer.get_config()).get_config() == layer.get_config()


def test_zero_pad_shortcut_errors():
    with pytest.raises(ConfigError):
        ZeroPadShortcut(32, 16)
    with pytest.raises(ShapeError, match="channels"):
        ZeroPadShortcut(16, 32).forward(np.ones((1, 8, 4, 4), np.float32))
    with pytest.raises(StateError):
        ZeroPadShortcut(16, 32).backward(np.ones((1, 32, 2, 2), np.float32))
