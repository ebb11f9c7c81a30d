"""The Gradio app as a user meets it: started as a server, driven in a real headless Chromium.

Needs Debian's `chromium` (/usr/bin/chromium), Playwright's Python package and the demo clips in assets/.
The app runs on tiny random checkpoints, so the mouth it paints is noise; what is checked is the
plumbing: uploads, settings, progress, the result file (frames, fps, audio), errors in the page,
run folders, and that the server keeps serving after a bad request.
"""

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from latentsync.app import AppSettings, LipsyncService, check_video, find_examples, new_run_dir
from latentsync.errors import UserError

REPO = Path(__file__).resolve().parents[1]
MEDIA = REPO / "assets"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = REPO / "test_artifacts"
CLIP_SECONDS = 2
CLIP_SIZE = "540:960"  # the demo is 1080x1920; half size keeps the face pass quick
STARTUP_TIMEOUT_S = 180
RUN_TIMEOUT_MS = 240_000


# -- helpers -----------------------------------------------------------------------------------


def ffmpeg(*args: str) -> None:
    import imageio_ffmpeg

    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", *args], check=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(port: int, log_path: Path, *args: str) -> subprocess.Popen:
    """gradio_app.py in a subprocess; returns once it answers HTTP (or fails with its log)."""
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, str(REPO / "gradio_app.py"), "--port", str(port), *args],
                            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1",
                                                                                  "GRADIO_ANALYTICS_ENABLED": "False"})
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the app exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(1)
    stop(proc)
    pytest.fail(f"the app did not answer within {STARTUP_TIMEOUT_S} s:\n{log_path.read_text()[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run_folders(out_dir: Path) -> set[Path]:
    return {p for p in out_dir.iterdir() if p.is_dir()} if out_dir.is_dir() else set()


def upload(page, elem_id: str, path: Path) -> None:
    page.locator(f"#{elem_id} input[type=file]").set_input_files(str(path))


def set_number(page, elem_id: str, value) -> None:
    """Type into the number box of a slider."""
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def set_fast(page) -> None:
    """1 inference step without classifier-free guidance: the cheapest run the page allows."""
    set_number(page, "inference_steps", 1)
    set_number(page, "guidance_scale", 1.0)


def wait_for_result(page):
    """The result <video> once the run is done; returns its src."""
    video = page.locator("#result video")
    video.wait_for(state="attached", timeout=RUN_TIMEOUT_MS)
    return video.get_attribute("src")


def check_output(path: Path, frames: int) -> None:
    from latentsync.video import count_frames, probe_video

    info = probe_video(path)
    assert info.has_audio, f"{path}: no audio stream"
    assert info.fps == pytest.approx(25.0, abs=0.01)
    assert count_frames(path, fps=None) == frames


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """A folder with a 2 s talking-head clip + 2 s of speech (also the app's examples folder)."""
    for name in ("demo1_video.mp4", "demo1_audio.wav"):
        assert (MEDIA / name).is_file(), f"test media missing from the repository: {MEDIA / name}"
    folder = tmp_path_factory.mktemp("clips")
    ffmpeg("-i", str(MEDIA / "demo1_video.mp4"), "-t", str(CLIP_SECONDS), "-vf", f"scale={CLIP_SIZE}",
           "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac",
           str(folder / "clip_video.mp4"))
    ffmpeg("-i", str(MEDIA / "demo1_audio.wav"), "-t", str(CLIP_SECONDS), str(folder / "clip_audio.wav"))
    return folder


@pytest.fixture(scope="module")
def app(tmp_path_factory, clips):
    """The app on a free port with tiny checkpoints; yields (url, output folder)."""
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium (apt-get install chromium)")
    pytest.importorskip("playwright.sync_api", reason="Playwright's Python package is not installed")
    from scripts.make_tiny_checkpoints import inference_flags, make_tiny_checkpoints

    root = tmp_path_factory.mktemp("app")
    make_tiny_checkpoints(root / "ckpt")
    port = free_port()
    proc = start_app(port, root / "app.log", *inference_flags(root / "ckpt"), "--output_dir",
                     str(root / "out"), "--examples_dir", str(clips), "--min_steps", "1", "--device", "cpu")
    yield f"http://127.0.0.1:{port}/", root / "out"
    stop(proc)


@pytest.fixture(scope="module")
def browser(app):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, app):
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.goto(app[0])
    page.locator("#generate").wait_for(timeout=60_000)
    yield page
    page.close()


# -- logic without a browser -------------------------------------------------------------------


