"""The typed training configs (latentsync/training/config.py and each trainer's sections): every
shipped and official config loads, a mistyped key in a YAML or a `key=value` override is a
one-line error naming it and the nearest valid key before any model is built, the learnability
benchmark's overrides are valid keys, the UNet YAMLs differ only where listed, the frame limit
comes from the model, and a failed validation is recorded as missing."""

import contextlib
import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import REPO
from latentsync.errors import EXIT_USER_ERROR, UserError
from latentsync.training.config import load_training_config, read_config
from latentsync.training.core import History, save_chart
from latentsync.training.syncnet_config import SyncNetConfig
from latentsync.training.unet_config import UNetConfig, check_config
from latentsync.training.vae_trainer import VAEConfig

SCHEMAS = {"unet": UNetConfig, "syncnet": SyncNetConfig, "vae": VAEConfig}
SHIPPED = [(kind, path) for kind in SCHEMAS for path in sorted((REPO / "configs" / kind).glob("*.yaml"))]
# the reference's configs (tests/fixtures: official configs with the model sizes reduced)
OFFICIAL = [(kind, path) for kind in ("unet", "syncnet") for path in sorted((REPO / "tests/fixtures").glob(f"{kind}_*/config.yaml"))]
LATENT_SPACE = {"syncnet_16_latent.yaml"}  # the reference's VAE-latent SyncNet: valid keys, refused by the trainer


@pytest.mark.parametrize("kind, path", SHIPPED + OFFICIAL, ids=lambda v: str(v).replace(str(REPO) + "/", ""))
def test_every_shipped_and_official_config_has_only_known_keys(kind, path):
    config = read_config(SCHEMAS[kind], path)  # unknown keys and wrong types raise
    assert OmegaConf.missing_keys(config) == set(), path


@pytest.mark.parametrize("kind, path", [(k, p) for k, p in SHIPPED if p.name not in LATENT_SPACE],
                         ids=lambda v: str(v).replace(str(REPO) + "/", ""))
def test_every_shipped_config_passes_its_trainers_checks(kind, path):
    config = load_training_config(SCHEMAS[kind], path)
    assert isinstance(config, SCHEMAS[kind]) and config.run.validation_steps >= 1


def write_typo(tmp_path, kind, section, wrong):
    """configs/<kind>/<first>.yaml with one key of `section` renamed to `wrong`."""
    source = {"unet": "stage2.yaml", "syncnet": "syncnet_16_pixel_attn.yaml", "vae": "learnability.yaml"}[kind]
    config = OmegaConf.load(REPO / "configs" / kind / source)
    OmegaConf.update(config, f"{section}.{wrong}", 1, force_add=True)
    path = tmp_path / f"{kind}.yaml"
    OmegaConf.save(config, path)
    return path


@pytest.mark.parametrize("kind, section, wrong, nearest", [
    ("unet", "data", "batch_sze", "data.batch_size"),
    ("unet", "run", "sync_los_weight", "run.sync_loss_weight"),
    ("unet", "model", "use_motion_modul", "model.use_motion_module"),
    ("unet", "model.motion_module_kwargs", "num_attention_head", "model.motion_module_kwargs.num_attention_heads"),
    ("unet", "ckpt.videomae_model", "embed_dims", "ckpt.videomae_model.embed_dim"),
    ("syncnet", "data", "num_val_sample", "data.num_val_samples"),
    ("syncnet", "model.visual_encoder", "attn_block", "model.visual_encoder.attn_blocks"),
    ("syncnet", "optimizer", "lr_sheduler", "optimizer.lr_scheduler"),
    ("vae", "loss", "kl_weigth", "loss.kl_weight"),
])
def test_a_mistyped_key_in_a_yaml_names_the_file_the_key_and_the_nearest(tmp_path, kind, section, wrong, nearest):
    path = write_typo(tmp_path, kind, section, wrong)
    with pytest.raises(UserError) as error:
        load_training_config(SCHEMAS[kind], path)
    message = str(error.value)
    assert message == f"{path}: unknown key {section}.{wrong}; did you mean {nearest}?", message


@pytest.mark.parametrize("kind, override, nearest", [
    ("unet", "data.num_frame=8", "data.num_frames"), ("unet", "ckpt.vae_pth=x", "ckpt.vae_path"),
    ("unet", "rnu.seed=1", "run"), ("syncnet", "run.contrastive_loss_weigth=1", "run.contrastive_loss_weight"),
    ("vae", "latents.scale_sample=8", "latents.scale_samples"),
])
def test_a_mistyped_override_names_the_override_and_the_nearest_key(kind, override, nearest):
    path = REPO / "configs" / kind / "learnability.yaml"
    key = ".".join(override.split("=")[0].split(".")[:nearest.count(".") + 1])  # the first unknown level
    with pytest.raises(UserError) as error:
        load_training_config(SCHEMAS[kind], path, ["data.batch_size=2", override])
    assert str(error.value) == f"{path}: override {override}: unknown key {key}; did you mean {nearest}?"


