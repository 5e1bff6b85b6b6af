"""Pure array kernels: functions of arrays, no classes, no state.

Each forward returns ``(out, cache)``; each backward takes ``(dout, cache)`` and
returns every gradient. The layers in ``convnp.layers`` are thin classes over these.
"""
