"""LatentSync nodes for ComfyUI: "LatentSync Loader" (checkpoints, device, dtype) and "LatentSync
Dub" (IMAGE frames + AUDIO -> dubbed IMAGE frames + AUDIO), running this repository's pipeline.

Install by linking this folder into ComfyUI (the repository's requirements must be installed in
ComfyUI's Python environment):

    ln -s /path/to/LatentSync/comfyui_latentsync /path/to/ComfyUI/custom_nodes/comfyui_latentsync
"""

import sys
from pathlib import Path

try:
    import latentsync  # noqa: F401  (installed with `pip install -e /path/to/LatentSync`)
except ImportError:  # linked into custom_nodes without installing: use the repository it lives in
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
