"""The trainer core both trainers share (latentsync/training/core.py, config.py, state.py):
renamed config keys, the LR schedule, pruning, exact resume with the history and TensorBoard
continuing, and one checkpoint naming for the SyncNet and the UNet trainers.

The core is driven by a toy run (a linear model, random inputs from the global RNG, so a resume
that did not restore the RNGs, the optimiser or the LR schedule would give other numbers).
"""

import logging

import pytest
import torch
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from latentsync.errors import UserError
from latentsync.training import syncnet_trainer, unet_trainer
from latentsync.training.config import OptimizerSection, TrainingConfig, load_training_config, migrate_keys
from latentsync.training.core import Run, RunKind, find_resume, lr_factor
from latentsync.training.options import TrainOptions
from latentsync.training.state import STATE_PATTERN, checkpoint_path, find_state_file, prune, state_path
from test_train_syncnet import clips  # noqa: F401  (module fixtures of the two trainer tests)
from test_train_syncnet import write_config as write_syncnet_config
from test_train_unet import media, one_thread, stage1_overrides, tiny  # noqa: F401
from test_train_unet import write_config as write_unet_config

TOY = RunKind("Toy", "toy-training-state", "--config_path")
TOY_CONFIG = {
    "model": {"features": 3},
    "data": {"batch_size": 4},
    "ckpt": {"save_ckpt_steps": 2, "keep_training_states": 2},
    "run": {"seed": 5, "max_train_steps": 8, "validation_steps": 2},
    "optimizer": {"lr": 0.05, "max_grad_norm": 1.0, "lr_scheduler": "constant_with_warmup", "lr_warmup_steps": 3},
}


def write_toy_config(tmp_path, **overrides):
    config = OmegaConf.create(TOY_CONFIG)
    config.data.train_output_dir = str(tmp_path / "runs")
    for key, value in overrides.items():
        OmegaConf.update(config, key, value, force_add=True)
    path = tmp_path / "toy.yaml"
    OmegaConf.save(config, path)
    return path


def toy_train(config_path=None, **options):
    """A complete run through the core: the loop every trainer has, with a linear regression step."""
    options = TrainOptions(None if config_path is None else str(config_path), device="cpu", show_progress=False,
                           **options)
    resume, path = find_resume(options, TOY)
    config = load_training_config(TrainingConfig, path, options.overrides, options.train_output_dir,
                                  options.max_train_steps)
    run = Run(TOY, config, options, resume)
    features = config.model["features"]
    torch.manual_seed(0)
    model = torch.nn.Linear(features, 1)
    run.load_resumed_weights(model)
    model = run.prepare(model, model.parameters())
    run.begin("toy")
    while not run.done:
        x = torch.randn(config.data.batch_size, features)  # the global RNG: restored on resume
        loss = ((model(x) - x.sum(1, keepdim=True)) ** 2).mean()
        run.accelerator.backward(loss)
        run.optimizer_step()
        run.record("train", loss=run.mean(loss))
        if run.validation_due():
            run.record("val", loss=float(loss.detach()) / 2)
        run.checkpoint_if_due()
    return run.finish()


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


# --------------------------------------------------------------------------------------------
# config keys and settings


def test_deprecated_keys_are_read_under_the_new_names_with_a_warning(tmp_path, caplog):
    path = write_toy_config(tmp_path, **{"run.enable_gradient_checkpointing": True,
                                         "run.mixed_precision_training": True})
    with caplog.at_level(logging.WARNING):
        config = load_training_config(TrainingConfig, path)
    assert config.run.gradient_checkpointing is True and config.run.mixed_precision == "fp16"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("run.enable_gradient_checkpointing is deprecated" in w and "run.gradient_checkpointing" in w
               for w in warnings), warnings
    assert any("run.mixed_precision_training is deprecated" in w for w in warnings), warnings

    # the new name wins when a file has both; no warning for a file with new names only
    both = OmegaConf.create({"run": {"mixed_precision": "bf16", "mixed_precision_training": False}})
    assert migrate_keys(both).run == {"mixed_precision": "bf16"}
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        load_training_config(TrainingConfig, write_toy_config(tmp_path, **{"run.gradient_checkpointing": True}))
    assert not [r for r in caplog.records if "deprecated" in r.getMessage()]


@pytest.mark.parametrize("key, value, message", [
    ("optimizer.lr_scheduler", "linear", "optimizer.lr_scheduler 'linear'"),
    ("ckpt.save_ckpt_steps", 0, "ckpt.save_ckpt_steps must be at least 1"),
    ("run.mixed_precision", "fp8", "run.mixed_precision 'fp8'"),
])
def test_unusable_shared_settings_are_user_errors(tmp_path, key, value, message):
    with pytest.raises(UserError, match=message):
        load_training_config(TrainingConfig, write_toy_config(tmp_path, **{key: value}))


