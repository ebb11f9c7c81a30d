"""LPIPS(vgg) perceptual loss on the lower half of the face, built without network access.

`lpips.LPIPS(net="vgg")` would ask torchvision to download the ImageNet VGG16; instead the
backbone is built randomly and the local `vgg16-397923af.pth` is copied into it, and the
v0.1 linear heads are read from the file that ships inside the `lpips` package.
"""

import warnings
from pathlib import Path

import torch
from einops import rearrange

from latentsync.checkpoints import checkpoint_file, default_path
from latentsync.errors import UserError
from latentsync.io import load_torch_file

VGG_CHECKPOINT = str(default_path("vgg16"))
VGG_SOURCE = checkpoint_file("vgg16").source()
LPIPS_VERSION = "0.1"


def _build_lpips():
    import lpips

    with warnings.catch_warnings():  # torchvision's deprecation notes about `pretrained=`
        warnings.simplefilter("ignore")
        return lpips.LPIPS(net="vgg", version=LPIPS_VERSION, pretrained=False, pnet_rand=True,
                           verbose=False)


def _load_heads(model) -> None:
    import lpips

    path = Path(lpips.__file__).parent / "weights" / f"v{LPIPS_VERSION}" / "vgg.pth"
    heads = load_torch_file(path, "LPIPS head weights file")
    result = model.load_state_dict(heads, strict=False)
    if result.unexpected_keys:  # `lins.N` alias `linN`, so only the latter are needed
        raise RuntimeError(f"{path}: unexpected LPIPS head layout {result}")


def _load_backbone(model, path: Path) -> None:
    vgg = load_torch_file(path, "torchvision VGG16 state dict")
    if not isinstance(vgg, dict):
        raise UserError(f"{path}: not a torchvision VGG16 state dict (found {type(vgg).__name__})")
    # LPIPS keeps torchvision's `features.N` modules under `net.sliceK.N`.
    target = {}
    for name in model.net.state_dict():
        source = "features." + name.split(".", 1)[1]
        if source not in vgg:
            raise UserError(f"{path}: not a torchvision VGG16 state dict (no {source})")
        target[name] = vgg[source]
    model.net.load_state_dict(target, strict=True)


def make_lpips(vgg_weights_path: str | Path | None = None, pretrained_heads: bool = True,
               allow_random_backbone: bool = False):
    """Frozen eval-mode `lpips.LPIPS(net="vgg")` (v0.1) from local files only.

    With `allow_random_backbone` a missing VGG file leaves the backbone random (tests and CPU
    smoke runs); otherwise it is a UserError naming the file and where to get it.
    """
    path = Path(vgg_weights_path if vgg_weights_path is not None else VGG_CHECKPOINT)
    model = _build_lpips()
    if pretrained_heads:
        _load_heads(model)
    if path.is_file():
        _load_backbone(model, path)
    elif not allow_random_backbone:
        raise UserError(f"{path}: VGG16 weights for the LPIPS loss not found; get "
                        f"vgg16-397923af.pth from {VGG_SOURCE}")
    return model.eval().requires_grad_(False)


def lower_half_lpips(lpips_model, pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Mean LPIPS over frames of rows `H/2 ...` of pred and gt (in [-1, 1]), computed in fp32.

    Frames are `[N, 3, H, W]` or `[B, 3, T, H, W]` (then every frame counts).
    """
    if pred.shape != gt.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and gt {tuple(gt.shape)} differ in shape")
    if pred.dim() == 5:
        pred = rearrange(pred, "b c t h w -> (b t) c h w")
        gt = rearrange(gt, "b c t h w -> (b t) c h w")
    half = pred.shape[-2] // 2
    with torch.autocast(device_type=pred.device.type, enabled=False):
        distance = lpips_model(pred[:, :, half:, :].float(), gt[:, :, half:, :].float())
    return distance.mean()
