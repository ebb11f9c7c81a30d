"""One option vocabulary: LipsyncOptions names every setting the CLI and the app expose."""

import argparse
import dataclasses
import subprocess
import sys

import pytest

from conftest import REPO
from latentsync.errors import UserError
from latentsync.pipelines.options import (PRESET_FLAG, PRESETS, LipsyncOptions, add_option_arguments, option_field,
                                          option_fields, options_from_args, preset_options)
from scripts import inference

FIELDS = {f.name: f for f in option_fields()}


def cli_actions() -> dict[str, argparse.Action]:
    """The flags of scripts/inference.py by name (without --help)."""
    parser = inference.build_parser()
    return {a.option_strings[0][2:]: a for a in parser._actions if a.option_strings and a.dest != "help"}


def test_every_cli_flag_is_an_option_field_with_its_default():
    actions = cli_actions()
    option_flags = set(actions) - set(inference.NON_OPTION_FLAGS) - {PRESET_FLAG}
    assert set(inference.NON_OPTION_FLAGS) <= set(actions)  # the list names real flags
    assert option_flags == {name for name, f in FIELDS.items() if f.metadata["cli"]}
    # --preset is not a field: it expands into fields, each of which exists
    assert PRESET_FLAG not in FIELDS and actions[PRESET_FLAG].default is None
    assert tuple(actions[PRESET_FLAG].choices) == tuple(PRESETS)
    assert all(set(values) <= set(FIELDS) for values in PRESETS.values())
    assert not set(inference.NON_OPTION_FLAGS) & set(FIELDS)  # no flag is both
    for name in option_flags:
        action, f = actions[name], FIELDS[name]
        assert action.dest == name and action.default == f.default, name
        assert action.help == f.metadata["help"], name
        if f.metadata["choices"]:
            assert tuple(action.choices) == tuple(f.metadata["choices"]), name


def test_the_step_count_has_one_name():
    assert "inference_steps" in FIELDS and "num_inference_steps" not in FIELDS
    assert "--inference_steps" in subprocess.run([sys.executable, "-m", "scripts.inference", "--help"], cwd=REPO,
                                                 capture_output=True, text=True).stdout
    config_run = (REPO / "configs/unet/stage2_512.yaml").read_text()
    assert "inference_steps: 20" in config_run and LipsyncOptions().inference_steps == 20


def test_cli_values_become_options():
    parser = argparse.ArgumentParser()
    add_option_arguments(parser)
    args = parser.parse_args(["--inference_steps", "3", "--seed", "-1", "--face_box", "1", "2", "3", "4",
                              "--silence", "keep", "--enable_deepcache", "--output_fps", "30"])
    opts = options_from_args(args)
    assert (opts.inference_steps, opts.seed, opts.face_box, opts.silence) == (3, None, (1.0, 2.0, 3.0, 4.0), "keep")
    assert opts.enable_deepcache and opts.output_fps == 30.0
    assert options_from_args(parser.parse_args([])) == LipsyncOptions()
    assert options_from_args(parser.parse_args(["--output_fps", "original"]), output_fps=29.97).output_fps == 29.97


@pytest.mark.parametrize("values, message", [
    (dict(inference_steps=0), "inference_steps must be >= 1"),
    (dict(guidance_scale=0.5), "guidance_scale must be >= 1.0"),
    (dict(silence="loud"), "silence 'loud': expected one of mute, keep, off"),
    (dict(segment_tail="long"), "segment_tail 'long': expected one of overlap, short"),
    (dict(face_index=-2), "face_index must be >= 0"),
    (dict(guidance_scale=float("nan")), "guidance_scale nan: must be a finite number"),
])
def test_library_errors_name_the_option(values, message):
    with pytest.raises(UserError) as err:
        LipsyncOptions(**values)
    assert str(err.value).startswith(message) and "--" not in str(err.value)


def test_every_gradio_control_is_an_option_field_with_its_default(tmp_path):
    gr = pytest.importorskip("gradio")
    import gradio_app
    from latentsync.app import AppSettings, LipsyncService

    service = LipsyncService(AppSettings(checkpoints_dir=str(tmp_path)))  # no checkpoints: the page still builds
    demo = gradio_app.build_demo(service, [])
    controls = [b for b in demo.blocks.values() if isinstance(b, (gr.Slider, gr.Number, gr.Checkbox, gr.Dropdown,
                                                                   gr.Radio, gr.Textbox))]
    assert {c.elem_id for c in controls} == {"inference_steps", "guidance_scale", "seed"}
    for control in controls:
        f = option_field(control.elem_id)
        assert control.value == f.default and control.label == f.metadata["label"], control.elem_id
        if isinstance(control, gr.Slider):  # a slider's range lies inside the field's bounds (ui_max: its top)
            low = f.metadata["min"]
            high = f.metadata["max"] if f.metadata["max"] is not None else f.metadata["ui_max"]
            assert low is not None and high is not None, control.elem_id
            assert low <= control.minimum < control.maximum <= high, (control.elem_id, control.minimum, control.maximum)
    click = next(d for d in demo.config["dependencies"] if d["api_name"] == "generate")
    ids = {b._id: b.elem_id for b in demo.blocks.values()}
    assert [ids[i] for i in click["inputs"]][2:] == ["inference_steps", "guidance_scale", "seed"]


@pytest.mark.parametrize("steps, guidance, message", [(99, 1.5, "inference_steps 99: choose between 10 and 50"),
                                                     (20, 3.5, "guidance_scale 3.5: choose between 1 and 3")])
