"""The HTTP API (FastAPI): submit, watch, download and cancel dubbing jobs.

    POST   /jobs               multipart: video, audio + option fields -> the job (201)
    GET    /jobs               the latest jobs, newest first (?state=queued&limit=50)
    GET    /jobs/{id}          state (queued, running, done, failed, cancelled), progress, error
    GET    /jobs/{id}/result   the dubbed mp4 (streamed) once the job is done
    DELETE /jobs/{id}          cancel a queued or running job
    GET    /healthz            liveness, workers and job counts (no key needed)

Uploads are checked before a job is queued (readable streams, size and duration limits), so a
bad file gets a 400 with the same one-line message the command line prints. Every error body
is `{"detail": "<one line>"}`.
"""

from __future__ import annotations

import hmac
import inspect
import os
import shutil
import threading
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from fastapi import APIRouter, Depends, FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse

from latentsync.app import check_audio, check_video
from latentsync.errors import UserError
from latentsync.jobs import job_options
from latentsync.pipelines.options import PRESET_FLAG, PRESETS, field_type, option_fields, preset_values
from latentsync.server.folders import JobFolders, display_name, new_job_id, stored_name, valid_id
from latentsync.server.settings import ServerSettings
from latentsync.server.store import FINISHED, JobStore
from latentsync.server.worker import DubFn, Janitor, Worker

COPY_CHUNK = 1 << 20
MAX_LIST = 1000
FILE_FIELDS = ("video", "audio")


@dataclass
class Context:
    settings: ServerSettings
    store: JobStore
    folders: JobFolders
    workers: list[Worker]
    janitor: Janitor
    wake: threading.Event


def context(request: Request) -> Context:
    return request.app.state.ctx


def require_key(request: Request, ctx: Context = Depends(context)) -> None:
    """With an API key configured, every /jobs request must send `Authorization: Bearer <key>`."""
    key = ctx.settings.api_key
    if not key:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), key.encode()):
        raise HTTPException(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                            headers={"WWW-Authenticate": "Bearer"})


router = APIRouter(dependencies=[Depends(require_key)])


SERVER_HIDDEN = ("temp_dir",)  # a path on the server: never chosen by a client
TEXT_FIELDS = ("face_box", "output_fps")  # sent as text: "x1,y1,x2,y2"; a number or "original"


def _form_parameter(f) -> inspect.Parameter:
    """One form field for LipsyncOptions field `f`: same name, default and help as on the command line."""
    help_text = f.metadata["help"]
    if f.name in TEXT_FIELDS:
        annotation, default = str | None, None
        help_text += " (x1,y1,x2,y2)" if f.name == "face_box" else ""
    else:
        kind = field_type(f.name)
        annotation = kind if f.default is not None else kind | None
        default = f.default
    return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation,
                             default=Form(default, description=help_text))


def form_options(**values) -> dict:
    """The pipeline's options from the form (checked; a bad value is a 400 naming it)."""
    values = {name: value for name, value in values.items() if value is not None}
    if "face_box" in values:
        text = values["face_box"]
        try:
            values["face_box"] = [float(v) for v in text.replace(" ", ",").split(",") if v]
        except ValueError:
            values["face_box"] = []
        if len(values["face_box"]) != 4:
            raise HTTPException(400, f"face_box {text!r}: expected four numbers x1,y1,x2,y2")
    try:
        job_options(values)
    except UserError as exc:
        raise HTTPException(400, str(exc)) from None
    return values


form_options.__signature__ = inspect.Signature(
    [_form_parameter(f) for f in option_fields() if f.metadata["cli"] and f.name not in SERVER_HIDDEN])


OPTION_FIELDS = tuple(inspect.signature(form_options).parameters)


