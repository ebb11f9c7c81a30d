"""The learned networks of LatentSync and their checkpoint loaders.

Names are resolved lazily so that importing one network does not import the others.
"""

import importlib

_EXPORTS = {
    "UNet3DConditionModel": "latentsync.models.unet",
    "StableSyncNet": "latentsync.models.stable_syncnet",
    "load_unet": "latentsync.models.checkpoint",
    "load_syncnet": "latentsync.models.checkpoint",
    "read_state_dict": "latentsync.models.checkpoint",
}

__all__ = list(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'latentsync.models' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
