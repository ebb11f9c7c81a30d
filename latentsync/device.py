"""Choosing the torch device and dtype: CUDA first, then Apple MPS, then the CPU."""

import logging

import torch

from latentsync.errors import UserError

logger = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16,
          "float16": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


def pick_device(requested: str | None = None) -> torch.device:
    """The device to run on: `requested` if usable, else the best available, with a warning."""
    if requested in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        logger.warning("CUDA was requested but is not available; falling back to the CPU")
        return torch.device("cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        logger.warning("MPS was requested but is not available; falling back to the CPU")
        return torch.device("cpu")
    return device


def pick_dtype(requested: str | None, device: torch.device) -> torch.dtype:
    """fp16 on CUDA by default, fp32 elsewhere; an explicit choice is honoured if it can run."""
    if requested in (None, "", "auto"):
        return torch.float16 if device.type == "cuda" else torch.float32
    if requested not in DTYPES:
        raise UserError(f"dtype {requested!r}: expected one of fp32, fp16, bf16")
    dtype = DTYPES[requested]
    if dtype == torch.float16 and device.type == "cpu":
        logger.warning("fp16 is not supported well on the CPU; using fp32")
        return torch.float32
    return dtype