def test_lr_schedule_warmup_then_constant_or_cosine():
    settings = OptimizerSection(lr=1.0, max_grad_norm=1.0, lr_warmup_steps=4)
    constant = lr_factor(settings, 10)
    assert [constant(s) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    settings.lr_scheduler = "cosine"
    cosine = lr_factor(settings, 10)
    assert [cosine(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert cosine(7) == pytest.approx(0.5) and cosine(10) == pytest.approx(0.0) and cosine(12) == pytest.approx(0.0)
    values = [cosine(s) for s in range(4, 11)]
    assert values == sorted(values, reverse=True)


# --------------------------------------------------------------------------------------------
# run folders, pruning, resume


def test_prune_keeps_the_newest_states_by_step_number(tmp_path):
    for step in (1, 2, 3, 10, 20):
        state_path(tmp_path, step).parent.mkdir(exist_ok=True)
        state_path(tmp_path, step).write_bytes(b"x")
        checkpoint_path(tmp_path, step).write_bytes(b"x")
    prune(tmp_path / "checkpoints", STATE_PATTERN, 2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert [n for n in names if n.startswith("training-state")] == ["training-state-10.pt", "training-state-20.pt"]
    assert len([n for n in names if n.startswith("checkpoint")]) == 5  # official checkpoints are never pruned


def test_run_folder_checkpoints_and_pruning(tmp_path):
    run_dir = toy_train(write_toy_config(tmp_path), run_name="toy")
    names = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert names == ["checkpoint-2.pt", "checkpoint-4.pt", "checkpoint-6.pt", "checkpoint-8.pt",
                     "training-state-6.pt", "training-state-8.pt"]  # ckpt.keep_training_states: 2
    checkpoint = load(checkpoint_path(run_dir, 8))
    assert set(checkpoint) == {"state_dict", "global_step"} and checkpoint["global_step"] == 8
    assert set(checkpoint["state_dict"]) == {"weight", "bias"}
    state = load(state_path(run_dir, 8))
    assert state["format"] == TOY.state_format and state["checkpoint"] == "checkpoint-8.pt"
    assert state["history"]["train_step_list"] == list(range(1, 9))
    assert state["history"]["val_step_list"] == [2, 4, 6, 8]
    assert (run_dir / "loss_charts/loss_chart-8.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert OmegaConf.load(run_dir / "config.yaml").run.max_train_steps == 8
    assert not list(run_dir.rglob("*.partial*"))
    with pytest.raises(UserError, match="already has checkpoints"):
        toy_train(write_toy_config(tmp_path), run_name="toy")


def test_resume_is_exact_and_history_and_tensorboard_continue(tmp_path):
    config = write_toy_config(tmp_path)
    unbroken = toy_train(config, run_name="unbroken")
    broken = toy_train(config, run_name="broken", max_train_steps=4)
    assert find_state_file(broken) == state_path(broken, 4)
    assert toy_train(resume_from=str(broken), max_train_steps=8) == broken  # config: the run's config.yaml

    a, b = load(checkpoint_path(unbroken, 8)), load(checkpoint_path(broken, 8))
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    history_a, history_b = load(state_path(unbroken, 8))["history"], load(state_path(broken, 8))["history"]
    assert history_b == history_a  # losses bit-identical, steps 1..8 with validations at 2, 4, 6, 8
    assert history_b["train_step_list"] == list(range(1, 9))
    assert len(set(history_b["train_loss_list"])) == 8  # the comparison is not vacuous

    events = EventAccumulator(str(broken / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == list(range(1, 9))
    assert [e.value for e in events.Scalars("train/loss")] == pytest.approx(history_a["train_loss_list"])
    lr = [e.value for e in events.Scalars("train/lr")]
    assert lr[:4] == pytest.approx([0.05 * 2 / 3, 0.05, 0.05, 0.05])  # warm-up of 3 steps (LR after each step)


def test_resume_refuses_another_trainers_state_and_a_missing_checkpoint(tmp_path):
    run_dir = toy_train(write_toy_config(tmp_path), run_name="toy", max_train_steps=2)
    with pytest.raises(UserError, match="not a UNet training-state file"):
        unet_trainer.train(TrainOptions(resume_from=str(run_dir), device="cpu"))
    checkpoint_path(run_dir, 2).unlink()
    with pytest.raises(UserError, match="checkpoint-2.pt: checkpoint of the training state"):
        toy_train(resume_from=str(run_dir))
    with pytest.raises(UserError, match="--config_path is required"):
        toy_train()


# --------------------------------------------------------------------------------------------
# both trainers


def test_both_trainers_use_the_same_checkpoint_naming(tiny, media, clips, tmp_path):  # noqa: F811
    unet_config = write_unet_config(tmp_path / "unet.yaml", tiny, media, tmp_path, **stage1_overrides(**{
        "run.max_train_steps": 2, "ckpt.save_ckpt_steps": 2}))
    syncnet_config = write_syncnet_config(tmp_path / "syncnet.yaml", clips)
    runs = [unet_trainer.train(TrainOptions(str(unet_config), device="cpu", run_name="unet", show_progress=False)),
            syncnet_trainer.train(TrainOptions(str(syncnet_config), max_train_steps=2, device="cpu", run_name="syncnet",
                                               overrides=["ckpt.save_ckpt_steps=2"], show_progress=False))]
    for run_dir in runs:
        names = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
        assert names == [checkpoint_path(run_dir, 2).name, state_path(run_dir, 2).name], names
        assert find_state_file(run_dir) == state_path(run_dir, 2)
        assert load(checkpoint_path(run_dir, 2))["global_step"] == 2
        assert load(state_path(run_dir, 2))["checkpoint"] == checkpoint_path(run_dir, 2).name
        assert (run_dir / "loss_charts/loss_chart-2.png").is_file() and list((run_dir / "tensorboard").iterdir())
    unet_ckpt, syncnet_ckpt = (load(checkpoint_path(run_dir, 2)) for run_dir in runs)
    assert set(unet_ckpt) == {"state_dict", "global_step"}  # the official UNet layout
    assert set(syncnet_ckpt) >= {"state_dict", "global_step", "train_step_list", "train_loss_list", "val_step_list",
                                 "val_loss_list"}  # the reference SyncNet layout with its history lists