def test_missing_files_are_listed_with_where_to_get_them(tmp_path):
    settings = AppSettings(checkpoints_dir=str(tmp_path))
    files = settings.model_files()
    assert files.unet_config == REPO / "configs/unet/stage2_512.yaml"  # the config ships with the repo
    assert (files.unet_ckpt, Path(files.vae)) == (tmp_path / "latentsync_unet.pt", tmp_path / "sd-vae-ft-mse")
    missing = files.missing()
    assert [line.split(": ")[0] for line in missing] == [str(tmp_path / name) for name in
                                                         ("latentsync_unet.pt", "whisper/tiny.pt", "sd-vae-ft-mse")]
    assert all("huggingface.co/" in line for line in missing)

    (tmp_path / "unet.yaml").write_text("model: {}\n")  # another layout is named file by file, never guessed
    (tmp_path / "vae").mkdir()
    assert len(AppSettings(checkpoints_dir=str(tmp_path)).model_files().missing()) == 3
    given = AppSettings(checkpoints_dir=str(tmp_path), unet_config_path=str(tmp_path / "unet.yaml"),
                        vae_path=str(tmp_path / "vae")).model_files()
    assert (given.unet_config, given.vae) == (tmp_path / "unet.yaml", str(tmp_path / "vae"))
    assert f"{tmp_path / 'vae'}: VAE folder not found" in "\n".join(given.missing())  # no config.json in it

    service = LipsyncService(settings)
    assert not service.load() and "Missing checkpoints" in service.problem()
    assert "make_tiny_checkpoints" in service.problem()
    with pytest.raises(UserError, match="Missing checkpoints"):
        service.run("v.mp4", "a.wav")


def test_run_folders_are_unique(tmp_path):
    folders = {new_run_dir(tmp_path) for _ in range(20)}
    assert len(folders) == 20 and all(f.parent == tmp_path and f.is_dir() for f in folders)
    assert all(re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{12}", f.name) for f in folders)


def test_examples_pair_local_files(tmp_path):
    for name in ("b_video.mp4", "a_video.mp4", "a_audio.wav", "speech.mp3", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert find_examples(tmp_path) == [[str(tmp_path / "a_video.mp4"), str(tmp_path / "a_audio.wav")],
                                       [str(tmp_path / "b_video.mp4"), str(tmp_path / "speech.mp3")]]
    assert find_examples(tmp_path / "absent") == [] and find_examples(None) == []


def test_upload_checks(tmp_path, clips):
    fake = tmp_path / "fake.mp4"
    fake.write_text("this is not a video\n")
    with pytest.raises(UserError, match="not a readable video"):
        check_video(str(fake), max_mb=10, max_duration_s=10)
    with pytest.raises(UserError, match="up to 1 s"):
        check_video(str(clips / "clip_video.mp4"), max_mb=10, max_duration_s=1)
    with pytest.raises(UserError, match="up to 0.1 MB"):
        check_video(str(clips / "clip_video.mp4"), max_mb=0.1, max_duration_s=10)
    assert check_video(str(clips / "clip_video.mp4"), max_mb=10, max_duration_s=10).width == 540


def test_startup_without_checkpoints_lists_them(tmp_path):
    """No checkpoints: the server still comes up and the page says what is missing and where to get it."""
    port = free_port()
    proc = start_app(port, tmp_path / "app.log", "--checkpoints_dir", str(tmp_path / "none"),
                     "--output_dir", str(tmp_path / "out"))
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=10) as r:
            config = json.loads(r.read())
    finally:
        stop(proc)
    log = (tmp_path / "app.log").read_text()
    problem = next(c["props"]["value"] for c in config["components"] if c["props"].get("elem_id") == "problem")
    for text in (log, problem):
        assert "Missing checkpoints" in text and "latentsync_unet.pt" in text and "download_checkpoints" in text
    button = next(c for c in config["components"] if c["props"].get("elem_id") == "generate")
    assert button["props"]["interactive"] is False
    assert next(d for d in config["dependencies"] if d["api_name"] == "generate")["queue"]


# -- in the browser ----------------------------------------------------------------------------


def test_dub_a_clip_in_the_browser(page, app, clips):
    url, out_dir = app
    before = run_folders(out_dir)
    upload(page, "video_in", clips / "clip_video.mp4")
    upload(page, "audio_in", clips / "clip_audio.wav")
    page.get_by_text("540x960, 2.0 s").wait_for(timeout=30_000)  # upload-time check of the video
    set_number(page, "inference_steps", 1)  # guidance stays at its default 1.5
    page.locator("#generate").click()
    # the bar is fed by the pipeline's own progress calls
    page.locator("#result").get_by_text(re.compile(r"Face detection: frame|Lip sync: segment")).first.wait_for(
        timeout=60_000)
    src = wait_for_result(page)
    page.get_by_text("Saved to").wait_for(timeout=10_000)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "gradio_result.png"), full_page=True)

    new = run_folders(out_dir) - before
    assert len(new) == 1, new
    run = new.pop()
    out = run / "out.mp4"
    options = json.loads((run / "settings.json").read_text())["options"]
    assert (options["inference_steps"], options["guidance_scale"], options["seed"]) == (1, 1.5, 1247)
    assert str(out) in page.locator("#status").inner_text()
    check_output(out, frames=25 * CLIP_SECONDS)
    served = page.request.get(src if src.startswith("http") else url.rstrip("/") + src)
    assert served.ok and served.body() == out.read_bytes()  # the page plays exactly the file on disk