@router.post("/jobs", status_code=201)
async def submit_job(request: Request, video: UploadFile = File(..., description="the speaker's video"),
                     audio: UploadFile = File(..., description="the new speech"),
                     preset: str | None = Form(None, description=f"one of {', '.join(PRESETS)}: sets the "
                                               "sampler, steps, DeepCache and precision; fields sent explicitly win"),
                     options: dict = Depends(form_options), ctx: Context = Depends(context)) -> dict:
    """Queue a dubbing job; 400 for bad uploads or options, 413 too large, 429 when the queue is full."""
    sent = set((await request.form()).keys())
    unknown = sorted(sent - set(OPTION_FIELDS) - set(FILE_FIELDS) - {PRESET_FLAG})
    if unknown:
        raise HTTPException(400, f"unknown form field {unknown[0]!r} (known: {', '.join(OPTION_FIELDS)})")
    if preset is not None:
        try:
            options = form_options(**preset_values(preset, {k: v for k, v in options.items() if k in sent}))
        except UserError as exc:
            raise HTTPException(400, str(exc)) from None
    steps = options.get("inference_steps", 0)
    if steps > ctx.settings.max_steps:
        raise HTTPException(400, f"inference_steps {steps}: this server allows up to {ctx.settings.max_steps}")
    return await run_in_threadpool(accept_job, ctx, video, audio, options)


def accept_job(ctx: Context, video: UploadFile, audio: UploadFile, options: dict) -> dict:
    """Store and check the uploads, then queue the job (all or nothing)."""
    s = ctx.settings
    staging = ctx.folders.staging()
    try:
        files, names = [], []
        for kind, upload in (("video", video), ("audio", audio)):
            files.append(stored_name(kind, upload.filename))
            names.append(display_name(upload.filename, kind))
            save_upload(upload, staging / files[-1], names[-1], kind, s.max_upload_mb)
        try:
            check_video(str(staging / files[0]), s.max_upload_mb, s.max_duration_s)
            check_audio(str(staging / files[1]), s.max_upload_mb, s.max_duration_s)
        except UserError as exc:
            message = str(exc)
            for file, name in zip(files, names):
                message = message.replace(str(staging / file), name)
            raise HTTPException(400, message.replace("this app", "this server")) from None
        job_id = new_job_id()
        accepted = ctx.store.submit(job_id, options, tuple(names), tuple(files), s.max_queue,
                                    place_files=lambda: os.rename(staging, ctx.folders.job_dir(job_id)))
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already when the job was accepted
    if not accepted:
        raise HTTPException(429, f"the queue is full ({s.max_queue} jobs waiting or running); try again later",
                            headers={"Retry-After": "30"})
    ctx.wake.set()
    return ctx.store.get(job_id).public()


def save_upload(upload: UploadFile, path: Path, name: str, kind: str, max_mb: float) -> None:
    """Copy an upload to `path` in chunks; 413 as soon as it passes `max_mb`."""
    limit, size = int(max_mb * 1e6), 0
    upload.file.seek(0)
    with open(path, "wb") as out:
        while chunk := upload.file.read(COPY_CHUNK):
            size += len(chunk)
            if size > limit:
                raise HTTPException(413, f"{name}: the {kind} is larger than this server accepts ({max_mb:g} MB)")
            out.write(chunk)


def get_job_or_404(ctx: Context, job_id: str):
    job = ctx.store.get(job_id) if valid_id(job_id) else None
    if job is None:
        raise HTTPException(404, f"job {job_id}: not found (unknown id, or removed after the retention period)")
    return job


@router.get("/jobs")
def list_jobs(state: str | None = None, limit: int = 100, ctx: Context = Depends(context)) -> dict:
    """The latest jobs, newest first."""
    return {"jobs": [job.public() for job in ctx.store.list(state, max(1, min(limit, MAX_LIST)))]}


@router.get("/jobs/{job_id}")
def get_job(job_id: str, ctx: Context = Depends(context)) -> dict:
    """A job's state, progress (0..1) and error message."""
    return get_job_or_404(ctx, job_id).public()


