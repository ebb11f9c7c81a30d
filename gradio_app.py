"""LatentSync in the browser: upload a video and a speech track (or record it), get the dubbed video.

    python gradio_app.py [--checkpoints_dir checkpoints] [--host 127.0.0.1] [--port 7860] [--share]

The flags are the fields of latentsync.app.AppSettings (the model-file and hardware flags are
the inference CLI's).

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
from latentsync.cli_args import add_arguments, from_args, run_cli
from latentsync.errors import UserError
from latentsync.pipelines.options import option_field

GUIDANCE_STEP = 0.1
VIDEO_HEIGHT = 420  # px; portrait clips would otherwise fill the screen
MODEL_QUEUE = "lipsync"
ERROR_SECONDS = None  # error toasts stay until closed
CSS = "#problem {border: 2px solid #d33; border-radius: 8px; padding: 0 12px;}"

logger = logging.getLogger("gradio_app")


def parse_args(argv=None) -> AppSettings:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser, AppSettings)
    return from_args(AppSettings, parser.parse_args(argv))


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


def serve(settings: AppSettings) -> None:
    settings.check()
    service = LipsyncService(settings)
    if service.load():
        print(f"Models loaded from {settings.checkpoints_dir}", flush=True)
    else:
        print(f"WARNING: {service.problem()}\nThe page opens but cannot dub until this is fixed.", flush=True)
    examples = find_examples(settings.examples_dir)
    demo = build_demo(service, examples)
    demo.queue(default_concurrency_limit=1, max_size=settings.max_queue)
    Path(settings.output_dir).mkdir(parents=True, exist_ok=True)
    allowed = [str(Path(settings.output_dir).resolve())]
    if examples:
        allowed.append(str(Path(settings.examples_dir).resolve()))
    demo.launch(server_name=settings.host, server_port=settings.port, share=settings.share, allowed_paths=allowed,
                max_file_size=f"{settings.max_upload_mb:g}mb", css=CSS, footer_links=["gradio", "settings"])


def main(argv=None) -> int:
    return run_cli(lambda: serve(parse_args(argv)), "%(levelname)s: %(message)s")


if __name__ == "__main__":
    sys.exit(main())