def test_a_typo_in_the_sync_loss_syncnet_config_names_that_file(tmp_path):
    syncnet = write_typo(tmp_path, "syncnet", "data", "lower_halve")
    path = REPO / "configs/unet/stage2.yaml"
    config = load_training_config(UNetConfig, path, [f"data.syncnet_config_path={syncnet}"])
    with pytest.raises(UserError) as error:
        check_config(config, str(path))
    assert str(error.value) == f"{syncnet}: unknown key data.lower_halve; did you mean data.lower_half?"


def test_a_value_of_the_wrong_type_names_the_key(tmp_path):
    with pytest.raises(UserError, match=r"override data.batch_size=many: data.batch_size: Value 'many'"):
        load_training_config(UNetConfig, REPO / "configs/unet/stage2.yaml", ["data.batch_size=many"])


@pytest.mark.parametrize("script, flag, kind", [("train_unet", "--unet_config_path", "unet"),
                                                ("train_syncnet", "--config_path", "syncnet")])
def test_the_training_scripts_exit_2_with_one_line_for_a_typo(tmp_path, capsys, script, flag, kind):
    """Through the command line, in the YAML and in an override: exit code 2, one line, no run folder."""
    import importlib

    main = importlib.import_module(f"scripts.{script}").main
    runs = tmp_path / "runs"
    typo = write_typo(tmp_path, kind, "data", "resolutoin")
    good = REPO / "configs" / kind / "learnability.yaml"
    for argv, expected in (([flag, str(typo)], f"{typo}: unknown key data.resolutoin; did you mean data.resolution?"),
                           ([flag, str(good), "optimizer.lr=1e-4", "optimizer.max_grad_nrom=2"],
                            f"{good}: override optimizer.max_grad_nrom=2: unknown key optimizer.max_grad_nrom; "
                            "did you mean optimizer.max_grad_norm?")):
        assert main([*argv, "--device", "cpu", "--train_output_dir", str(runs), "--no_progress"]) == EXIT_USER_ERROR
        err = capsys.readouterr().err.strip()
        assert err == f"error: {expected}", err
    assert not runs.exists()


def test_deprecated_keys_in_an_override_still_work():
    config = load_training_config(SyncNetConfig, REPO / "configs/syncnet/learnability.yaml",
                                  ["run.mixed_precision_training=true"])
    assert config.run.mixed_precision == "fp16"


def test_the_learnability_benchmarks_overrides_are_valid_keys(tmp_path):
    """Every key the benchmark passes (benchmarks/learnability.py, learnability_parts/plan.py)."""
    from benchmarks import learnability as bench
    from benchmarks.learnability_parts.plan import PLANS, STAGE2_OVERRIDES, SYNCNET_CONFIG, UNET_CONFIG, VAE_CONFIG, Layout

    layout = Layout(tmp_path)
    for plan in PLANS.values():
        base = bench.unet_overrides(layout, plan, "whisper.pt")
        read_config(UNetConfig, UNET_CONFIG, [*base, *plan.stage1_overrides])
        read_config(UNetConfig, UNET_CONFIG, [*base, *STAGE2_OVERRIDES, "ckpt.resume_ckpt_path=x.pt"])
        read_config(SyncNetConfig, SYNCNET_CONFIG, [*bench.data_overrides(layout), "data.val_data_dir=x",
                                                    *plan.syncnet_overrides])
        read_config(VAEConfig, VAE_CONFIG, ["data.train_data_dir=x", *plan.vae_overrides])


# --------------------------------------------------------------------------------------------
# the UNet YAMLs


BASE_UNET_YAML = "stage2.yaml"
# every (file, key) whose value differs from stage2.yaml; anything else must be the same. The
# first-line comments differ too (each says what the file is).
ALLOWED_DIFFERENCES = {
    "stage2_512.yaml": {"data.resolution"},
    "stage1.yaml": {"run.pixel_space_supervise", "run.use_syncnet", "run.sync_loss_weight",
                    "run.perceptual_loss_weight", "run.trepa_loss_weight", "run.trainable_modules",
                    "model.use_motion_module"},
    "stage2_efficient.yaml": {"run.trepa_loss_weight", "run.trainable_modules", "model.motion_module_decoder_only"},
    "v1.0.yaml": {"data.syncnet_config_path", "run.trainable_modules", "model.use_motion_module",
                  "model.motion_module_kwargs.temporal_position_encoding_max_len"},
}
ALLOWED_DIFFERENCES["stage1_512.yaml"] = ALLOWED_DIFFERENCES["stage1.yaml"] | {"data.resolution"}


