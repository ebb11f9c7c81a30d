"""The server's settings (what `python -m latentsync.server` sets from its command line)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from latentsync.app import UploadLimits
from latentsync.cli_args import setting
from latentsync.errors import UserError
from latentsync.loading import ModelSettings

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
AUTO_DEVICE = "auto"


@dataclass(kw_only=True)
class ServerSettings(UploadLimits, ModelSettings):
    """Everything `python -m latentsync.server` sets (one flag per field; the model files, hardware
    and upload limits are the Gradio app's flags too)."""

    checkpoints_dir: str = setting(help="model files, laid out as for the inference CLI (see --help of it)")
    jobs_dir: str = setting(help="job database, uploads and results (created if needed)")
    host: str = setting(DEFAULT_HOST, "address to bind (default 127.0.0.1: this machine only)")
    port: int = setting(DEFAULT_PORT, "port to listen on")
    api_key: str | None = setting(None, "require 'Authorization: Bearer KEY' (needed off loopback)")
    max_queue: int = setting(16, "jobs queued or running before submissions get 429")
    max_steps: int = setting(100, "largest inference_steps accepted")
    retention_hours: float = setting(24.0, "finished jobs (and their results) are removed after this")
    device: str = setting(AUTO_DEVICE, "one worker (and model copy) per device, comma-separated "
                                       "(e.g. cuda:0,cuda:1; auto: the best available)")

    @property
    def devices(self) -> list[str]:
        """The devices of --device, one worker each."""
        return [d.strip() for d in self.device.split(",") if d.strip()] or [AUTO_DEVICE]

    def check(self) -> None:
        """UserError for settings that would make the server unsafe or useless."""
        if not is_loopback(self.host) and not self.api_key:
            raise UserError(f"--host {self.host}: serving beyond this machine needs --api_key "
                            f"(every request must then send 'Authorization: Bearer <key>')")
        if self.max_queue < 1:
            raise UserError(f"--max_queue {self.max_queue}: must be at least 1")
        if self.max_upload_mb <= 0 or self.max_duration_s <= 0:
            raise UserError("--max_upload_mb and --max_duration_s must be positive")
        if self.retention_hours <= 0:
            raise UserError(f"--retention_hours {self.retention_hours:g}: must be positive")

    @property
    def max_body_bytes(self) -> int:
        """Largest request accepted: two uploads at the limit plus room for the form fields."""
        return int(2 * self.max_upload_mb * 1e6) + 1_000_000


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost: may resolve anywhere
