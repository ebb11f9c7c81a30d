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

from latentsync.cli_args import TRAIN_LOG_FORMAT, add_arguments, from_args, run_cli
from latentsync.jobs import PipelineSpec, load_pipeline, run_dub
from latentsync.server.settings import ServerSettings

logger = logging.getLogger("latentsync.server")


def parse_args(argv=None) -> ServerSettings:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser, ServerSettings)
    return from_args(ServerSettings, parser.parse_args(argv))


def load_dubs(settings: ServerSettings) -> dict:
    """device -> dub function bound to a pipeline loaded on that device (loaded once, here)."""
    files = settings.model_files().check()
    dubs = {}
    for device in settings.devices:
        logger.info("loading the models on %s", device)
        pipeline = load_pipeline(PipelineSpec(files, device, settings.dtype, settings.face_backend))
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
    return run_cli(lambda: serve(parse_args(argv)), TRAIN_LOG_FORMAT)


if __name__ == "__main__":
    sys.exit(main())
