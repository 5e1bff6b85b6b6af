"""Saved models (safetensors), torch state_dict import/export and ONNX export."""
