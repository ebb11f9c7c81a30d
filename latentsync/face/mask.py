"""The inpainting mask: which pixels of the aligned face the model keeps (1) or generates (0)."""

from pathlib import Path

import cv2
import numpy as np

from latentsync.errors import UserError

MASK_DIR = Path(__file__).resolve().parent
DEFAULT_MASK_PATH = MASK_DIR / "mask.png"


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
