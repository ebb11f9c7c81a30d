"""Strict loading of the plain state-dict files the evaluation networks come in (SyncNet v2, hyperIQA).

Not `latentsync.models.checkpoint.load_into`: these official files may lack the BatchNorm
`num_batches_tracked` counters (saved by old PyTorch versions), which must still load, and hyperIQA
wraps its weights in a "model" entry rather than "state_dict".
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from latentsync.errors import UserError
from latentsync.io import load_torch_file

OPTIONAL_SUFFIX = "num_batches_tracked"  # BatchNorm counters: unused in eval mode


def load_weights_strictly(model: nn.Module, path: Path, device, model_name: str, wrapper_key: str) -> nn.Module:
    """`model` in eval mode on `device` with the weights of `path` (a state dict, or a dict holding
    it under `wrapper_key`), read with weights_only=True; UserError naming the file otherwise."""
    state = load_torch_file(path, f"{model_name} weights file")
    if isinstance(state, dict) and isinstance(state.get(wrapper_key), dict):
        state = state[wrapper_key]
    if not isinstance(state, dict):
        raise UserError(f"{path}: expected a state dict, found {type(state).__name__}")
    check_state_dict(model, state, str(path), model_name)
    full = OrderedDict(model.state_dict())
    full.update(state)
    model.load_state_dict(full, strict=True)
    return model.to(device).eval()


def check_state_dict(model: nn.Module, state: dict, source: str, model_name: str) -> None:
    """Raise UserError naming the first key of `state` that does not fit `model` exactly.

    `num_batches_tracked` may be absent (files saved by old PyTorch versions lack it).
    """
    expected = model.state_dict()
    unexpected = [k for k in state if k not in expected]
    if unexpected:
        raise UserError(f"{source}: unexpected key {unexpected[0]!r} "
                        f"({len(unexpected)} unexpected); not a {model_name} state dict")
    missing = [k for k in expected if k not in state and not k.endswith(OPTIONAL_SUFFIX)]
    if missing:
        raise UserError(f"{source}: missing key {missing[0]!r} ({len(missing)} missing); "
                        f"not a {model_name} state dict")
    for key, value in state.items():
        if not isinstance(value, torch.Tensor) or value.shape != expected[key].shape:
            shape = list(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise UserError(f"{source}: key {key!r} has shape {shape}, "
                            f"expected {list(expected[key].shape)}")
