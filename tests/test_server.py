"""The HTTP job server: crash recovery with the real pipeline (a server process killed with SIGKILL
mid-job), and the API's limits and checks in process (queue length, bad uploads, file names,
API key, upload size, cancelling, retention)."""

import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests
from fastapi.testclient import TestClient

from conftest import MEDIA, REPO, need
from latentsync.errors import UserError
from latentsync.server.api import create_app
from latentsync.server.cli import main as server_main
from latentsync.server.settings import ServerSettings
from latentsync.io import ffmpeg_exe
from latentsync.video import iter_frames, probe_video

SPEECH_S = 0.6  # 15 output frames: one UNet segment with the tiny checkpoints
POLL_S = 0.2


def ffmpeg(*args):
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", *map(str, args)], check=True)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """demo1's first second scaled to 270x480 (the face stays detectable) and 0.6 s of its speech."""
    folder = tmp_path_factory.mktemp("media")
    ffmpeg("-i", need(MEDIA / "demo1_video.mp4"), "-t", 1, "-vf", "scale=270:480", "-c:v", "libx264", "-crf", 12,
           "-c:a", "aac", folder / "clip.mp4")
    ffmpeg("-i", need(MEDIA / "demo1_audio.wav"), "-t", SPEECH_S, folder / "speech.wav")
    (folder / "notes.txt").write_text("this is not a video\n")
    return SimpleNamespace(video=folder / "clip.mp4", audio=folder / "speech.wav", text=folder / "notes.txt")


def upload(media, video_name="clip.mp4", video=None, **fields):
    files = {"video": (video_name, Path(video or media.video).read_bytes(), "application/octet-stream"),
             "audio": ("speech.wav", media.audio.read_bytes(), "audio/wav")}
    return dict(files=files, data={k: str(v) for k, v in fields.items()})


