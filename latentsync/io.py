"""The project's one I/O core: atomic output files, the ffmpeg runner, and safe torch loading.

* Outputs: `atomic_output(path)` hands out a hidden temporary file next to `path`
  (`.<stem>.<random>.partial<ext>`, same folder so the rename is atomic); when the block ends
  normally the file is fsynced and renamed to `path`, otherwise it is deleted. A file that exists
  under its final name is therefore always complete. `atomic_open` does the same for Python
  writes, `atomic_save_torch` for `torch.save`.
* ffmpeg: `run_ffmpeg` runs the binary shipped with imageio-ffmpeg with an argument list into
  such a temporary file. A failure is an `ExternalToolError` (a UserError): one line naming
  what failed, the exit status and ffmpeg's own last stderr lines.
* Configs: `read_yaml` reads a YAML mapping into a plain dict, or raises a one-line UserError
  naming the file.
* Checkpoints: `load_torch_file` is the only `torch.load` of the project: `weights_only=True`
  (a pickle that would run code is refused), CPU tensors, and a one-line UserError naming the
  file when it is missing, damaged or unsafe.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import tempfile
import zipfile
from pathlib import Path
from typing import IO, Iterator, Sequence, Union

from latentsync.errors import ExternalToolError, UserError

PathLike = Union[str, os.PathLike]

TEMP_MARK = ".partial"  # temporary outputs: <folder>/.<stem>.<random>.partial<ext>
STDERR_HEAD_LINES = 2  # ffmpeg's first error lines usually name the cause ...
STDERR_TAIL_LINES = 3  # ... and its last ones what it gave up on; both go into the message
STDERR_LINE_CHARS = 300  # at most this much of each line
OBJECT_ADDRESS = re.compile(r" @ 0x[0-9a-f]+")  # "[libx264 @ 0x55d0...]" -> "[libx264]"
FFMPEG_BASE_ARGS = ("-hide_banner", "-loglevel", "error", "-y")
UNSAFE_PICKLE_MARK = "Weights only load failed"  # start of torch's weights_only refusal message
UNSAFE_DETAIL_MARKS = ("GLOBAL", "WeightsUnpickler error", "Unsupported")  # its line naming the object


# --------------------------------------------------------------------------------------------
# atomic outputs


def temp_path_for(final: PathLike) -> Path:
    """A fresh, empty hidden file next to `final` with the usual permissions of new files.

    The extension of `final` is kept (tools such as cv2.imwrite choose the format by it). A
    folder that cannot be created or written to is a UserError naming it.
    """
    final = Path(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=final.parent, prefix=f".{final.stem}.",
                                    suffix=TEMP_MARK + final.suffix)
    except OSError as exc:
        raise UserError(f"{final.parent}: cannot write {final.name} there "
                        f"({exc.strerror or type(exc).__name__})") from None
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(name, 0o666 & ~umask)  # mkstemp makes 0600 files
    return Path(name)


def discard(path: PathLike) -> None:
    """Delete `path` if it exists (a temporary output that will not be kept)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def commit(temp: PathLike, final: PathLike) -> None:
    """Flush `temp` to disk and rename it to `final` (then flush the folder entry too)."""
    fd = os.open(temp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, final)
    with contextlib.suppress(OSError):  # some file systems cannot fsync a folder
        folder = os.open(Path(final).parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


@contextlib.contextmanager
def atomic_output(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path to write `path` through; rename on success, delete on any exit
    by exception (including KeyboardInterrupt / SystemExit)."""
    final = Path(path)
    temp = temp_path_for(final)
    try:
        yield temp
        commit(temp, final)
    finally:
        discard(temp)


@contextlib.contextmanager
def atomic_open(path: PathLike, mode: str = "wb", **kwargs) -> Iterator[IO]:
    """`open(path, mode)` through a temporary file: `path` appears only complete."""
    if not mode.startswith(("w", "x")):
        raise ValueError(f"atomic_open writes new files; mode {mode!r} is not a write mode")
    with atomic_output(path) as temp:
        with open(temp, mode.replace("x", "w"), **kwargs) as file:
            yield file


def atomic_write_text(path: PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    with atomic_open(path, "w", encoding="utf-8") as file:
        file.write(text)


def atomic_save_torch(obj, path: PathLike) -> None:
    """`torch.save(obj)` to `path` atomically."""
    import torch

    with atomic_output(path) as temp:
        torch.save(obj, temp)


# --------------------------------------------------------------------------------------------
# ffmpeg


def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary shipped with imageio-ffmpeg (there is no system ffmpeg)."""
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def ffmpeg_command(args: Sequence[str], reads_stdin: bool = False) -> list[str]:
    """The full ffmpeg argument list: quiet except for errors, overwrite, no keyboard on stdin
    unless the input comes through stdin (`pipe:0`)."""
    base = list(FFMPEG_BASE_ARGS) if reads_stdin else ["-nostdin", *FFMPEG_BASE_ARGS]
    return [ffmpeg_exe(), *base, *map(str, args)]


def exit_status(returncode: int) -> str:
    """`exit code N`, or `killed by SIGKILL` for a child ended by a signal."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


def stderr_tail(text: Union[str, bytes, None]) -> str:
    """A tool's stderr on one line (` | ` between lines): all of it when short, else its first
    and last few lines around `...`."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    lines = [OBJECT_ADDRESS.sub("", line.strip())[:STDERR_LINE_CHARS]
             for line in (text or "").splitlines() if line.strip()]
    if len(lines) > STDERR_HEAD_LINES + STDERR_TAIL_LINES:
        lines = lines[:STDERR_HEAD_LINES] + ["..."] + lines[-STDERR_TAIL_LINES:]
    return " | ".join(lines)


def ffmpeg_failure(what: str, returncode: int, stderr: Union[str, bytes, None]) -> ExternalToolError:
    """The one-line error for an ffmpeg run that did not succeed."""
    reason = stderr_tail(stderr) or "ffmpeg printed no reason"
    return ExternalToolError(f"ffmpeg failed to {what} ({exit_status(returncode)}): {reason}")


def run_ffmpeg(args: Sequence[str], out_path: PathLike, what: str) -> None:
    """Run `ffmpeg <args> <temporary file>` and rename the result to `out_path`.

    `what` completes "ffmpeg failed to ..." in the error. Nothing is left behind on failure.
    """
    with atomic_output(out_path) as temp:
        result = subprocess.run(ffmpeg_command([*args, str(temp)]), capture_output=True)
        if result.returncode != 0:
            raise ffmpeg_failure(what, result.returncode, result.stderr)


# --------------------------------------------------------------------------------------------
# YAML configs


def read_yaml(path: PathLike) -> dict:
    """A YAML config file as a plain dict (OmegaConf's parsing: `1e-4` is a number, `${...}`
    interpolations resolved), or a one-line UserError naming the file when it is missing, not
    valid YAML, or not a mapping."""
    from omegaconf import OmegaConf

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: config file not found")
    try:
        config = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except Exception as exc:  # YAML, OmegaConf and OS errors of several kinds
        raise UserError(f"{path}: not a readable YAML config ({_first_line(exc)})") from None
    if not isinstance(config, dict):
        raise UserError(f"{path}: not a YAML mapping (key: value lines)")
    return config


# --------------------------------------------------------------------------------------------
# torch files


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _unsafe_reason(exc: BaseException) -> str:
    for line in str(exc).splitlines():
        if any(mark in line for mark in UNSAFE_DETAIL_MARKS):
            return line.strip()
    return "weights_only=True rejected it"


def load_torch_file(path: PathLike, what: str = "checkpoint", mmap: bool = False):
    """`torch.load(path, weights_only=True)` onto the CPU, or a UserError naming the file.

    Only tensors, containers and plain values load; a pickle that would construct other objects
    (and so could run code) is refused. `mmap=True` maps zip-format files instead of reading
    them (large checkpoints); legacy-format files are then read normally. `what` names the file
    in messages ("VideoMAE-v2 checkpoint", ...).
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: {what} not found")
    mmap = mmap and zipfile.is_zipfile(path)  # only the zip format can be memory-mapped
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:  # pickle, zip, torch and OS errors all mean "not usable"
        if UNSAFE_PICKLE_MARK in str(exc):
            raise UserError(f"{path}: refused to load this {what}: it holds objects other than "
                            f"tensors (a pickle that could run code; {_unsafe_reason(exc)})") from None
        raise UserError(f"{path}: not a readable {what} ({_first_line(exc)})") from None
