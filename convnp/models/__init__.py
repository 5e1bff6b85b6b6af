"""The model zoo: classic ConvNets by name.

    import convnp as cn
    cn.models.list_models()                       # ['lenet5', 'alexnet', ...]
    net = cn.models.get_model("resnet18", num_classes=10, rng=0)

Every model is a Layer (a Sequential, or an ``AuxSequential`` for GoogLeNet with its auxiliary
heads) with forward/backward, state_dict names equal to torchvision's where torchvision has
the model, ``input_shape`` (its default input, C, H, W) and a config that rebuilds it.
"""

from .alexnet import alexnet, alexnet_v1
from ..layers.pool import AdaptiveAvgPool2d  # noqa: F401 - a zoo name users know
from .googlenet import AuxSequential, googlenet
from .lenet import lenet5
from .registry import ModelInfo, build_model, get_model, list_models, load_pretrained, model_info, parse_model_name
from .resnet import (ZeroPadShortcut, resnet18, resnet20, resnet32, resnet34, resnet44, resnet50, resnet56,
                     resnet101, resnet152)
from .small import cifar_convnet, cs231n_3layer
from .cifar_fast import cifar_fast, patch_whitening_filters, whiten_first_conv  # noqa: I001 - zoo order
from .vgg import vgg11, vgg11_bn, vgg13, vgg13_bn, vgg16, vgg16_bn, vgg19, vgg19_bn
from .zfnet import zfnet

__all__ = ["AdaptiveAvgPool2d", "AuxSequential", "ModelInfo", "ZeroPadShortcut", "alexnet", "alexnet_v1",
           "build_model", "cifar_convnet", "cifar_fast", "cs231n_3layer", "get_model", "parse_model_name", "googlenet", "lenet5", "list_models", "model_info",
           "resnet18", "resnet20", "resnet32", "resnet34", "resnet44", "resnet50", "resnet56", "resnet101",
           "resnet152", "vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn",
           "patch_whitening_filters", "whiten_first_conv", "zfnet"]
