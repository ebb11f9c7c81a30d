"""LatentSync in the browser: upload a video and a speech track (or record it), get the dubbed video.

    python gradio_app.py [--checkpoints_dir checkpoints] [--host 127.0.0.1] [--port 7860] [--share]

Uses the same pipeline as inference.sh. One request runs the model at a time (the others wait in
the queue); results go to outputs/gradio/<timestamp>-<uuid>/out.mp4. Missing checkpoints are listed
at startup and in the page instead of crashing. The setting controls are LipsyncOptions fields
(same names as the inference.sh flags, same defaults and bounds); the example row shows the demo
clips in assets/.
"""

import argparse
import logging
import sys
from pathlib import Path

import gradio as gr

from latentsync.app import AppSettings, LipsyncService, check_video, find_examples, friendly
from latentsync.checkpoints import CHECKPOINTS_DIR
from latentsync.errors import UserError
from latentsync.pipelines.options import option_field

REPO = Path(__file__).resolve().parent
DEFAULT_EXAMPLES_DIR = REPO / "assets"
MAX_STEPS = option_field("inference_steps").metadata["ui_max"]
GUIDANCE_STEP = 0.1
VIDEO_HEIGHT = 420  # px; portrait clips would otherwise fill the screen
MODEL_QUEUE = "lipsync"
ERROR_SECONDS = None  # error toasts stay until closed
CSS = "#problem {border: 2px solid #d33; border-radius: 8px; padding: 0 12px;}"

logger = logging.getLogger("gradio_app")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 exposes the app on the network)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--share", action="store_true", help="also open a public gradio.live link (off by default)")
    p.add_argument("--checkpoints_dir", default=str(REPO / CHECKPOINTS_DIR),
                   help="official names (latentsync_unet.pt, whisper/tiny.pt, sd-vae-ft-mse/) or the layout "
                        "of scripts.make_tiny_checkpoints (unet.yaml, latentsync_unet.pt, whisper/tiny.pt, vae/)")
    p.add_argument("--unet_config_path", default=None,
                   help="default: CHECKPOINTS_DIR/unet.yaml if present, else configs/unet/stage2_512.yaml")
    p.add_argument("--device", default=None, help="cuda, cuda:1, mps or cpu (default: best available)")
    p.add_argument("--dtype", default=None, choices=["fp32", "fp16", "bf16"], help="default: fp16 on CUDA, else fp32")
    p.add_argument("--face_backend", default="mediapipe", choices=["mediapipe", "insightface", "face_alignment"])
    p.add_argument("--output_dir", default=str(REPO / "outputs/gradio"), help="run folders are created here")
    p.add_argument("--examples_dir", default=str(DEFAULT_EXAMPLES_DIR),
                   help="folder of video/audio files shown as examples, paired by name (x_video.mp4 + x_audio.wav); "
                        "default: the demo clips in assets/")
    p.add_argument("--max_upload_mb", type=float, default=200.0, help="largest accepted upload")
    p.add_argument("--max_duration_s", type=float, default=60.0, help="longest accepted video or audio")
    p.add_argument("--min_steps", type=int, default=10, help="smallest inference-step value the slider allows")
    p.add_argument("--max_queue", type=int, default=20, help="requests that may wait in the queue")
    args = p.parse_args(argv)
    if not 1 <= args.min_steps <= MAX_STEPS:
        p.error(f"--min_steps must be between 1 and {MAX_STEPS}")
    return args


def make_handler(service: LipsyncService):
    """The button's callback: run the pipeline, turning user mistakes into in-page errors."""

    def generate(video, audio, inference_steps, guidance_scale, seed, progress=gr.Progress()):
        if not service.ready:
            raise gr.Error("The models are not loaded; the box at the top of the page says why.",
                           duration=ERROR_SECONDS, print_exception=False)
        try:
            result = service.run(video, audio, inference_steps, guidance_scale, seed,
                                 progress=lambda frac, desc: progress(frac, desc=desc),
                                 warn=lambda msg: gr.Warning(friendly(msg, video, audio)))
        except UserError as exc:
            raise gr.Error(friendly(str(exc), video, audio), duration=ERROR_SECONDS, print_exception=False) from None
        except Exception as exc:  # a bug: log it, tell the user, keep serving
            logger.exception("generation failed")
            raise gr.Error(f"Internal error ({type(exc).__name__}: {exc}); see the server log",
                           duration=ERROR_SECONDS, print_exception=False) from None
        return str(result.path), result.summary

    return generate


