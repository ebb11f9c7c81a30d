"""LipsyncPipeline: a talking-head video + a speech track -> the dubbed video.

`__call__` reads top to bottom as the algorithm:
  1. speech -> Whisper features (silence muted) -> one audio chunk per output frame (`prepare_speech`);
  2. face pass over the video (streamed, a worker thread): track the speaker, align each face to
     the model square (dub_run.py `DubRun.face_pass`);
  3. plan 16-frame segments over runs of output frames that have a face (segments.py), and
  4. per segment: VAE-encode masked and reference faces (`encode`), denoise with the chosen sampler
     (DDIM by default, latentsync/schedulers.py) and classifier-free guidance (`denoise`;
     `segment_batch` segments per UNet call), decode (`decode`), keep generated pixels only inside
     the mask (`DubRun.generate`, main thread);
  5. paste the faces back into their frames and stream them to the encoder (`DubRun.write`, a
     worker thread); mux the speech.
One call is one `DubRun` (dub_run.py): it holds the run's state and its three workers, which
overlap (workers.py); the pipeline holds the models and the model steps (encode / denoise /
decode), which inference and training share through latentsync/models/vae.py (the latent codec)
and latentsync/models/unet.py (`unet_input`, the UNet's 13-channel layout).
Options are `LipsyncOptions` (options.py, checked when built); the call reports `Progress` events,
tells optional `RunHooks` when each phase begins and ends (results.py) and returns a
`LipsyncResult`. Files are read by latentsync/loading.py. A run's speed options (autocast
precision, CPU kernels, compile) are applied for that run by acceleration.py's `SpeedSetup`.
"""

import contextlib
import math
import os

import torch
from diffusers import AutoencoderKL, DDIMScheduler, DiffusionPipeline, SchedulerMixin

from latentsync import loading
from latentsync.audio import chunk_indices, load_audio
from latentsync.constants import MODEL_FPS, SAMPLE_RATE
from latentsync.errors import UserError
from latentsync.face.mask import DEFAULT_MASK_PATH, load_mask
from latentsync.models.unet import Conditioning, DeepCache, unet_input
from latentsync.models.vae import (decode_latents, first_generated_row, posterior, sample_latents,
                                   vae_scale_factor)
from latentsync.pipelines.acceleration import Runtime, SpeedSetup
from latentsync.pipelines.dub_run import DubRun, Speech
from latentsync.pipelines.options import LipsyncOptions
from latentsync.pipelines.results import AUDIO, MUX, UNET, LipsyncResult, Progress, ProgressCallback, RunHooks
from latentsync.pipelines.segments import plan_segments, source_index
from latentsync.schedulers import make_sampler
from latentsync.vad import mute_silence, speech_frames
from latentsync.video import count_frames, mux_audio, probe_video

__all__ = ["LipsyncPipeline", "LipsyncOptions", "LipsyncResult", "Progress", "RunHooks", "plan_segments",
           "source_index"]

VAE_BATCH = 4  # frames per VAE decode call: the VAE works frame by frame, so this only bounds peak memory
ENCODE_BATCH = 2 * VAE_BATCH  # masked and reference faces go through the encoder together


