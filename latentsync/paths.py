"""Where files are: the YAML configs that ship with latentsync, and the scratch folder.

In a source checkout the configs are the folder `configs/` next to the package; an installed
wheel carries the same files inside the package as `latentsync/configs/` (see setup.py). Code
that needs a shipped config asks `config_path("unet/stage2_512.yaml")` instead of building a
path from the repository root, which does not exist in a wheel install. `find_config` also lets
command lines written for a checkout (`--unet_config_path configs/unet/stage2.yaml`) work from
any folder. `use_temp_dir` is the `--temp_dir` option of the command lines.
"""

import os
import tempfile
from pathlib import Path

from latentsync.errors import UserError

PACKAGE_DIR = Path(__file__).resolve().parent
CHECKOUT_CONFIGS = PACKAGE_DIR.parent / "configs"
PACKAGED_CONFIGS = PACKAGE_DIR / "configs"
CONFIGS_PREFIX = "configs"


def configs_dir() -> Path:
    """The shipped configs: the checkout's `configs/` if there is one, else the packaged copy."""
    return CHECKOUT_CONFIGS if CHECKOUT_CONFIGS.is_dir() else PACKAGED_CONFIGS


def config_path(name: str) -> Path:
    """A shipped config by its name under configs/, e.g. "syncnet/syncnet_16_pixel_attn.yaml"."""
    return configs_dir() / name


def find_config(path: str | Path) -> Path:
    """`path` as given if it exists; a relative "configs/..." path that does not exist here is
    looked up among the shipped configs; otherwise `path` unchanged (the caller reports it)."""
    given = Path(path)
    if given.exists() or given.is_absolute() or not given.parts or given.parts[0] != CONFIGS_PREFIX:
        return given
    shipped = configs_dir().joinpath(*given.parts[1:])
    return shipped if shipped.exists() else given


def use_temp_dir(folder: str | Path | None, option: str = "--temp_dir") -> Path | None:
    """Send scratch files of this process, and of the processes it starts, to `folder` (created
    if needed; nothing in it is deleted). None: keep the system's temporary folder."""
    if not folder:
        return None
    path = Path(folder).expanduser().resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{option} {folder}: cannot create the folder ({exc.strerror})") from None
    if not os.access(path, os.W_OK):
        raise UserError(f"{option} {folder}: folder is not writable")
    os.environ["TMPDIR"] = str(path)  # inherited by worker processes
    tempfile.tempdir = str(path)
    return path
