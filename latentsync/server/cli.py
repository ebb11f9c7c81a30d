"""Command line of the HTTP server (`python -m latentsync.server` or `latentsync-server`):

    python -m latentsync.server --checkpoints_dir checkpoints --jobs_dir jobs [--port 8000]

Loads the models once per device, then serves the API on 127.0.0.1 (another --host needs
--api_key). Jobs and results survive restarts; see README.md ("Serve it over HTTP").
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys

from latentsync.errors import EXIT_USER_ERROR, UserError
from latentsync.jobs import checkpoint_paths, load_pipeline, run_dub
from latentsync.server.settings import DEFAULT_HOST, DEFAULT_PORT, ServerSettings

logger = logging.getLogger("latentsync.server")


def parse_args(argv=None) -> ServerSettings:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoints_dir", required=True, help="model files, laid out as for gradio_app.py")
    p.add_argument("--jobs_dir", required=True, help="job database, uploads and results (created if needed)")
    p.add_argument("--host", default=DEFAULT_HOST, help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--api_key", default=None, help="require 'Authorization: Bearer KEY' (needed off loopback)")
    p.add_argument("--max_queue", type=int, default=16, help="jobs queued or running before submissions get 429")
    p.add_argument("--max_upload_mb", type=float, default=200.0, help="per uploaded file")
    p.add_argument("--max_duration_s", type=float, default=120.0, help="longest video or audio accepted")
    p.add_argument("--max_steps", type=int, default=100, help="largest inference_steps accepted")
    p.add_argument("--retention_hours", type=float, default=24.0, help="finished jobs are removed after this")
    p.add_argument("--device", default="auto", help="one worker per device, comma-separated (e.g. cuda:0,cuda:1)")
    p.add_argument("--dtype", default=None, choices=["fp32", "fp16", "bf16"], help="default: fp16 on CUDA, else fp32")
    p.add_argument("--face_backend", default="mediapipe", choices=["mediapipe", "insightface", "face_alignment"])
    p.add_argument("--unet_config_path", default=None, help="default: DIR/unet.yaml if present, else 1.6's config")
    a = p.parse_args(argv)
    return ServerSettings(checkpoints_dir=a.checkpoints_dir, jobs_dir=a.jobs_dir, host=a.host, port=a.port,
                          api_key=a.api_key, max_queue=a.max_queue, max_upload_mb=a.max_upload_mb,
                          max_duration_s=a.max_duration_s, max_steps=a.max_steps, retention_hours=a.retention_hours,
                          devices=[d.strip() for d in a.device.split(",") if d.strip()] or ["auto"],
                          dtype=a.dtype, face_backend=a.face_backend, unet_config_path=a.unet_config_path)


def load_dubs(settings: ServerSettings) -> dict:
    """device -> dub function bound to a pipeline loaded on that device (loaded once, here)."""
    paths = checkpoint_paths(settings.checkpoints_dir, settings.unet_config_path)
    dubs = {}
    for device in settings.devices:
        logger.info("loading the models on %s", device)
        pipeline = load_pipeline(paths.unet_config, paths.unet_ckpt, paths.whisper, paths.vae,
                                 device=None if device == "auto" else device, dtype=settings.dtype,
                                 face_backend=settings.face_backend, checkpoints_dir=settings.checkpoints_dir)
        dubs[device] = functools.partial(run_dub, pipeline)
    return dubs


def serve(settings: ServerSettings) -> None:
    import uvicorn

    from latentsync.server.api import create_app

    settings.check()
    app = create_app(settings, load_dubs(settings))
    logger.info("serving on http://%s:%d (API docs at /docs)", settings.host, settings.port)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="info")


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = parse_args(argv)
    try:
        serve(settings)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
