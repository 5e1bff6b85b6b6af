"""PyTorch twins of convnp's zoo nets and blocks, written once for every test that needs them.

The twins are built from torch.nn only (torchvision is not a dependency) with torchvision's module
names and order, so their state_dicts load into convnp's nets and back. torch is the test oracle and
is imported only when ``twins()`` is called: importing this module never needs it, and ``twins()``
skips the calling test with the stated reason where torch is not installed.
"""

import functools
import types

import numpy as np
import pytest

import convnp.layers.conv as conv_module
import convnp.layers.linear as linear_module

# torchvision's VGG configuration "A" (vgg11): conv widths, "M" a 2x2 max pool
VGG11_PLAN = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]


def twins():
    """The twin classes in a namespace (with ``torch`` itself); built on the first call, then cached."""
    torch = pytest.importorskip("torch", reason="torch is the test oracle; install the test extra")
    return _build(torch)


@functools.cache
def _build(torch):
    nn, F = torch.nn, torch.nn.functional

    class LeNet(nn.Module):  # convnp's lenet5: conv 5x5 (padded to keep 28x28), pool, conv 5x5, pool, 3 FCs
        def __init__(self, num_classes=10):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                                          nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2))
            self.classifier = nn.Sequential(nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
                                            nn.Linear(84, num_classes))

        def forward(self, x):
            return self.classifier(torch.flatten(self.features(x), 1))

    class AlexNet(nn.Module):  # torchvision.models.alexnet
        def __init__(self, num_classes):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(), nn.MaxPool2d(3, 2),
                nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
                nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(), nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
                nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2))
            self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
            self.classifier = nn.Sequential(nn.Dropout(), nn.Linear(9216, 4096), nn.ReLU(), nn.Dropout(),
                                            nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, num_classes))

        def forward(self, x):
            return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))

    class VGG(nn.Module):  # torchvision.models.vgg.VGG with make_layers(plan, batch_norm)
        def __init__(self, plan, batch_norm, num_classes):
            super().__init__()
            layers, c = [], 3
            for v in plan:
                if v == "M":
                    layers.append(nn.MaxPool2d(2, 2))
                else:
                    layers += [nn.Conv2d(c, v, 3, padding=1)] + ([nn.BatchNorm2d(v)] if batch_norm else []) + [nn.ReLU()]
                    c = v
            self.features = nn.Sequential(*layers)
            self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
            self.classifier = nn.Sequential(nn.Linear(512 * 7 * 7, 4096), nn.ReLU(), nn.Dropout(),
                                            nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(),
                                            nn.Linear(4096, num_classes))

        def forward(self, x):
            return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))

    def projection(cin, cout, stride):
        """torchvision's downsample: a strided 1x1 conv and BatchNorm."""
        return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    class BasicBlock(nn.Module):  # torchvision.models.resnet.BasicBlock
        """``downsample=None`` gives torchvision's projection where the shape changes (stride or
        width), the identity elsewhere; any other module (option A's zero pad) is used as given."""

        def __init__(self, inplanes, planes, stride=1, downsample=None):
            super().__init__()
            self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.relu = nn.ReLU()
            self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            if downsample is None and (stride != 1 or inplanes != planes):
                downsample = projection(inplanes, planes, stride)
            self.downsample = downsample

        def forward(self, x):
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            return self.relu(self.bn2(self.conv2(out)) + identity)

    class Bottleneck(nn.Module):  # torchvision's v1.5: the stride on conv2; width = planes * base_width / 64
        """``downsample=None`` gives the projection where the shape changes, as in BasicBlock."""

        def __init__(self, inplanes, planes, stride=1, downsample=None, base_width=64):
            super().__init__()
            width = planes * base_width // 64
            self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
            self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(width)
            self.conv3 = nn.Conv2d(width, planes * 4, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(planes * 4)
            self.relu = nn.ReLU()
            if downsample is None and (stride != 1 or inplanes != planes * 4):
                downsample = projection(inplanes, planes * 4, stride)
            self.downsample = downsample

        def forward(self, x):
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.relu(self.bn2(self.conv2(out)))
            return self.relu(self.bn3(self.conv3(out)) + identity)

    class ResNet18(nn.Module):  # torchvision.models.resnet18
        def __init__(self, num_classes):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.relu = nn.ReLU()
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            inplanes = 64
            for i, planes in enumerate((64, 128, 256, 512)):
                stride = 1 if i == 0 else 2
                setattr(self, f"layer{i + 1}", nn.Sequential(BasicBlock(inplanes, planes, stride),
                                                             BasicBlock(planes, planes)))
                inplanes = planes
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(512, num_classes)

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(torch.flatten(self.avgpool(x), 1))

    class PadShortcut(nn.Module):  # option A: subsample, zero channels before and after
        def __init__(self, pad):
            super().__init__()
            self.pad = pad

        def forward(self, x):
            return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))

    class CifarResNet(nn.Module):  # He et al. 2016, section 4.2: 6n+2 layers, option A shortcuts
        def __init__(self, n, num_classes=10):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(16)
            self.relu = nn.ReLU()
            inplanes = 16
            for i, planes in enumerate((16, 32, 64)):
                blocks = []
                for j in range(n):
                    stride = 2 if i > 0 and j == 0 else 1
                    down = PadShortcut(planes // 4) if stride != 1 else None
                    blocks.append(BasicBlock(inplanes, planes, stride, down))
                    inplanes = planes
                setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            self.fc = nn.Linear(64, num_classes)

        def forward(self, x):
            x = self.relu(self.bn1(self.conv1(x)))
            x = self.layer3(self.layer2(self.layer1(x)))
            return self.fc(x.mean((2, 3)))

    class BasicConv2d(nn.Module):  # torchvision.models.googlenet.BasicConv2d
        def __init__(self, cin, cout, **kw):
            super().__init__()
            self.conv = nn.Conv2d(cin, cout, bias=False, **kw)
            self.bn = nn.BatchNorm2d(cout, eps=0.001)

        def forward(self, x):
            return F.relu(self.bn(self.conv(x)))

    class Inception(nn.Module):  # torchvision.models.googlenet.Inception (its branch 3 is 3x3, the paper's 5x5)
        def __init__(self, cin, ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj, branch3_kernel_size=3):
            super().__init__()
            k3 = branch3_kernel_size
            self.branch1 = BasicConv2d(cin, ch1x1, kernel_size=1)
            self.branch2 = nn.Sequential(BasicConv2d(cin, ch3x3red, kernel_size=1),
                                         BasicConv2d(ch3x3red, ch3x3, kernel_size=3, padding=1))
            self.branch3 = nn.Sequential(BasicConv2d(cin, ch5x5red, kernel_size=1),
                                         BasicConv2d(ch5x5red, ch5x5, kernel_size=k3, padding=(k3 - 1) // 2))
            self.branch4 = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1, ceil_mode=True),
                                         BasicConv2d(cin, pool_proj, kernel_size=1))

        def forward(self, x):
            return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)

    class InceptionAux(nn.Module):  # torchvision.models.googlenet.InceptionAux
        def __init__(self, cin, num_classes, dropout=0.7):
            super().__init__()
            self.conv = BasicConv2d(cin, 128, kernel_size=1)
            self.fc1 = nn.Linear(2048, 1024)
            self.fc2 = nn.Linear(1024, num_classes)
            self.dropout = nn.Dropout(dropout)

        def forward(self, x):
            x = torch.flatten(self.conv(F.adaptive_avg_pool2d(x, (4, 4))), 1)
            return self.fc2(self.dropout(F.relu(self.fc1(x))))

    class GoogLeNet(nn.Module):  # torchvision.models.googlenet (transform_input=False)
        """With ``aux_logits`` the heads exist (as in torchvision's weights file) and run in training
        mode only: train returns (logits, aux1, aux2), eval the logits."""

        def __init__(self, num_classes, aux_logits=False, dropout=0.2, dropout_aux=0.7):
            super().__init__()
            self.conv1 = BasicConv2d(3, 64, kernel_size=7, stride=2, padding=3)
            self.maxpool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
            self.conv2 = BasicConv2d(64, 64, kernel_size=1)
            self.conv3 = BasicConv2d(64, 192, kernel_size=3, padding=1)
            self.maxpool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
            self.inception3a = Inception(192, 64, 96, 128, 16, 32, 32)
            self.inception3b = Inception(256, 128, 128, 192, 32, 96, 64)
            self.maxpool3 = nn.MaxPool2d(3, 2, ceil_mode=True)
            self.inception4a = Inception(480, 192, 96, 208, 16, 48, 64)
            self.inception4b = Inception(512, 160, 112, 224, 24, 64, 64)
            self.inception4c = Inception(512, 128, 128, 256, 24, 64, 64)
            self.inception4d = Inception(512, 112, 144, 288, 32, 64, 64)
            self.inception4e = Inception(528, 256, 160, 320, 32, 128, 128)
            self.maxpool4 = nn.MaxPool2d(2, 2, ceil_mode=True)
            self.inception5a = Inception(832, 256, 160, 320, 32, 128, 128)
            self.inception5b = Inception(832, 384, 192, 384, 48, 128, 128)
            self.aux_logits = aux_logits
            if aux_logits:
                self.aux1 = InceptionAux(512, num_classes, dropout_aux)
                self.aux2 = InceptionAux(528, num_classes, dropout_aux)
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.dropout = nn.Dropout(dropout)
            self.fc = nn.Linear(1024, num_classes)

        def forward(self, x):
            x = self.maxpool1(self.conv1(x))
            x = self.maxpool2(self.conv3(self.conv2(x)))
            x = self.maxpool3(self.inception3b(self.inception3a(x)))
            x = self.inception4a(x)
            a1 = self.aux1(x) if self.aux_logits and self.training else None
            x = self.inception4d(self.inception4c(self.inception4b(x)))
            a2 = self.aux2(x) if self.aux_logits and self.training else None
            x = self.maxpool4(self.inception4e(x))
            x = self.inception5b(self.inception5a(x))
            x = self.fc(self.dropout(torch.flatten(self.avgpool(x), 1)))
            return (x, a1, a2) if a1 is not None else x

    return types.SimpleNamespace(
        torch=torch, LeNet=LeNet, AlexNet=AlexNet, VGG=VGG, projection=projection, BasicBlock=BasicBlock,
        Bottleneck=Bottleneck, ResNet18=ResNet18, PadShortcut=PadShortcut, CifarResNet=CifarResNet,
        BasicConv2d=BasicConv2d, Inception=Inception, InceptionAux=InceptionAux, GoogLeNet=GoogLeNet)


