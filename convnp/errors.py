"""Exceptions raised by convnp.

Every error a user can cause derives from ``ConvnpError``. The geometry and
configuration errors are also ``ValueError`` so callers that catch the builtin
keep working.
"""


class ConvnpError(Exception):
    """Base class of every convnp error."""


class ShapeError(ConvnpError, ValueError):
    """An input or a layer's geometry does not work: names the layer and the sizes."""


class ConfigError(ConvnpError, ValueError):
    """A layer, net or option was configured with an invalid value."""


class DataError(ConvnpError):
    """A dataset could not be fetched, verified or parsed."""


class StateError(ConvnpError, RuntimeError):
    """A method was called in the wrong order, e.g. ``backward`` before ``forward``."""
