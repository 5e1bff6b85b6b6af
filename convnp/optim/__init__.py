"""Optimizers, learning-rate schedules and gradient clipping over dicts ``name -> array``."""

from .clip import NonFiniteError, clip_grad_norm, clip_grad_value
from .optimizers import (OPTIMIZERS, SGD, Adagrad, Adam, AdamW, Optimizer, RMSprop, get_optimizer,
                         join_state_dict, list_optimizers, split_state_dict)
from .schedules import (SCHEDULE_TYPES, SCHEDULES, ConstantLR, CosineAnnealingLR, ExponentialLR, LinearLR,
                        LRSchedule, MultiStepLR, OneCycleLR, SequentialLR, StepLR, WarmupLinearLR,
                        get_schedule, list_schedules)

__all__ = [
    "Optimizer", "SGD", "Adagrad", "RMSprop", "Adam", "AdamW", "OPTIMIZERS", "get_optimizer", "list_optimizers",
    "split_state_dict", "join_state_dict",
    "LRSchedule", "ConstantLR", "StepLR", "MultiStepLR", "ExponentialLR", "LinearLR", "CosineAnnealingLR",
    "OneCycleLR", "SequentialLR", "WarmupLinearLR", "SCHEDULES", "SCHEDULE_TYPES", "get_schedule",
    "list_schedules",
    "clip_grad_norm", "clip_grad_value", "NonFiniteError",
]
