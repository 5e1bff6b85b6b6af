"""The notes' notation for nets: the layer-pattern spec strings and FC->CONV conversion."""
