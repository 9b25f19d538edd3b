"""Input checks shared by the metric functions."""
from __future__ import annotations

import numpy as np


def check_pair(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None) -> None:
    if pred.ndim != 2 or gt.ndim != 2:
        raise ValueError(f"mattes must be 2-D, got {pred.shape} and {gt.shape}")
    if pred.shape != gt.shape:
        raise ValueError(f"prediction is {pred.shape[1]}x{pred.shape[0]}, ground truth is {gt.shape[1]}x{gt.shape[0]}")
    if mask is not None and mask.shape != gt.shape:
        raise ValueError(f"trimap is {mask.shape[1]}x{mask.shape[0]}, ground truth is {gt.shape[1]}x{gt.shape[0]}")


def check_uint8(*arrays: np.ndarray) -> None:
    for a in arrays:
        if a.dtype != np.uint8:
            raise ValueError(f"the DIM protocol scores 8-bit mattes; got {a.dtype}")
