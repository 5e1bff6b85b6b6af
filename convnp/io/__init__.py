"""Files: saved models, PyTorch state_dicts (import/export) and ONNX export.

torch, safetensors and onnx are imported inside the functions that need them.
"""

from .model_file import load_model, model_info, save_model
from .onnx_export import export_onnx, register_onnx_converter
from .torch_weights import (load_backbone, load_torch_state_dict, read_torch_state_dict,
                            save_torch_state_dict)
