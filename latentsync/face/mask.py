"""The inpainting mask: which pixels of the aligned face the model keeps (1) or generates (0)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from latentsync.errors import UserError

MASK_DIR = Path(__file__).resolve().parent
DEFAULT_MASK_PATH = MASK_DIR / "mask.png"
PACKAGE_PARENT = MASK_DIR.parents[1]  # the checkout root, or site-packages for an installed wheel
MASK_KEY = "data.mask_image_path"


def resolve_mask(configured: str | Path | None, source: str = "config") -> Path:
    """The mask image a config asks for (`data.mask_image_path`), as an existing file.

    Empty or unset: the packaged mask.png. Otherwise the path as given (absolute, or relative to
    the working folder), else relative to the folder holding the `latentsync` package, so the
    configs' "latentsync/face/mask.png" works from any folder and from an installed wheel. A
    configured mask that exists nowhere is a UserError naming `source` (the config file): using
    another mask silently would change every generated frame.
    """
    if not configured:
        return DEFAULT_MASK_PATH
    for candidate in (Path(configured), PACKAGE_PARENT / configured):
        if candidate.is_file():
            return candidate
    raise UserError(f"{source}: {MASK_KEY}: {configured}: not found")


def load_mask(path: str | Path = DEFAULT_MASK_PATH, resolution: int = 256) -> np.ndarray:
    """The mask at `resolution` as float32 [res, res], 1 = keep, 0 = generate.

    Like the reference, the 256x256 image is resized with Lanczos (identity at 256, soft
    edges at 512 that the 512 px model was trained with) and channel 0 is kept.
    """
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise UserError(f"{path}: cannot read the mask image (missing or not an image)")
    image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if image.shape[:2] != (resolution, resolution):
        image = cv2.resize(image, (resolution, resolution), interpolation=cv2.INTER_LANCZOS4)
    return (image[:, :, 0].astype(np.float64) / 255.0).astype(np.float32)
