"""Optimizers, learning-rate schedules and gradient clipping over dicts ``name -> array``."""

from .clip import NonFiniteError, clip_grad_norm, clip_grad_value
from .optimizers import (MEMORY_FACTS, OPTIMIZERS, SGD, Adagrad, Adam, AdamW, Optimizer, RMSprop, get_optimizer,
                         join_state_dict, list_optimizers, optimizer_slots, split_state_dict, update_temporaries)
from .schedules import (SCHEDULE_TYPES, SCHEDULES, ConstantLR, CosineAnnealingLR, ExponentialLR, LinearLR,
                        LRSchedule, MultiStepLR, OneCycleLR, SequentialLR, StepLR, WarmupLinearLR,
                        get_schedule, list_schedules)

__all__ = [
    "Optimizer", "SGD", "Adagrad", "RMSprop", "Adam", "AdamW", "OPTIMIZERS", "get_optimizer", "list_optimizers",
    "MEMORY_FACTS", "optimizer_slots", "update_temporaries",
    "split_state_dict", "join_state_dict",
    "LRSchedule", "ConstantLR", "StepLR", "MultiStepLR", "ExponentialLR", "LinearLR", "CosineAnnealingLR",
    "OneCycleLR", "SequentialLR", "WarmupLinearLR", "SCHEDULES", "SCHEDULE_TYPES", "get_schedule",
    "list_schedules",
    "clip_grad_norm", "clip_grad_value", "NonFiniteError",
]