def test_app_checks_name_the_option(tmp_path, steps, guidance, message):
    from conftest import MEDIA, need
    from latentsync.app import AppSettings, LipsyncService

    service = LipsyncService(AppSettings(checkpoints_dir=str(tmp_path)))
    video, audio = need(MEDIA / "demo1_video.mp4"), need(MEDIA / "demo1_audio.wav")
    with pytest.raises(UserError, match=message):
        service.check_inputs(str(video), str(audio), steps, guidance, 1247)
    assert service.check_inputs(str(video), str(audio), 20, 1.5, -1)[2] == LipsyncOptions(seed=None,
                                                                                        show_progress=False)


def test_options_record_under_their_own_names():
    record = dataclasses.asdict(LipsyncOptions(inference_steps=3))
    assert record["inference_steps"] == 3 and set(record) == set(FIELDS)


def test_face_backend_is_one_name_with_a_deprecated_alias_in_the_eval_scripts():
    from scripts import eval_fvd, eval_sync_conf

    assert "face_backend" in cli_actions()
    assert eval_sync_conf.parse_args(["--video_path", "v.mp4"]).face_backend == "auto"
    assert eval_sync_conf.parse_args(["--video_path", "v.mp4", "--face_detector", "s3fd"]).face_backend == "s3fd"
    fvd = ["--real_videos_dir", "r", "--fake_videos_dir", "f"]
    assert eval_fvd.parse_args(fvd + ["--face_detector", "insightface"]).face_backend == "insightface"
    from latentsync.eval.s3fd import choose_face_detector

    with pytest.raises(UserError, match=r"^face_backend 'dlib': expected one of"):
        choose_face_detector("dlib")


def test_the_old_step_name_is_gone():
    with pytest.raises(TypeError):
        LipsyncOptions(num_inference_steps=3)


def test_options_are_frozen_and_a_changed_copy_is_checked_again():
    opts = LipsyncOptions(face_box=[1, 2, 3, 4])
    assert opts.face_box == (1.0, 2.0, 3.0, 4.0) and hash(opts) == hash(LipsyncOptions(face_box=(1, 2, 3, 4)))
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.inference_steps = 0
    assert dataclasses.replace(opts, inference_steps=3).inference_steps == 3
    with pytest.raises(UserError, match="inference_steps must be >= 1"):
        dataclasses.replace(opts, inference_steps=0)


def test_preset_expands_and_explicit_flags_win_even_when_they_equal_the_default():
    base = ["--video_path", "v.mp4", "--audio_path", "a.wav", "--video_out_path", "o.mp4"]
    fast = options_from_args(inference.parse_args(base + ["--preset", "fast"]))
    assert fast == preset_options("fast") and fast.scheduler == PRESETS["fast"]["scheduler"] != "ddim"
    assert fast.enable_deepcache and fast.inference_steps == PRESETS["fast"]["inference_steps"]
    mixed = options_from_args(inference.parse_args(base + ["--preset", "fast", "--scheduler", "ddim",
                                                           "--inference_steps", "20", "--seed", "7"]))
    assert (mixed.scheduler, mixed.inference_steps, mixed.seed) == ("ddim", 20, 7)  # 20 and ddim are defaults
    assert mixed.enable_deepcache == PRESETS["fast"]["enable_deepcache"]  # not given: from the preset
    assert options_from_args(inference.parse_args(base)) == LipsyncOptions()  # no preset: the defaults
    assert preset_options("quality") == LipsyncOptions()  # quality = the reference settings = the defaults
    assert preset_options("balanced", inference_steps=12).inference_steps == 12
    with pytest.raises(UserError, match="^preset 'turbo': expected one of quality, balanced, fast"):
        preset_options("turbo")


@pytest.mark.parametrize("values, message", [
    (dict(scheduler="euler"), "scheduler 'euler': expected one of ddim, dpmpp, unipc"),
    (dict(autocast="int4"), "autocast 'int4': expected one of off, auto, bf16, fp16"),
    (dict(cpu_kernels="fast"), "cpu_kernels 'fast': expected one of none, int8, channels_last"),
])
def test_speed_options_are_checked(values, message):
    with pytest.raises(UserError) as err:
        LipsyncOptions(**values)
    assert str(err.value).startswith(message)


def test_readme_preset_table_matches_the_presets():
    rows = [line for line in (REPO / "README.md").read_text().splitlines() if line.startswith("| `")]
    for name, values in PRESETS.items():
        row = next(line for line in rows if line.startswith(f"| `{name}`"))
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        assert cells[1:] == [values["scheduler"], str(values["inference_steps"]),
                             "on" if values["enable_deepcache"] else "off", values["autocast"],
                             values["cpu_kernels"], values["decode_region"]], name


def test_segment_length_limit_comes_from_the_unet_config():
    from diffusers import DDIMScheduler

    from latentsync.models.unet import UNet3DConditionModel
    from latentsync.pipelines.lipsync_pipeline import LipsyncPipeline

    tiny = dict(block_out_channels=(32, 32, 32, 32), layers_per_block=1, norm_num_groups=8, cross_attention_dim=16,
                attention_head_dim=2, use_motion_module=True, motion_module_resolutions=(1,))
    for max_len, limit in ((24, 24), (8, 8)):
        unet = UNet3DConditionModel(**tiny, motion_module_kwargs={"temporal_position_encoding_max_len": max_len})
        assert unet.max_frames == limit
        pipe = LipsyncPipeline(vae=None, unet=unet, scheduler=DDIMScheduler(), resolution=64)
        with pytest.raises(UserError, match=f"num_frames must be <= {limit} for this UNet"):
            pipe("in.mp4", "in.wav", "out.mp4", LipsyncOptions(num_frames=limit + 1))
    assert UNet3DConditionModel(**{**tiny, "use_motion_module": False}).max_frames is None
    LipsyncOptions(num_frames=32)  # the options alone no longer cap it: the model does