def wait_for(condition, timeout_s, what):
    """Poll `condition()` until it returns a true value (bounded)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(POLL_S)
    raise AssertionError(f"timed out waiting for {what}")


def leftovers(jobs_dir: Path) -> list[str]:
    """Anything in the jobs folder besides the database and finished results."""
    allowed = {"jobs.sqlite3", "jobs.sqlite3-wal", "jobs.sqlite3-shm", ".incoming"}
    found = []
    for path in jobs_dir.rglob("*"):
        rel = path.relative_to(jobs_dir)
        if str(rel) in allowed or (len(rel.parts) == 2 and rel.name == "result.mp4") or \
                (len(rel.parts) == 1 and path.is_dir()):
            continue
        found.append(str(rel))
    return found


# -- a real server process, killed mid-job --------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(tiny, jobs_dir, port, log):
    from scripts.make_tiny_checkpoints import inference_flags

    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    process = subprocess.Popen([sys.executable, "-m", "latentsync.server", *inference_flags(tiny), "--jobs_dir",
                                jobs_dir, "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"],
                               cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def healthy():
        assert process.poll() is None, f"server exited with {process.returncode}"
        try:
            return requests.get(f"{url}/healthz", timeout=2).ok
        except requests.ConnectionError:
            return False

    wait_for(healthy, 180, "the server to start")
    return process, url


def stop(process):
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_job_survives_sigkill_of_the_server(media, tmp_path):
    from scripts.make_tiny_checkpoints import make_tiny_checkpoints

    tiny = make_tiny_checkpoints(tmp_path / "tiny")
    jobs_dir, port = tmp_path / "jobs", free_port()
    with open(tmp_path / "server.log", "w") as log:
        process, url = start_server(tiny, jobs_dir, port, log)
        try:
            reply = requests.post(f"{url}/jobs", **upload(media, inference_steps=1), timeout=60)
            assert reply.status_code == 201, reply.text
            job_id = reply.json()["id"]
            job = lambda: requests.get(f"{url}/jobs/{job_id}", timeout=10).json()  # noqa: E731
            seen = wait_for(lambda: (j := job())["state"] == "running" and j["progress"] > 0 and j, 120,
                            "the job to make progress")
            process.send_signal(signal.SIGKILL)
            process.wait(30)
            assert seen["state"] == "running" and seen["attempts"] == 1

            process, url = start_server(tiny, jobs_dir, port, log)
            done = wait_for(lambda: (j := job())["state"] in ("done", "failed", "cancelled") and j, 300,
                            "the job to finish after the restart")
            assert done["state"] == "done", done
            assert done["attempts"] == 2 and done["progress"] == 1.0
            assert [j["id"] for j in requests.get(f"{url}/jobs", timeout=10).json()["jobs"]] == [job_id]

            result = requests.get(f"{url}/jobs/{job_id}/result", timeout=60)
            assert result.status_code == 200 and result.headers["content-type"] == "video/mp4"
            out = tmp_path / "result.mp4"
            out.write_bytes(result.content)
        finally:
            stop(process)
    info = probe_video(out)
    frames = sum(len(chunk) for chunk in iter_frames(out, fps=None))
    assert info.has_audio and frames == info.num_frames == round(SPEECH_S * 25)
    assert (info.width, info.height) == (270, 480)
    assert leftovers(jobs_dir) == []
    assert sorted(p.relative_to(jobs_dir).as_posix() for p in jobs_dir.rglob("*.mp4")) == [f"{job_id}/result.mp4"]


# -- the API in process, with a stand-in for the pipeline ---------------------------------------------

class GatedDub:
    """Stands in for the pipeline where only the queue is under test: each job waits until `gate`
    opens (reporting progress, so it can be cancelled), then copies the video to the output."""

    def __init__(self):
        self.gate = threading.Event()
        self.runs = []

    def __call__(self, video, audio, out, options, on_progress, work_dir):
        self.runs.append(video)
        while not self.gate.wait(0.05):
            on_progress(0.5, "faces")
        shutil.copy(video, out)
        return SimpleNamespace(warnings=[])


def make_client(tmp_path, dub, **settings):
    settings = ServerSettings(checkpoints_dir=str(tmp_path / "unused"), jobs_dir=str(tmp_path / "jobs"), **settings)
    return TestClient(create_app(settings, {"cpu": dub}))


def test_burst_beyond_the_queue_gets_429_and_accepted_jobs_finish(media, tmp_path):
    dub = GatedDub()
    with make_client(tmp_path, dub, max_queue=5) as client:
        with ThreadPoolExecutor(20) as pool:
            replies = list(pool.map(lambda i: client.post("/jobs", **upload(media, f"clip{i}.mp4")), range(20)))
        codes = sorted(r.status_code for r in replies)
        assert codes == [201] * 5 + [429] * 15
        assert all("queue is full" in r.json()["detail"] for r in replies if r.status_code == 429)
        accepted = [r.json()["id"] for r in replies if r.status_code == 201]
        dub.gate.set()
        wait_for(lambda: all(client.get(f"/jobs/{i}").json()["state"] == "done" for i in accepted), 60, "the jobs")
        for job_id in accepted:
            assert client.get(f"/jobs/{job_id}/result").content == media.video.read_bytes()
        assert len(dub.runs) == 5
    assert leftovers(tmp_path / "jobs") == []
    with sqlite3.connect(tmp_path / "jobs" / "jobs.sqlite3") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_text_file_as_video_gets_400_with_the_cli_message(media, tmp_path):
    with pytest.raises(UserError) as cli_error:  # what the command line prints for the same file
        probe_video(media.text)
    expected = str(cli_error.value).replace(str(media.text), "notes.txt")
    with make_client(tmp_path, GatedDub()) as client:
        reply = client.post("/jobs", **upload(media, "notes.txt", video=media.text))
        assert reply.status_code == 400
        assert reply.json()["detail"] == expected and "\n" not in expected and "notes.txt: " in expected
        assert client.get("/jobs").json()["jobs"] == []
        bad_option = client.post("/jobs", **upload(media, silence="loud"))
        assert bad_option.status_code == 400 and bad_option.json()["detail"].startswith("silence 'loud'")
        typo = client.post("/jobs", **upload(media, inference_step=2))
        assert typo.status_code == 400 and "inference_step" in typo.json()["detail"]
    assert leftovers(tmp_path / "jobs") == []


def test_uploaded_file_names_never_reach_a_path(media, tmp_path):
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    dub = GatedDub()
    with make_client(work, dub) as client:
        reply = client.post("/jobs", **upload(media, "../../x.mp4"))
        assert reply.status_code == 201, reply.text
        job = reply.json()
        assert job["video_name"] == "x.mp4"
        stored = work / "jobs" / job["id"] / "video.mp4"
        assert stored.read_bytes() == media.video.read_bytes()
        dub.gate.set()
        wait_for(lambda: client.get(f"/jobs/{job['id']}").json()["state"] == "done", 30, "the job")
    assert not any(p.name == "x.mp4" for p in tmp_path.rglob("*"))
    assert client.get("/jobs/..%2F..%2Fx").status_code in (401, 404)


def test_api_key_is_required_when_set(media, tmp_path):
    with make_client(tmp_path, GatedDub(), api_key="s3cret") as client:
        assert client.post("/jobs", **upload(media)).status_code == 401
        assert client.get("/jobs").status_code == 401
        assert client.get("/jobs", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.get("/jobs", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert client.get("/healthz").status_code == 200


def test_public_host_without_api_key_is_refused(tmp_path, capsys):
    code = server_main(["--checkpoints_dir", str(tmp_path), "--jobs_dir", str(tmp_path / "jobs"), "--host", "0.0.0.0"])
    assert code == 2 and "--api_key" in capsys.readouterr().err


def test_upload_over_the_size_limit_gets_413(media, tmp_path):
    with make_client(tmp_path, GatedDub(), max_upload_mb=0.01) as client:
        reply = client.post("/jobs", **upload(media))
        assert reply.status_code == 413 and "larger than this server accepts" in reply.json()["detail"]
        assert client.get("/jobs").json()["jobs"] == []


def test_cancel_queued_and_running_jobs(media, tmp_path):
    dub = GatedDub()
    with make_client(tmp_path, dub) as client:
        first, second = (client.post("/jobs", **upload(media)).json()["id"] for _ in range(2))
        wait_for(lambda: client.get(f"/jobs/{first}").json()["state"] == "running", 30, "the first job to start")
        assert client.delete(f"/jobs/{second}").json()["state"] == "cancelled"
        assert client.delete(f"/jobs/{first}").json()["state"] == "cancelled"
        wait_for(lambda: client.get("/healthz").json()["workers"][0]["job"] is None, 30, "the worker to stop")
        assert client.get(f"/jobs/{first}/result").status_code == 409
        assert client.delete(f"/jobs/{first}").status_code == 409
        assert len(dub.runs) == 1
    assert leftovers(tmp_path / "jobs") == []
    assert not (tmp_path / "jobs" / first / "result.mp4").exists()


def test_results_older_than_the_retention_period_are_removed(media, tmp_path):
    dub = GatedDub()
    dub.gate.set()
    with make_client(tmp_path, dub, retention_hours=1 / 3600) as client:  # one second
        job_id = client.post("/jobs", **upload(media)).json()["id"]
        wait_for(lambda: client.get(f"/jobs/{job_id}").status_code == 404, 30, "the job to expire")
    assert not (tmp_path / "jobs" / job_id).exists()


def test_a_job_cut_short_by_a_shutdown_runs_again_at_the_next_start(media, tmp_path):
    with make_client(tmp_path, GatedDub()) as client:  # its gate never opens
        job_id = client.post("/jobs", **upload(media)).json()["id"]
        wait_for(lambda: client.get(f"/jobs/{job_id}").json()["state"] == "running", 30, "the job to start")
    dub = GatedDub()
    dub.gate.set()
    with make_client(tmp_path, dub) as client:
        done = wait_for(lambda: (j := client.get(f"/jobs/{job_id}").json())["state"] == "done" and j, 30, "the job")
        assert done["attempts"] == 1  # the run cut short by the shutdown does not count
        assert client.get(f"/jobs/{job_id}/result").content == media.video.read_bytes()
    assert leftovers(tmp_path / "jobs") == []


def test_too_long_upload_gets_400_and_docs_list_the_option_fields(media, tmp_path):
    with make_client(tmp_path, GatedDub(), max_duration_s=0.5) as client:
        reply = client.post("/jobs", **upload(media))
        assert reply.status_code == 400
        assert reply.json()["detail"].startswith("clip.mp4: the video is 1.0 s long; this server accepts up to 0.5 s")
        assert client.get("/docs").status_code == 200
        schemas = client.get("/openapi.json").json()["components"]["schemas"]
        fields = schemas["Body_submit_job_jobs_post"]["properties"]
        assert {"video", "audio", "inference_steps", "guidance_scale", "seed", "output_fps"} <= set(fields)
        assert "temp_dir" not in fields  # a server-side path is never chosen by a client


def test_preset_fills_the_options_the_client_did_not_send(media, tmp_path):
    with make_client(tmp_path, GatedDub(), max_queue=5) as client:
        reply = client.post("/jobs", **upload(media, preset="fast", inference_steps=3))
        assert reply.status_code == 201
        options = reply.json()["options"]
        assert options["inference_steps"] == 3  # sent explicitly: wins over the preset's 6
        assert options["scheduler"] == "dpmpp" and options["enable_deepcache"] is True  # from the preset
        plain = client.post("/jobs", **upload(media)).json()["options"]
        assert plain["scheduler"] == "ddim" and plain["inference_steps"] == 20
        bad = client.post("/jobs", **upload(media, preset="fastest"))
        assert bad.status_code == 400 and bad.json()["detail"].startswith("preset 'fastest': expected one of")


def test_flags_are_the_settings_fields_with_their_defaults():
    from dataclasses import fields

    from latentsync.server.cli import parse_args

    settings = parse_args(["--checkpoints_dir", "ck", "--jobs_dir", "jobs"])
    defaults = ServerSettings(checkpoints_dir="ck", jobs_dir="jobs")
    assert settings == defaults and settings.devices == ["auto"] and settings.max_duration_s == 120.0
    old_flags = ["--host", "h", "--port", "1", "--api_key", "k", "--max_queue", "2", "--max_upload_mb", "3",
                 "--max_duration_s", "4", "--max_steps", "5", "--retention_hours", "6", "--device", "cpu, cuda:1",
                 "--dtype", "bf16", "--face_backend", "insightface", "--unet_config_path", "u.yaml"]
    given = parse_args(["--checkpoints_dir", "ck", "--jobs_dir", "jobs", *old_flags])
    assert (given.host, given.port, given.api_key, given.max_queue, given.max_upload_mb, given.max_duration_s,
            given.max_steps, given.retention_hours) == ("h", 1, "k", 2, 3.0, 4.0, 5, 6.0)
    assert (given.devices, given.dtype, given.face_backend) == (["cpu", "cuda:1"], "bf16", "insightface")
    assert given.model_files().unet_config == Path("u.yaml")
    assert {f.name for f in fields(ServerSettings)} >= {"inference_ckpt_path", "whisper_ckpt_path", "vae_path"}
    with pytest.raises(SystemExit):
        parse_args(["--jobs_dir", "jobs"])  # --checkpoints_dir stays required