def test_bad_uploads_show_errors_and_the_app_keeps_serving(page, browser, app, clips, tmp_path):
    url, out_dir = app
    before = run_folders(out_dir)
    fake = tmp_path / "holiday.mp4"
    fake.write_text("just some text, not a video\n" * 10)
    upload(page, "video_in", fake)
    upload(page, "audio_in", clips / "clip_audio.wav")
    page.locator("#generate").click()
    page.get_by_text(re.compile(r"holiday\.mp4: not a readable video file")).first.wait_for(timeout=60_000)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "gradio_bad_upload.png"))

    no_face = tmp_path / "no_face.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=320x240:rate=25", "-t", "1", "-c:v", "libx264", "-preset",
           "ultrafast", "-pix_fmt", "yuv420p", str(no_face))
    page.reload()
    page.locator("#generate").wait_for(timeout=60_000)
    upload(page, "video_in", no_face)
    page.locator("#generate").click()  # and no audio: that is said first
    page.get_by_text("no audio: upload or record the speech").first.wait_for(timeout=60_000)
    upload(page, "audio_in", clips / "clip_audio.wav")
    page.locator("#generate").click()
    page.get_by_text(re.compile(r"no_face\.mp4: no face found")).first.wait_for(timeout=60_000)
    assert run_folders(out_dir) == before  # rejected requests leave no run folders

    # the next requests still work: one from the example row of the user's local files, one from
    # a second browser tab at the same time; the queue runs them one after the other
    page.reload()
    page.locator("#generate").wait_for(timeout=60_000)
    page.get_by_text("clip_audio.wav").first.click()
    page.locator("#video_in video").wait_for(timeout=30_000)
    set_fast(page)
    other = browser.new_page(viewport={"width": 1280, "height": 1000})
    try:
        other.goto(url)
        other.locator("#generate").wait_for(timeout=60_000)
        upload(other, "video_in", clips / "clip_video.mp4")
        upload(other, "audio_in", clips / "clip_audio.wav")
        other.get_by_text("540x960, 2.0 s").wait_for(timeout=30_000)
        set_fast(other)
        page.locator("#generate").click()
        other.locator("#generate").click()
        other.locator("#result").get_by_text(re.compile(r"queue: \d+/\d+")).wait_for(timeout=30_000)
        wait_for_result(page)
        wait_for_result(other)
    finally:
        other.close()
    new = run_folders(out_dir) - before
    assert len(new) == 2
    first, second = sorted(new, key=lambda run: (run / "settings.json").stat().st_mtime_ns)
    assert (second / "settings.json").stat().st_mtime_ns >= (first / "out.mp4").stat().st_mtime_ns, \
        "the second request started before the first one had finished"
    for run in (first, second):
        assert json.loads((run / "settings.json").read_text())["options"]["guidance_scale"] == 1.0
        check_output(run / "out.mp4", frames=25 * CLIP_SECONDS)


def test_demo_clips_are_the_default_examples():
    pairs = [[str(MEDIA / f"{demo}_video.mp4"), str(MEDIA / f"{demo}_audio.wav")] for demo in ("demo1", "demo2")]
    assert all(Path(p).is_file() for pair in pairs for p in pair)
    assert find_examples(AppSettings().examples_dir) == pairs
    import gradio_app

    assert Path(gradio_app.parse_args([]).examples_dir) == MEDIA


def test_flags_are_the_settings_fields_with_their_defaults():
    import gradio_app

    assert gradio_app.parse_args([]) == AppSettings()
    given = gradio_app.parse_args(["--host", "0.0.0.0", "--port", "1", "--share", "--checkpoints_dir", "ck",
                                   "--unet_config_path", "u.yaml", "--device", "cpu", "--dtype", "fp16",
                                   "--face_backend", "face_alignment", "--output_dir", "o", "--examples_dir", "e",
                                   "--max_upload_mb", "2", "--max_duration_s", "3", "--min_steps", "4",
                                   "--max_queue", "5"])
    assert (given.host, given.port, given.share, given.checkpoints_dir, given.unet_config_path) == \
        ("0.0.0.0", 1, True, "ck", "u.yaml")
    assert (given.device, given.dtype, given.face_backend, given.output_dir, given.examples_dir) == \
        ("cpu", "fp16", "face_alignment", "o", "e")
    assert (given.max_upload_mb, given.max_duration_s, given.min_steps, given.max_queue) == (2.0, 3.0, 4, 5)
    from latentsync.server.settings import ServerSettings

    server = ServerSettings(checkpoints_dir="ck", jobs_dir="j")
    assert (server.max_upload_mb, server.max_duration_s) == (AppSettings().max_upload_mb, AppSettings().max_duration_s)
    with pytest.raises(UserError, match="--min_steps 0"):
        AppSettings(min_steps=0).check()
