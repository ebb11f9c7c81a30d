"""The server's settings (what `python -m latentsync.server` sets from its command line)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from latentsync.errors import UserError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


@dataclass
class ServerSettings:
    checkpoints_dir: str
    jobs_dir: str
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    api_key: str | None = None
    max_queue: int = 16  # jobs queued or running; more submissions get 429
    max_upload_mb: float = 200.0  # per file
    max_duration_s: float = 120.0  # per file (video and audio)
    max_steps: int = 100
    retention_hours: float = 24.0  # finished jobs (and their results) are removed after this
    devices: list[str] = field(default_factory=lambda: ["auto"])  # one worker (and model copy) per device
    dtype: str | None = None
    face_backend: str = "mediapipe"
    unet_config_path: str | None = None

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
