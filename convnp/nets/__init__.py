"""Containers: Sequential, Graph (a DAG with Concat/Add merges) and residual/inception blocks."""

from .blocks import BasicBlock, Bottleneck, Inception, conv_bn_relu, inception_block, residual_block
from .graph import Add, Concat, Graph, Merge
from .sequential import Sequential

__all__ = ["Add", "BasicBlock", "Bottleneck", "Concat", "Graph", "Inception", "Merge", "Sequential",
           "conv_bn_relu", "inception_block", "residual_block"]