@router.get("/jobs/{job_id}/result", response_class=FileResponse)
def get_result(job_id: str, ctx: Context = Depends(context)):
    """The dubbed video (mp4), once the job is done."""
    job = get_job_or_404(ctx, job_id)
    result = ctx.folders.result(job_id)
    if job.state != "done":
        raise HTTPException(409, f"job {job_id} is {job.state}: no result" + (f" ({job.error})" if job.error else ""))
    if not result.is_file():
        raise HTTPException(404, f"job {job_id}: the result was removed")
    return FileResponse(result, media_type="video/mp4", filename=f"{job_id}.mp4")


@router.delete("/jobs/{job_id}")
def cancel_job(job_id: str, ctx: Context = Depends(context)) -> dict:
    """Cancel a queued or running job (a running one stops at its next progress report)."""
    previous = ctx.store.cancel(job_id) if valid_id(job_id) else None
    if previous is None:
        get_job_or_404(ctx, job_id)
    if previous in FINISHED:
        raise HTTPException(409, f"job {job_id} is already {previous}")
    if previous == "running":
        for worker in ctx.workers:
            worker.cancel(job_id)
    else:
        ctx.folders.keep_only_result(job_id, keep_result=False)
    return ctx.store.get(job_id).public()


def healthz(ctx: Context = Depends(context)) -> dict:
    """Liveness: the workers (device, current job) and how many jobs are in each state."""
    workers = [{"device": w.device, "job": w.current, "alive": w.is_alive()} for w in ctx.workers]
    return {"status": "ok", "workers": workers, "jobs": ctx.store.counts()}


# -- the application -----------------------------------------------------------------------------

class BodyLimit:
    """413 for request bodies over `max_bytes`: at once from Content-Length, else while reading."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        message = f"request body larger than this server accepts ({self.max_bytes / 1e6:.0f} MB)"
        length = dict(scope["headers"]).get(b"content-length", b"0")
        if length.isdigit() and int(length) > self.max_bytes:
            return await JSONResponse({"detail": message}, 413)(scope, receive, send)
        received = 0

        async def limited_receive():
            nonlocal received
            event = await receive()
            received += len(event.get("body", b""))
            if received > self.max_bytes:
                raise HTTPException(413, message)  # FastAPI passes HTTPExceptions from the body through
            return event

        await self.app(scope, limited_receive, send)


async def one_line_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """400 with `<field>: <problem>` (FastAPI's default is a 422 with a list of objects)."""
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    field = next((str(part) for part in reversed(first.get("loc", ())) if not isinstance(part, int)), "request")
    return JSONResponse({"detail": f"{field}: {first.get('msg', 'invalid value')}"}, 400)


def create_app(settings: ServerSettings, dubs: dict[str, DubFn]) -> FastAPI:
    """The API over `settings.jobs_dir`, with one worker per entry of `dubs` (device -> DubFn).

    Jobs a killed server left running are queued again and its leftovers removed before the
    workers start (when the app starts serving).
    """
    store, folders = JobStore(settings.jobs_dir), JobFolders(settings.jobs_dir)
    store.recover()
    folders.sweep(store.ids())
    wake = threading.Event()
    workers = [Worker(store, folders, dub, device, wake) for device, dub in dubs.items()]
    janitor = Janitor(store, folders, settings.retention_hours * 3600)
    threads = [*workers, janitor]

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        for thread in threads:
            thread.start()
        yield
        for worker in workers:  # a job cut short by this shutdown runs again, first, at the next start
            if worker.current:
                store.requeue(worker.current)
        for thread in threads:
            thread.stop()

    app = FastAPI(title="LatentSync", summary="Lip-sync dubbing jobs: upload a video and a speech track, "
                                              "download the dubbed video.", lifespan=lifespan)
    app.state.ctx = Context(settings, store, folders, workers, janitor, wake)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_exception_handler(RequestValidationError, one_line_validation_error)
    app.include_router(router)
    app.add_api_route("/healthz", healthz, methods=["GET"])
    return app
