"""The applications on top of the library: the CLI, the training run recipe, prediction and the
benchmark against PyTorch."""