def flat(mapping, prefix=""):
    out = {}
    for key, value in mapping.items():
        if isinstance(value, dict) and value:
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


@pytest.mark.parametrize("name", sorted(ALLOWED_DIFFERENCES))
def test_the_unet_yamls_differ_from_stage2_only_where_listed(name):
    base = flat(OmegaConf.to_container(OmegaConf.load(REPO / "configs/unet" / BASE_UNET_YAML)))
    other = flat(OmegaConf.to_container(OmegaConf.load(REPO / "configs/unet" / name)))
    assert set(other) == set(base), set(other) ^ set(base)
    assert {key for key in base if other[key] != base[key]} == ALLOWED_DIFFERENCES[name]


def test_no_batch_size_header_comments():
    for path in (REPO / "configs").rglob("*.yaml"):
        assert "Batch " not in path.read_text().splitlines()[0], path


# --------------------------------------------------------------------------------------------
# the frame limit, failed validations


@pytest.mark.parametrize("max_len, num_frames, ok", [(24, 24, True), (24, 25, False), (16, 17, False)])
def test_the_frame_limit_is_the_motion_modules_position_count(max_len, num_frames, ok):
    """The trainer's limit is the UNet's `max_frames` (what inference reads), from the config."""
    path = REPO / "configs/unet/stage2.yaml"
    config = load_training_config(UNetConfig, path, [
        f"data.num_frames={num_frames}", f"model.motion_module_kwargs.temporal_position_encoding_max_len={max_len}",
        "data.syncnet_config_path=/nonexistent.yaml"])
    if ok:  # past the frame check: the next check (the SyncNet config) fails
        with pytest.raises(UserError, match="SyncNet config not found"):
            check_config(config, str(path))
    else:
        with pytest.raises(UserError, match=f"data.num_frames {num_frames} must be between 1 and {max_len}"):
            check_config(config, str(path))


@pytest.mark.filterwarnings("ignore:No artists with labels")  # Axes.plot is replaced below
def test_a_failed_validation_is_recorded_as_missing_and_left_out_of_the_chart(tmp_path, monkeypatch):
    from latentsync.eval import syncnet_v2
    from latentsync.training.unet_validation import Validator

    weights = tmp_path / "syncnet_v2.model"
    weights.write_bytes(b"x")
    config = load_training_config(UNetConfig, REPO / "configs/unet/stage2.yaml", [f"ckpt.syncnet_v2_path={weights}"])

    def broken(*args, **kwargs):
        raise RuntimeError("cannot score")

    monkeypatch.setattr(syncnet_v2, "load_syncnet_v2", broken)
    validator = Validator(config, None, None, tmp_path, "cpu")
    assert math.isnan(validator.sync_confidence(tmp_path / "video.mp4"))  # scoring failed: not a score of 0
    monkeypatch.setattr(validator, "get_pipeline", broken)
    video, confidence = validator(torch.nn.Linear(1, 1), 1, contextlib.nullcontext())
    assert video is None and math.isnan(confidence)  # rendering failed: missing too
    no_weights = load_training_config(UNetConfig, REPO / "configs/unet/stage2.yaml", ["ckpt.syncnet_v2_path=''"])
    assert Validator(no_weights, None, None, tmp_path, "cpu").sync_confidence(tmp_path / "video.mp4") is None

    history = History()
    for step, value in ((1, 2.0), (2, None), (3, float("nan")), (4, 3.0)):
        history.record("val", step, sync_conf=value)
    values = history.series("val", "sync_conf")
    assert values[0] == 2.0 and values[3] == 3.0 and math.isnan(values[1]) and math.isnan(values[2])
    plotted = []
    monkeypatch.setattr("matplotlib.axes.Axes.plot", lambda self, *args, **kw: plotted.append(args))
    assert save_chart(tmp_path / "chart.png", history, "t") == tmp_path / "chart.png"
    (steps, points, _style), = plotted
    assert list(steps) == [1, 4] and list(points) == [2.0, 3.0]


def test_unet_and_syncnet_take_clips_from_nested_folders_alike(tmp_path):
    """data.train_data_dir is searched recursively by every trainer (one function)."""
    from latentsync.data.syncnet_dataset import videos_from_config

    for name in ("a.mp4", "speaker1/b.mp4", "speaker1/session2/c.mp4"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    found = [Path(p).relative_to(tmp_path).as_posix() for p in videos_from_config(None, str(tmp_path))]
    assert found == ["a.mp4", "speaker1/b.mp4", "speaker1/session2/c.mp4"]
    with pytest.raises(UserError, match="no training data: set data.train_fileslist or data.train_data_dir"):
        videos_from_config("", "", required=True)
    with pytest.raises(UserError, match=r"data.val_data_dir: .*missing: data folder not found"):
        videos_from_config("", str(tmp_path / "missing"), "val")
