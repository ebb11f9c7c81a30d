"""Download the checkpoints into `checkpoints/` (the files are listed in `latentsync/checkpoints.py`
and, for people, in checkpoints/README.md).

Offline it gives up within seconds, lists what is missing and where to get it, and exits 0 so
that `setup_env.sh` still completes. `--all` also fetches the training/evaluation files.
"""

import argparse
import os
import socket
import sys
from pathlib import Path
from urllib.parse import urlparse

from latentsync.checkpoints import CHECKPOINTS_DIR, HUB_URL, CheckpointFile, in_group
from latentsync.cli_args import run_cli
from latentsync.io import commit

CONNECT_TIMEOUT_S = 4
DOWNLOAD_TIMEOUT_S = "30"
STAGING_DIR = "_download"  # hf_hub_download's folder inside the checkpoints folder


def hub_reachable() -> bool:
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", HUB_URL))
    try:
        with socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=CONNECT_TIMEOUT_S):
            return True
    except OSError:
        return False


def describe(entry: CheckpointFile) -> str:
    return f"  {entry.path:<48} {entry.purpose}: {entry.source()}"


def missing_entries(entries: list[CheckpointFile], checkpoints_dir: Path) -> list[CheckpointFile]:
    """Entries with at least one file missing under `checkpoints_dir`."""
    def present(entry: CheckpointFile) -> bool:
        if entry.is_folder and not entry.files:
            return (checkpoints_dir / entry.path).is_dir()
        return all((checkpoints_dir / local).is_file() for _, local in entry.downloads() or [("", entry.path)])
    return [e for e in entries if not present(e)]


def download(entries: list[CheckpointFile], checkpoints_dir: Path) -> list[CheckpointFile]:
    """Fetch what is missing; return the entries still missing afterwards."""
    missing = [e for e in missing_entries(entries, checkpoints_dir) if e.repo]
    if not missing:
        return missing_entries(entries, checkpoints_dir)
    if not hub_reachable():
        print("Offline: the Hugging Face hub cannot be reached; skipping checkpoint download.")
        return missing_entries(entries, checkpoints_dir)
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", DOWNLOAD_TIMEOUT_S)
    from huggingface_hub import hf_hub_download

    for entry in missing:
        for repo_file, local in entry.downloads():
            target = checkpoints_dir / local
            if target.is_file():
                continue
            print(f"Downloading {entry.repo}/{repo_file} -> {target}")
            try:
                path = hf_hub_download(entry.repo, repo_file, local_dir=str(checkpoints_dir / STAGING_DIR))
                target.parent.mkdir(parents=True, exist_ok=True)
                commit(path, target)
            except Exception as exc:  # network errors of many kinds: report and go on
                print(f"  failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    return missing_entries(entries, checkpoints_dir)


def run(args: argparse.Namespace) -> None:
    entries = in_group("inference", "training") if args.all else in_group("inference")
    missing = download(entries, Path(args.checkpoints_dir))
    if missing:
        print(f"Missing checkpoints under {args.checkpoints_dir}/ (download them by hand, see checkpoints/README.md):")
        print("\n".join(describe(e) for e in missing))
    else:
        print(f"All {'' if args.all else 'inference '}checkpoints present in {args.checkpoints_dir}/")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoints_dir", default=CHECKPOINTS_DIR,
                        help="relative to the working directory (docs/checkpoints.md)")
    parser.add_argument("--all", action="store_true", help="also the training and evaluation checkpoints")
    return run_cli(lambda: run(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