def make_video_check(service: LipsyncService):
    """Upload-time feedback on the video: its size and length, or what is wrong with it."""

    def describe(video):
        if not video:
            return ""
        s = service.settings
        try:
            info = check_video(video, s.max_upload_mb, s.max_duration_s)
        except UserError as exc:
            message = friendly(str(exc), video)
            gr.Warning(message)
            return f"⚠️ {message}"
        return f"{info.width}x{info.height}, {info.duration:.1f} s at {info.fps:.2f} fps"

    return describe


def option_controls(settings: AppSettings) -> list:
    """The setting controls, one per LipsyncOptions field: elem_id, default, label and help from the field."""
    steps, guidance, seed = (option_field(name) for name in ("inference_steps", "guidance_scale", "seed"))

    def common(f):
        return dict(label=f.metadata["label"], info=f.metadata["help"], elem_id=f.name)

    return [gr.Slider(settings.min_steps, settings.max_steps, value=max(steps.default, settings.min_steps), step=1,
                      **common(steps)),
            gr.Slider(guidance.metadata["min"], guidance.metadata["ui_max"], value=guidance.default,
                      step=GUIDANCE_STEP, **common(guidance)),
            gr.Number(value=seed.default, precision=0, **common(seed))]


def build_demo(service: LipsyncService, examples: list[list[str]]) -> gr.Blocks:
    s = service.settings
    with gr.Blocks(title="LatentSync") as demo:
        gr.Markdown("# LatentSync lip sync\nUpload a video of a person speaking and the new speech; the mouth "
                    "is regenerated to match the speech. The result is as long as the audio.")
        problem = service.problem()
        if problem:
            gr.Markdown("**The app cannot dub videos yet.**\n\n```\n" + problem + "\n```",
                        elem_id="problem")
        with gr.Row():
            with gr.Column():
                video_in = gr.Video(label="Video (the speaker's face)", sources=["upload"], height=VIDEO_HEIGHT,
                                    elem_id="video_in")
                video_info = gr.Markdown(elem_id="video_info")
                audio_in = gr.Audio(label="Speech audio", sources=["upload", "microphone"], type="filepath",
                                    elem_id="audio_in")
                with gr.Row():
                    controls = option_controls(s)
                button = gr.Button("Generate", variant="primary", interactive=problem is None, elem_id="generate")
                gr.Markdown(f"Limits: {s.max_upload_mb:g} MB and {s.max_duration_s:g} s per file. "
                            "Requests run one at a time.")
            with gr.Column():
                result = gr.Video(label="Result", interactive=False, height=VIDEO_HEIGHT, elem_id="result")
                status = gr.Markdown(elem_id="status")
        if examples:
            gr.Examples(examples=examples, inputs=[video_in, audio_in], label="Examples", cache_examples=False)
        video_in.change(make_video_check(service), video_in, video_info, show_progress="hidden",
                        concurrency_limit=None, concurrency_id="upload_checks")  # never waits for the model
        button.click(make_handler(service), [video_in, audio_in, *controls], [result, status],
                     concurrency_limit=1, concurrency_id=MODEL_QUEUE)  # one model run at a time
    return demo


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    args = parse_args(argv)
    settings = AppSettings(checkpoints_dir=args.checkpoints_dir, unet_config_path=args.unet_config_path,
                           device=args.device, dtype=args.dtype, face_backend=args.face_backend,
                           output_dir=args.output_dir, max_upload_mb=args.max_upload_mb,
                           max_duration_s=args.max_duration_s, min_steps=args.min_steps, max_steps=MAX_STEPS,
                           examples_dir=args.examples_dir)
    service = LipsyncService(settings)
    if service.load():
        print(f"Models loaded from {args.checkpoints_dir}", flush=True)
    else:
        print(f"WARNING: {service.problem()}\nThe page opens but cannot dub until this is fixed.", flush=True)
    examples = find_examples(args.examples_dir)
    demo = build_demo(service, examples)
    demo.queue(default_concurrency_limit=1, max_size=args.max_queue)
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    allowed = [str(Path(args.output_dir).resolve())] + ([str(Path(args.examples_dir).resolve())] if examples else [])
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, allowed_paths=allowed,
                max_file_size=f"{args.max_upload_mb:g}mb", css=CSS, footer_links=["gradio", "settings"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
