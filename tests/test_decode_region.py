"""decode_region "mouth": VAE-decode only the latent rows of the mouth region.

The cropped decode is not exact (the decoder's GroupNorms and mid-block attention see the whole
image), so inside the regenerated area it is compared with a measured tolerance; outside it both
regions keep the source pixels, so the faces must be identical there.
"""

import dataclasses

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL

from latentsync.errors import UserError
from latentsync.face.mask import load_mask
from latentsync.models.vae import DECODE_MARGIN, decode_rows, first_generated_row, vae_scale_factor
from latentsync.pipelines.lipsync_pipeline import LipsyncOptions
from latentsync.pipelines.options import options_from_values
from latentsync.pipelines.results import RunHooks
from scripts.make_tiny_checkpoints import VAE_CONFIG, randomize
from test_pipeline import FAST, pipe, read_video, small_clip, speech_wav, tiny  # noqa: F401  (fixtures)

# Measured on the tiny pipeline of make_tiny_checkpoints (256 px, default-init VAE, 2 DDIM steps,
# margin DECODE_MARGIN = 4): mean 0.83, max 10.5 levels (0..255) inside the mask. The bounds leave
# room for another CPU's rounding; a misplaced crop (rows shifted by a latent row) is far above them.
MOUTH_MEAN_LEVELS = 2.0
MOUTH_MAX_LEVELS = 24.0


@pytest.fixture(scope="module")
def vae():
    return randomize(AutoencoderKL(**VAE_CONFIG), torch.Generator().manual_seed(0)).eval()


# -- decode_rows ---------------------------------------------------------------------------------

def test_first_generated_row_is_the_latent_row_of_the_first_regenerated_pixel():
    mask = np.ones((64, 64), np.float32)
    assert first_generated_row(mask, 8) == 0  # nothing regenerated: decode it all
    mask[21:40, 10:50] = 0.0
    assert first_generated_row(mask, 8) == 2  # pixel row 21 lies in latent row 2 (pixels 16..23)
    mask[21:, :] = 1.0
    mask[20, 5] = 0.99  # a soft edge (512 px masks) counts as regenerated
    assert first_generated_row(mask, 8) == 2
    packaged = load_mask(resolution=256)
    top = np.flatnonzero((packaged < 1).any(axis=1))[0]
    assert first_generated_row(packaged, 8) == top // 8 > 0  # the packaged mask keeps the upper face


@torch.no_grad()
def test_decode_rows_returns_the_lower_rows_and_is_exact_when_the_margin_reaches_the_top(vae):
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    full = vae.decode(latents).sample
    factor = vae_scale_factor(vae)
    assert factor == 8 and full.shape[-2:] == (64, 64)
    assert torch.equal(decode_rows(vae, latents, 0, DECODE_MARGIN), full)
    assert torch.equal(decode_rows(vae, latents, 3, margin=3), full[..., 24:, :])  # whole image decoded, then cut
    cropped = decode_rows(vae, latents, 3, margin=1)
    assert cropped.shape == (2, 3, 40, 64)
    error = (cropped - full[..., 24:, :]).abs()
    assert 0 < error.mean() < full.abs().mean()  # cropped context: close, not exact
    with pytest.raises(ValueError, match="first_row 8"):
        decode_rows(vae, latents, 8, 0)


# -- the pipeline --------------------------------------------------------------------------------

class FaceHooks(RunHooks):
    """The generated faces (float, before paste-back and encoding) by output frame."""

    def __init__(self):
        self.faces = {}

    def face(self, frame, face):
        self.faces[frame] = face


def run_recording_faces(pipe, video, audio, out, opts) -> dict:
    """Run the pipeline; every generated face by output frame."""
    hooks = FaceHooks()
    result = pipe(video, audio, out, opts, hooks=hooks)
    frames, _, _ = read_video(result.output_path)
    assert result.num_frames == len(frames)
    return hooks.faces


def test_mouth_decode_matches_full_outside_the_mask_and_nearly_inside(pipe, small_clip, tmp_path):
    audio = speech_wav(tmp_path, 0.8)  # 20 frames: two segments, the second overlapping
    faces = {region: run_recording_faces(pipe, small_clip, audio, tmp_path / f"{region}.mp4",
                                         LipsyncOptions(**FAST, decode_region=region)) for region in ("full", "mouth")}
    full, mouth = faces["full"], faces["mouth"]
    assert sorted(full) == sorted(mouth) == list(range(20))
    regenerated = pipe.mask < 1
    for j in full:
        assert np.array_equal(mouth[j][~regenerated], full[j][~regenerated])  # source pixels in both
    diff = np.abs(np.stack([mouth[j] - full[j] for j in full]))[:, regenerated] * 127.5
    assert 0 < diff.mean() < MOUTH_MEAN_LEVELS and diff.max() < MOUTH_MAX_LEVELS


def test_bad_decode_region_is_a_one_line_error_naming_the_option():
    expected = "decode_region 'chin': expected one of full, mouth"
    with pytest.raises(UserError) as error:
        options_from_values({"decode_region": "chin"})
    assert str(error.value) == expected
    opts = LipsyncOptions(**FAST)
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.decode_region = "chin"  # options cannot change after they were checked
    with pytest.raises(UserError, match=expected):
        dataclasses.replace(opts, decode_region="chin")  # a changed copy is checked again
    assert opts.decode_region == "full"