class LipsyncPipeline(DiffusionPipeline):
    def __init__(self, vae: AutoencoderKL, unet, scheduler: SchedulerMixin, audio_encoder=None, face_detector=None,
                 resolution: int = 256, mask_path: str | os.PathLike = DEFAULT_MASK_PATH):
        super().__init__()
        self.register_modules(vae=vae, unet=unet, scheduler=scheduler)
        if resolution % 8:
            raise UserError(f"resolution {resolution}: must be divisible by 8")
        if audio_encoder is not None and audio_encoder.dim != unet.config.cross_attention_dim:
            raise UserError(f"{audio_encoder.ckpt_path}: gives {audio_encoder.dim}-d features but the UNet "
                            f"expects cross_attention_dim {unet.config.cross_attention_dim}")
        self.audio_encoder, self.face_detector = audio_encoder, face_detector
        self.resolution = resolution
        self.mask = load_mask(mask_path, resolution)
        self.speed = SpeedSetup(unet)  # applies each run's speed options to the UNet

    @classmethod
    def from_checkpoints(cls, unet_config_path, inference_ckpt_path, whisper_ckpt_path=None,
                         vae_path=None, device=None, dtype=None, face_backend: str | None = None,
                         checkpoints_dir: str | os.PathLike | None = None) -> "LipsyncPipeline":
        """`from_files` with the files given one by one (whisper_ckpt_path None: picked by the UNet's
        width; vae_path None: the VAE folder under checkpoints_dir)."""
        files = loading.ModelFiles.in_folder(checkpoints_dir, unet_config=unet_config_path,
                                             unet_ckpt=inference_ckpt_path, whisper=whisper_ckpt_path, vae=vae_path)
        return cls.from_files(files, device=device, dtype=dtype, face_backend=face_backend)

    @classmethod
    def from_files(cls, files: loading.ModelFiles, device=None, dtype=None, face_backend: str | None = None,
                   **loaded) -> "LipsyncPipeline":
        """Everything inference needs, loaded from `files` (checked first: a UserError names a missing
        file and where to get it); `face_backend` None: the default detector. `loaded` (unet,
        audio_encoder, vae) are parts already in memory, used instead of loading them."""
        return cls(**loading.load_components(files, device, dtype, face_backend, **loaded))

    # -- the algorithm -------------------------------------------------------------------------

    @torch.no_grad()
    def __call__(self, video_path, audio_path, output_path, options: LipsyncOptions | None = None,
                 progress: ProgressCallback | None = None, hooks: RunHooks | None = None) -> LipsyncResult:
        """Dub `video_path` with `audio_path` into `output_path`; `progress` receives Progress events
        (from the calling thread), `hooks` is told when each phase begins and ends (RunHooks)."""
        opts = options or LipsyncOptions()
        hooks = hooks or RunHooks()
        self.check_segment_length(opts.num_frames)
        loading.check_job_paths(video_path, audio_path, output_path)
        probe_video(video_path)  # a clear error for anything that is not a readable video
        num_video = count_frames(video_path, MODEL_FPS)
        with hooks.span(AUDIO):
            speech = self.prepare_speech(audio_path, opts)
        with (self.speed.apply(opts) as runtime,
              DubRun(self, video_path, speech, num_video, opts, runtime, progress, hooks) as run):
            run.start_face_pass()  # worker: frames -> aligned faces; returns with the first frame
            run.start_writer()  # worker: generated faces -> pasted back -> encoded
            run.generate()  # here: segments -> encode -> denoise -> decode -> the writer
            run.finish()
            with hooks.span(MUX):
                mux_audio(run.video_file, audio_path, output_path, duration=speech.seconds)
            return run.result(output_path)

    def check_segment_length(self, num_frames: int) -> None:
        """UserError when segments are longer than this UNet's motion modules can place."""
        limit = getattr(self.unet, "max_frames", None)
        if limit is not None and num_frames > limit:
            raise UserError(f"num_frames must be <= {limit} for this UNet (its motion modules encode "
                            f"{limit} frame positions; got {num_frames})")

    def prepare_speech(self, audio_path, opts: LipsyncOptions) -> Speech:
        """The speech track: as many output frames as it lasts, which of them have speech, and the
        Whisper features of the waveform (silence muted first with silence "mute")."""
        wav = load_audio(audio_path)
        num_out = math.ceil(len(wav) * MODEL_FPS / SAMPLE_RATE)  # the output is exactly as long as the speech
        speech = speech_frames(wav, MODEL_FPS, num_out)
        if opts.silence == "mute":
            wav = mute_silence(wav, speech, MODEL_FPS)
        features = self.audio_encoder.features(wav)
        return Speech(wav, num_out, speech, features, chunk_indices(features.shape[0], MODEL_FPS))

    # -- diffusion steps -----------------------------------------------------------------------

    def prepare_noise(self, generator) -> torch.Tensor:
        """One Gaussian latent frame [1, 4, 1, h, w] shared by every frame and segment (reference)."""
        size = self.resolution // 8
        noise = torch.randn((1, self.unet.config.out_channels, 1, size, size), generator=generator)
        return noise * self.scheduler.init_noise_sigma

    def encode(self, pixels: torch.Tensor, generator, runtime: Runtime | None = None, groups: int = 1) -> torch.Tensor:
        """VAE posterior *sample* (as the reference), shifted and scaled by the VAE's own config
        (`scaling_factor` 0.18215 for SD's VAE) -> [1, 4, f, h, w] (models/vae.py, as training).

        `pixels` may hold `groups` equal-length image sets (masked and reference faces go through the
        encoder together); the posterior noise is drawn per set, as separate calls would draw it.
        """
        vae = self.vae
        with _cast(runtime):
            mean, std = posterior(vae, pixels.to(vae.device, vae.dtype), ENCODE_BATCH)
        latents = sample_latents(vae, mean, std, generator, groups)
        return latents.permute(1, 0, 2, 3)[None].to(self.unet.dtype)

    def decode(self, latents: torch.Tensor, runtime: Runtime | None = None, region: str = "full") -> torch.Tensor:
        """Latents [1, 4, f, h, w] -> faces [f, 3, res, res] in [-1, 1] (models/vae.py, as training).

        region "mouth" decodes only the latent rows from the mask's first generated row (less
        DECODE_MARGIN rows of context) down (models/vae.py `decode_rows`); the rows above, which the
        mask keeps entirely from the source, come back as zeros.
        """
        first = first_generated_row(self.mask, vae_scale_factor(self.vae)) if region == "mouth" else 0
        with _cast(runtime):
            rows = decode_latents(self.vae, latents[0].permute(1, 0, 2, 3), first, VAE_BATCH).float().cpu()
        return torch.nn.functional.pad(rows, (0, 0, self.resolution - rows.shape[-2], 0))

    def sampler(self, kind: str) -> SchedulerMixin:
        """The scheduler of one segment: the pipeline's own DDIM (stateless between segments), or a
        fresh multistep sampler on the same noise schedule (they keep state across steps)."""
        if kind == "ddim" and isinstance(self.scheduler, DDIMScheduler):
            return self.scheduler
        return make_sampler(kind, self.scheduler.config)

    def denoise(self, latents: torch.Tensor, conditioning: Conditioning, audio: torch.Tensor, inference_steps: int,
                guidance_scale: float, *, enable_deepcache: bool = False, scheduler: SchedulerMixin | None = None,
                runtime: Runtime | None = None, hooks: RunHooks | None = None) -> torch.Tensor:
        """The sampling loop with classifier-free guidance (null audio = zeros); DDIM with eta = 0.

        `latents` [B, 4, f, h, w] start as noise; `conditioning` holds the UNet's other input channels
        (models/unet.py), `audio` its cross-attention tokens [B*f, 50, D]. `scheduler` defaults to the
        pipeline's (DDIM); it gets `set_timesteps` here, which also resets a multistep sampler's
        history. `hooks` is told of every UNet call (UNET).
        """
        scheduler = scheduler or self.scheduler
        unet = runtime.unet if runtime else self.unet
        hooks = hooks or RunHooks()
        scheduler.set_timesteps(inference_steps, device=latents.device)
        guided = guidance_scale > 1.0
        if guided:
            audio = torch.cat([torch.zeros_like(audio), audio])
            conditioning = conditioning.repeated(2)
        cache = DeepCache() if enable_deepcache else None
        for i, t in enumerate(scheduler.timesteps):
            x = torch.cat([latents] * 2) if guided else latents
            x = unet_input(scheduler.scale_model_input(x, t), conditioning)
            with hooks.span(UNET), _cast(runtime):
                eps = unet(x, t, encoder_hidden_states=audio, deep_cache=cache, step_index=i).sample
            eps = eps.to(latents.dtype)
            if guided:
                eps_uncond, eps_audio = eps.chunk(2)
                eps = eps_uncond + guidance_scale * (eps_audio - eps_uncond)
            latents = scheduler.step(eps, t, latents).prev_sample
        return latents


def _cast(runtime: Runtime | None):
    """The run's autocast context (none without a runtime or reduced precision)."""
    return runtime.cast() if runtime is not None else contextlib.nullcontext()
