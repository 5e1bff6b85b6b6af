"""The training report: one self-contained HTML page about a run, and the analyses behind it.

    from convnp.report import build_report
    build_report("runs/latest")            # writes runs/latest/report.html

``build_report`` needs matplotlib (``pip install 'convnp[report]'``); the analysis functions
(saliency, occlusion, confusion matrix, filter grid, activation maps) need only NumPy.
"""

from .analysis import (
    Mistake,
    activation_maps,
    confusion_matrix,
    default_activation_layers,
    filter_grid,
    first_conv,
    most_confident_mistakes,
    occlusion_map,
    occlusion_pixel_map,
    per_class_accuracy,
    saliency_map,
    tile_images,
)
from .html import SECTIONS, build_report, load_run
from .plots import MissingDependencyError

__all__ = [
    "SECTIONS",
    "MissingDependencyError",
    "Mistake",
    "activation_maps",
    "build_report",
    "confusion_matrix",
    "default_activation_layers",
    "filter_grid",
    "first_conv",
    "load_run",
    "most_confident_mistakes",
    "occlusion_map",
    "occlusion_pixel_map",
    "per_class_accuracy",
    "saliency_map",
    "tile_images",
]
