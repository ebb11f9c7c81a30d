"""The table of every model file the project reads: where it goes under `checkpoints/`, where
it comes from and what it is for.

One entry per file (or per folder of files that belong together, such as the VAE). Everything
that needs a default weight path or a "get it from ..." hint asks this table:
`scripts/download_checkpoints.py`, the evaluation networks, the losses, the data pipeline, and
the inference / app / training entry points via `default_path(name)`. `checkpoints/README.md`
lists the same files for people (a test keeps the two in step).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from latentsync.errors import UserError

CHECKPOINTS_DIR = "checkpoints"  # the default folder, relative to the working directory (docs/checkpoints.md)
HUB_URL = "https://huggingface.co"
GROUPS = ("inference", "training", "optional")  # download_checkpoints: default, --all, by hand


@dataclass(frozen=True)
class CheckpointFile:
    """One model file (or folder) under `checkpoints/`."""

    name: str  # short key for `default_path(name)`
    path: str  # relative to the checkpoints folder; a folder ends with "/"
    purpose: str  # what reads it
    group: str  # "inference" (fetched by default), "training" (fetched with --all), "optional"
    repo: str = ""  # Hugging Face repo id it is downloaded from ("" if not on the hub)
    repo_path: str = ""  # path inside the repo (default: `path`); for a folder, its prefix
    files: tuple[str, ...] = ()  # for a folder: the files inside it that are needed
    url: str = ""  # another place to get it by hand

    @property
    def is_folder(self) -> bool:
        return self.path.endswith("/")

    def downloads(self) -> list[tuple[str, str]]:
        """(path inside the hub repo, path under checkpoints/) of every file to fetch."""
        if not self.repo:
            return []
        source = self.repo_path or ("" if self.is_folder else self.path)
        if not self.is_folder:
            return [(source, self.path)]
        prefix = source.rstrip("/") + "/" if source else ""
        return [(prefix + f, self.path + f) for f in self.files]

    def source(self) -> str:
        """Where to get it, for messages: the hub repo and file, and/or the other address."""
        places = []
        if self.repo:
            inside = self.repo_path or ("" if self.is_folder else self.path)
            places.append(f"{HUB_URL}/{self.repo}" + (f" file {inside}" if inside else ""))
        if self.url:
            places.append(self.url)
        return " or ".join(places)


_AUX = "ByteDance/LatentSync-1.5"
_SYNCNET_PYTHON = "https://www.robots.ox.ac.uk/~vgg/software/lipsync/data/"
_INSIGHTFACE = "unzip buffalo_l.zip of github.com/deepinsight/insightface/releases into auxiliary/models/buffalo_l/"
CHECKPOINT_FILES: tuple[CheckpointFile, ...] = (
    CheckpointFile("unet", "latentsync_unet.pt", "UNet (LatentSync 1.6, 512 px)", "inference",
                   "ByteDance/LatentSync-1.6"),
    CheckpointFile("whisper", "whisper/tiny.pt", "Whisper tiny audio encoder", "inference",
                   "ByteDance/LatentSync-1.6"),
    CheckpointFile("vae", "sd-vae-ft-mse/", "VAE (diffusers AutoencoderKL folder)", "inference",
                   "stabilityai/sd-vae-ft-mse",
                   files=("config.json", "diffusion_pytorch_model.safetensors")),
    CheckpointFile("stable_syncnet", "stable_syncnet.pt", "SyncNet for the sync loss, SyncNet accuracy",
                   "training", "ByteDance/LatentSync-1.6"),
    CheckpointFile("syncnet_v1", "latentsync_syncnet.pt", "LatentSync 1.0 SyncNet (1.0 sync loss)",
                   "optional", "ByteDance/LatentSync"),
    CheckpointFile("syncnet_v2", "auxiliary/syncnet_v2.model", "SyncNet v2: LSE-C / LSE-D, data sync stage",
                   "training", _AUX,
                   url=_SYNCNET_PYTHON + "syncnet_v2.model (the syncnet_python release)"),
    CheckpointFile("s3fd", "auxiliary/sfd_face.pth", "S3FD face tracks for the sync evaluation",
                   "training", _AUX,
                   url=_SYNCNET_PYTHON + "sfd_face.pth (the syncnet_python release)"),
    CheckpointFile("hyper_iqa", "auxiliary/koniq_pretrained.pkl", "hyperIQA (data pipeline quality stage)",
                   "training", _AUX),
    CheckpointFile("i3d", "auxiliary/i3d_torchscript.pt", "I3D for FVD", "training", _AUX),
    CheckpointFile("inception", "auxiliary/inception_v3_google-0cc3c7bd.pth", "Inception v3 for FID",
                   "optional", url="https://download.pytorch.org/models/inception_v3_google-0cc3c7bd.pth"),
    CheckpointFile("vgg16", "auxiliary/vgg16-397923af.pth", "LPIPS backbone (training)", "training", _AUX,
                   url="https://download.pytorch.org/models/vgg16-397923af.pth"),
    CheckpointFile("videomae", "auxiliary/vit_g_hybrid_pt_1200e_ssv2_ft.pth",
                   "TREPA loss (VideoMAE-v2 ViT-g)", "training", _AUX),
    CheckpointFile("insightface", "auxiliary/models/buffalo_l/", "optional --face_backend insightface",
                   "optional", url=_INSIGHTFACE),
    CheckpointFile("fan", "auxiliary/2DFAN4-cd938726ad.zip", "optional --face_backend face_alignment",
                   "optional", _AUX),
    CheckpointFile("fan_s3fd", "auxiliary/s3fd-619a316812.pth", "optional --face_backend face_alignment",
                   "optional", _AUX),
)
_BY_NAME = {entry.name: entry for entry in CHECKPOINT_FILES}


def checkpoint_file(name: str) -> CheckpointFile:
    """The table entry called `name` (KeyError listing the names otherwise)."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"no checkpoint called {name!r}; known: {', '.join(_BY_NAME)}") from None


def default_path(name: str, checkpoints_dir: str | os.PathLike | None = None) -> Path:
    """Where the file `name` lives by default: `<checkpoints_dir or checkpoints>/<path>`."""
    return Path(checkpoints_dir or CHECKPOINTS_DIR) / checkpoint_file(name).path.rstrip("/")


def missing_message(name: str, path: str | os.PathLike | None = None) -> str:
    """"<path>: <purpose> not found; get it from <source>" for the file `name`."""
    entry = checkpoint_file(name)
    where = path if path is not None else default_path(name)
    return f"{where}: {entry.purpose} weights not found; get {entry.path} from {entry.source()}"


def require(name: str, path: str | os.PathLike | None = None) -> Path:
    """`path` (default: the default path of `name`) if it exists, else a UserError saying where
    to get the file."""
    resolved = Path(path) if path is not None else default_path(name)
    if not resolved.exists():
        raise UserError(missing_message(name, resolved))
    return resolved


def in_group(*groups: str) -> list[CheckpointFile]:
    """The entries of the given groups, in table order."""
    unknown = set(groups) - set(GROUPS)
    if unknown:
        raise ValueError(f"unknown checkpoint group(s) {sorted(unknown)}; known: {GROUPS}")
    return [entry for entry in CHECKPOINT_FILES if entry.group in groups]