def skip_weight_draws(monkeypatch):
    """Zero weights instead of He draws in Conv2d and Linear, for nets whose parameter shapes are all a
    test needs or whose weights a load overwrites (He init of VGG's 100M-weight FC takes seconds).
    A large np.zeros maps fresh zero pages: it touches no memory until written."""
    def zeros(rng, shape, fan_in, dtype):
        return np.zeros(shape, dtype=dtype)

    monkeypatch.setattr(conv_module, "he_normal", zeros)
    monkeypatch.setattr(linear_module, "he_normal", zeros)


def check_train_and_eval(torch, ours, theirs, x, dout, trains, rtol, atol, state_rtol, state_atol):
    """``ours`` against its torch twin (same weights already) in each mode of ``trains`` in turn,
    running statistics carrying over: forward, output_shape, dx and every parameter gradient, by
    name in torch's order, within (rtol, atol); then the state_dicts within (state_rtol, state_atol).
    ``dout(shape)`` gives the upstream gradient, called once per mode after the torch forward."""
    for train in trains:
        theirs.train(train)
        tx = torch.from_numpy(x).requires_grad_()
        tout = theirs(tx)
        d = dout(tuple(tout.shape))
        tout.backward(torch.from_numpy(d))
        out = ours(x, train=train)
        np.testing.assert_allclose(out, tout.detach().numpy(), rtol=rtol, atol=atol)
        assert ours.output_shape(x.shape[1:]) == out.shape[1:]
        np.testing.assert_allclose(ours.backward(d), tx.grad.numpy(), rtol=rtol, atol=atol)
        tgrads = {k: p.grad.numpy() for k, p in theirs.named_parameters()}
        assert list(ours.grads) == list(tgrads)
        for k, g in ours.grads.items():
            np.testing.assert_allclose(g, tgrads[k], rtol=rtol, atol=atol, err_msg=k)
        theirs.zero_grad()
    for k, v in theirs.state_dict().items():  # a train pass moves the running statistics alike
        np.testing.assert_allclose(ours.state_dict()[k], v.numpy(), rtol=state_rtol, atol=state_atol, err_msg=k)
