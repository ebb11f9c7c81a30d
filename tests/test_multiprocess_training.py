"""Multi-process training (docs/training.md, "Several processes"), with real processes: the UNet,
SyncNet and VAE trainers under `accelerate launch --multi_gpu --num_processes 2` on the CPU
(gloo over loopback), once as two "machines" (two launchers, `--num_machines 2`).

Checked: 2 processes with batch b end with the weights of 1 process with batch 2b; the processes
get different samples that together cover an epoch without overlap; only rank 0 writes the run
folder; a process killed mid-run takes the run down (non-zero exit, the dead rank named) and
leaves the last checkpoint loadable; resuming that run with 2 processes ends exactly where the
uninterrupted 2-process run does. Every process a test starts runs in its own process group and
is ended by that group's id; every wait has a timeout; ports are picked free.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from omegaconf import OmegaConf

from conftest import REPO
from latentsync.errors import UserError
from latentsync.training.core import check_launch
from latentsync.training.state import StepDraws, step_generator
from test_train_syncnet import SMALL_MODEL as SYNCNET_MODEL
from test_train_syncnet import cut_clip
from test_train_syncnet import write_config as write_syncnet_config
from test_train_unet import media, stage1_overrides, tiny  # noqa: F401 (module fixtures)
from test_train_unet import write_config as write_unet_config
from test_vae_trainer import corpus  # noqa: F401 (module fixture)
from test_vae_trainer import write_config as write_vae_config

RUN_TIMEOUT = 300  # seconds a launched run may take on the shared machine before the test fails
UNET_STEPS, SYNCNET_STEPS, VAE_STEPS = 8, 4, 4  # UNet: room to kill a process after step 2
TOLERANCE = dict(rtol=1e-4, atol=1e-6)  # 2 x b vs 1 x 2b: the same numbers, summed in another order
# The test models have no parameter whose gradient is zero by construction: AdamW divides by
# sqrt(v) + 1e-8, so such a parameter (an attention key bias: softmax ignores a constant; the bias
# of a convolution before a one-channel-per-group GroupNorm) moves by +-lr on float noise, in one
# process as in two, and would differ between any two summation orders.
VAE_MODEL = {"norm_num_groups": 4, "mid_block_add_attention": False}


# --------------------------------------------------------------------------------------------
# launching


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_command(target: list[str], port: int, machines: int = 1, machine_rank: int = 0) -> list[str]:
    """`accelerate launch` of 2 processes in all (over `machines`) on loopback."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
            "--num_machines", str(machines), "--machine_rank", str(machine_rank), "--mixed_precision", "no",
            "--dynamo_backend", "no", "--main_process_ip", "127.0.0.1", "--main_process_port", str(port), *target]


def environment() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "MASTER_", "WORLD_SIZE", "RANK"))}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


class Launched:
    """Launcher processes, each in its own process group; `wait` bounds the time, `close` ends
    the groups by id."""

    def __init__(self, commands: list[tuple[list[str], Path]], log_dir: Path):
        self.procs, self.logs = [], []
        for i, (cmd, cwd) in enumerate(commands):
            log = open(log_dir / f"launcher-{i}.log", "w")
            self.logs.append(log)
            self.procs.append(subprocess.Popen(cmd, cwd=cwd, env=environment(), stdout=log,
                                               stderr=subprocess.STDOUT, start_new_session=True))
        self.log_dir = log_dir

    def wait(self, timeout: float = RUN_TIMEOUT) -> list[int]:
        deadline = time.monotonic() + timeout
        return [p.wait(timeout=max(1.0, deadline - time.monotonic())) for p in self.procs]

    def output(self) -> str:
        return "".join(Path(log.name).read_text() for log in self.logs)

    def close(self) -> None:
        for p in self.procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(timeout=30)
        for log in self.logs:
            log.close()


def run_launched(commands, log_dir: Path) -> str:
    """Run launchers to the end; their output (assert exit code 0 for all)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    launched = Launched(commands, log_dir)
    try:
        codes = launched.wait()
        assert codes == [0] * len(codes), launched.output()[-4000:]
        return launched.output()
    finally:
        launched.close()


def train_2(module: str, args: list[str], log_dir: Path) -> str:
    """`accelerate launch --multi_gpu --num_processes 2 -m scripts.train_X ARGS` in the repo."""
    return run_launched([(launch_command(["-m", module, *args], free_port()), REPO)], log_dir)


def rank_pid(launcher: subprocess.Popen, rank: int, module: str) -> int | None:
    """The pid of the training process of `rank` below `launcher` (None before it started)."""
    for child in psutil.Process(launcher.pid).children(recursive=True):
        try:
            if module in " ".join(child.cmdline()) and child.environ().get("RANK") == str(rank):
                return child.pid
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return None


def weights(run_dir: Path, step: int) -> dict:
    return torch.load(run_dir / f"checkpoints/checkpoint-{step}.pt", map_location="cpu", weights_only=True)


def history(run_dir: Path, step: int) -> dict:
    state = torch.load(run_dir / f"checkpoints/training-state-{step}.pt", map_location="cpu", weights_only=True)
    return state["history"]


def assert_same_weights(a: dict, b: dict, exact: bool = False) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if exact:
            assert torch.equal(a[key], b[key]), key
        else:
            torch.testing.assert_close(a[key], b[key], **TOLERANCE, msg=lambda m: f"{key}: {m}")


def assert_trained(before: dict, after: dict) -> None:
    """The weights moved (the comparison above is not between two untouched models)."""
    assert any(not torch.equal(before[k], after[k]) for k in after)


def files_below(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


# --------------------------------------------------------------------------------------------
# the random draws and the launch check (no processes)


def test_step_draws_of_two_processes_are_the_rows_of_one_process_draws():
    one = StepDraws.for_step(torch.device("cpu"), "unet-step", 7, 3)
    both = [StepDraws.for_step(torch.device("cpu"), "unet-step", 7, 3, rank, 2) for rank in (0, 1)]
    assert torch.equal(one.randn((6, 4, 2)), torch.cat([d.randn((3, 4, 2)) for d in both]))
    assert torch.equal(one.randint(1000, (6,)), torch.cat([d.randint(1000, (3,)) for d in both]))
    # one process draws what a plain generator keyed as before (the rank slot 0) draws
    plain = step_generator(torch.device("cpu"), "unet-step", 7, 0, 4)
    assert torch.equal(StepDraws.for_step(torch.device("cpu"), "unet-step", 7, 4).randn((5, 3)),
                       torch.randn((5, 3), generator=plain))


def test_each_process_resumes_its_own_rng_states():
    from types import SimpleNamespace

    from latentsync.training.core import Run
    from latentsync.training.state import rng_state, set_rng_state

    saved = rng_state()
    try:
        states = []
        for seed in (10, 11):
            torch.manual_seed(seed)
            states.append(rng_state())
        state = {"rng": states[0], "rng_ranks": states}
        process = SimpleNamespace(rank=1, world_size=2, step=3, config=SimpleNamespace(run=SimpleNamespace(seed=5)))
        Run.restore_rngs(process, state)
        assert torch.equal(torch.get_rng_state(), states[1]["torch"])
        # resumed with 3 processes: rank 0 takes the main process's states, the others a fresh seed
        Run.restore_rngs(SimpleNamespace(**{**vars(process), "rank": 0, "world_size": 3}), state)
        assert torch.equal(torch.get_rng_state(), states[0]["torch"])
        Run.restore_rngs(SimpleNamespace(**{**vars(process), "rank": 2, "world_size": 3}), state)
        assert not any(torch.equal(torch.get_rng_state(), s["torch"]) for s in states)
    finally:
        set_rng_state(saved)


def test_a_cpu_launch_that_starts_one_process_is_refused():
    """`accelerate launch --cpu --num_processes 2` runs a single process (accelerate needs mpirun
    for more) with MASTER_ADDR set and no WORLD_SIZE: the trainers stop with a message."""
    simple = {"ACCELERATE_USE_CPU": "True", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    with pytest.raises(UserError, match="--multi_gpu --num_processes N"):
        check_launch(simple)
    check_launch({**simple, "WORLD_SIZE": "2", "RANK": "0"})  # torchrun / --multi_gpu
    check_launch({"ACCELERATE_USE_CPU": "True"})  # accelerate launch --cpu, one process asked for


# --------------------------------------------------------------------------------------------
# SyncNet: the samples of each process, and 2 "machines"


@pytest.fixture(scope="module")
def syncnet_setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mp_syncnet")
    clip = cut_clip(folder / "clip.mp4", 0, 4)
    (folder / "train.txt").write_text(f"{clip}\n" * 8)  # an epoch of 8 samples: 2 steps of 2 x 2
    val = cut_clip(folder / "val.mp4", 4, 2)
    (folder / "val.txt").write_text(f"{val}\n")
    clips = {"train_list": folder / "train.txt", "val_list": folder / "val.txt"}
    config = write_syncnet_config(folder / "syncnet.yaml", clips, SYNCNET_MODEL, batch_size=2,
                                  num_val_samples=4, train_output_dir="runs",
                                  audio_mel_cache_dir=str(folder / "mel"))
    spec = OmegaConf.load(config)
    spec.ckpt.save_ckpt_steps = 2
    spec.run.update(dict(max_train_steps=SYNCNET_STEPS, validation_steps=2))
    OmegaConf.save(spec, config)
    return {"folder": folder, "config": config}


def test_accelerate_cpu_launch_of_two_processes_stops_with_the_command_that_works(syncnet_setup, tmp_path):
    """accelerate 1.x's `--cpu --num_processes 2` starts one process (without mpirun); the trainer
    refuses it in one line instead of training alone at half the batch."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
           "-m", "scripts.train_syncnet", "--config_path", str(syncnet_setup["config"]), "--no_progress"]
    tmp_path.mkdir(exist_ok=True)
    launched = Launched([(cmd, tmp_path)], tmp_path)
    try:
        assert launched.wait()[0] != 0
    finally:
        launched.close()
    assert ("error: accelerate launch --cpu started a single process (several CPU processes need mpirun); use "
            "accelerate launch --multi_gpu --num_processes N") in launched.output()
    assert not (tmp_path / "runs").exists()


def test_each_process_gets_its_own_samples_and_together_they_cover_the_epoch(syncnet_setup, tmp_path):
    out = tmp_path / "probe"
    out.mkdir()
    probe = [str(REPO / "tests/multiprocess_probe.py"), str(syncnet_setup["config"]), str(out)]
    run_launched([(launch_command(probe, free_port()), REPO)], tmp_path / "logs")
    ranks = [json.loads((out / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2] and [r["rank"] for r in ranks] == [0, 1]
    seen = [set(r["indices"]) for r in ranks]
    assert not seen[0] & seen[1]  # no sample in both processes
    assert seen[0] | seen[1] == set(range(ranks[0]["length"]))  # together: the epoch, each sample once
    assert sorted(ranks[0]["indices"] + ranks[1]["indices"]) == list(range(ranks[0]["length"]))
    assert not set(ranks[0]["hashes"]) & set(ranks[1]["hashes"])  # and the samples themselves differ


@pytest.fixture(scope="module")
def syncnet_runs(syncnet_setup):
    """1 process with batch 4 (in this process) and 2 "machines" of 1 process with batch 2, each
    machine with its own working folder, so a write by rank 1 would land in its folder."""
    from latentsync.training.syncnet_trainer import TrainOptions, train

    folder, config = syncnet_setup["folder"], syncnet_setup["config"]
    threads = torch.get_num_threads()
    try:
        one = train(TrainOptions(str(config), train_output_dir=str(folder / "one"), run_name="one", device="cpu",
                                 num_threads=1, show_progress=False, overrides=["data.batch_size=4"]))
    finally:
        torch.set_num_threads(threads)
    machines = [folder / "machine0", folder / "machine1"]
    port = free_port()
    args = ["-m", "scripts.train_syncnet", "--config_path", str(config), "--run_name", "two", "--device", "cpu",
            "--num_threads", "1", "--no_progress"]
    for m in machines:
        m.mkdir()
    output = run_launched([(launch_command(args, port, machines=2, machine_rank=rank), machines[rank])
                           for rank in (0, 1)], folder / "logs")
    return {"one": one, "two": machines[0] / "runs/two", "machines": machines, "output": output}


def test_syncnet_two_machines_train_as_one_process_with_twice_the_batch(syncnet_runs):
    one, two = syncnet_runs["one"], syncnet_runs["two"]
    a, b = weights(one, SYNCNET_STEPS), weights(two, SYNCNET_STEPS)
    assert_same_weights(a["state_dict"], b["state_dict"])
    assert_trained(weights(one, 2)["state_dict"], a["state_dict"])
    h1, h2 = history(one, SYNCNET_STEPS), history(two, SYNCNET_STEPS)
    torch.testing.assert_close(torch.tensor(h1["train_loss_list"]), torch.tensor(h2["train_loss_list"]), **TOLERANCE)
    assert h2["val_step_list"] == [2, 4]  # validation ran (on rank 0) and its results are in the history
    torch.testing.assert_close(torch.tensor(h1["val_loss_list"]), torch.tensor(h2["val_loss_list"]), **TOLERANCE)


def test_only_rank_0_writes_the_run_folder(syncnet_runs):
    two, second = syncnet_runs["two"], syncnet_runs["machines"][1]
    assert files_below(second) == []  # rank 1 (the second machine) wrote nothing
    written = files_below(two)
    assert "config.yaml" in written
    assert {f"checkpoints/checkpoint-{s}.pt" for s in (2, 4)} <= set(written)
    assert "loss_charts/loss_chart-4.png" in written
    assert len([f for f in written if f.startswith("tensorboard/") and "tfevents" in f]) == 1


# --------------------------------------------------------------------------------------------
# VAE


@pytest.fixture(scope="module")
def vae_runs(corpus, tmp_path_factory):  # noqa: F811
    from latentsync.training.options import TrainOptions
    from latentsync.training.vae_trainer import train

    folder = tmp_path_factory.mktemp("mp_vae")
    config = write_vae_config(folder / "vae.yaml", corpus, **{
        "data.batch_size": 2, "ckpt.save_ckpt_steps": 2, "run.max_train_steps": VAE_STEPS,
        "run.validation_steps": 2, "latents.scale_samples": 8, "data.frame_cache_dir": str(folder / "frames"),
        **{f"model.{key}": value for key, value in VAE_MODEL.items()}})
    threads = torch.get_num_threads()
    try:
        one = train(TrainOptions(str(config), run_name="one", device="cpu", num_threads=1, show_progress=False,
                                 overrides=["data.batch_size=4"]))
    finally:
        torch.set_num_threads(threads)
    train_2("scripts.train_vae", ["--config_path", str(config), "--run_name", "two", "--device", "cpu",
                                  "--num_threads", "1", "--no_progress"], folder / "logs")
    return {"one": one, "two": one.parent / "two"}


def test_vae_two_processes_train_as_one_with_twice_the_batch(vae_runs):
    from diffusers import AutoencoderKL

    one, two = vae_runs["one"], vae_runs["two"]
    a, b = weights(one, VAE_STEPS)["state_dict"], weights(two, VAE_STEPS)["state_dict"]
    assert_same_weights(a, b)
    assert_trained(weights(one, 2)["state_dict"], a)
    torch.testing.assert_close(torch.tensor(history(one, VAE_STEPS)["train_l1_list"]),
                               torch.tensor(history(two, VAE_STEPS)["train_l1_list"]), **TOLERANCE)
    exported = AutoencoderKL.from_pretrained(two / "vae")  # the export (rank 0) of the last checkpoint
    assert_same_weights(a, {k: v for k, v in exported.state_dict().items()})


# --------------------------------------------------------------------------------------------
# UNet: 1 vs 2 processes, a killed process, resume


@pytest.fixture(scope="module")
def unet_runs(tiny, media, tmp_path_factory):  # noqa: F811
    from scripts.train_unet import main

    work = tmp_path_factory.mktemp("mp_unet")
    config = write_unet_config(work / "unet.yaml", tiny, media, work, **stage1_overrides(**{
        "ckpt.save_ckpt_steps": 2, "ckpt.keep_training_states": 2, "run.max_train_steps": UNET_STEPS,
        "optimizer.lr": 1e-3}))
    common = ["--device", "cpu", "--num_threads", "1", "--no_progress"]
    threads = torch.get_num_threads()
    try:
        assert main(["--unet_config_path", str(config), "--run_name", "one", *common, "data.batch_size=2"]) == 0
    finally:
        torch.set_num_threads(threads)
    runs = work / "runs"
    # with validation on rank 0 (a video at steps 4 and 8) while rank 1 waits: training must not notice
    validation = [f"data.val_video_path={media['clip']}", f"data.val_audio_path={media['val_audio']}",
                  "run.validation_steps=4", "run.inference_steps=1"]
    train_2("scripts.train_unet", ["--unet_config_path", str(config), "--run_name", "two", *common, *validation],
            work / "logs")

    # the same 2-process run with rank 1 killed once the step-2 checkpoint is written
    broken = runs / "broken"
    (work / "killed").mkdir()
    launched = Launched([(launch_command(["-m", "scripts.train_unet", "--unet_config_path", str(config),
                                          "--run_name", "broken", *common], free_port()), REPO)], work / "killed")
    try:
        deadline = time.monotonic() + RUN_TIMEOUT
        while not (broken / "checkpoints/training-state-2.pt").is_file():
            assert launched.procs[0].poll() is None, launched.output()[-4000:]
            assert time.monotonic() < deadline, "no step-2 checkpoint in time"
            time.sleep(0.05)
        victim = rank_pid(launched.procs[0], 1, "scripts.train_unet")
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        code = launched.wait(timeout=120)[0]  # the run goes down in bounded time (or the test fails)
        killed = {"code": code, "output": launched.output(), "files": files_below(broken / "checkpoints")}
    finally:
        launched.close()
    train_2("scripts.train_unet", ["--resume_from", str(broken), *common], work / "resumed-logs")
    return {"one": runs / "one", "two": runs / "two", "broken": broken, "killed": killed,
            "initial": tiny / "latentsync_unet.pt"}


def test_unet_two_processes_train_as_one_with_twice_the_batch(unet_runs):
    a, b = weights(unet_runs["one"], UNET_STEPS)["state_dict"], weights(unet_runs["two"], UNET_STEPS)["state_dict"]
    assert_same_weights(a, b)
    assert_trained(weights(unet_runs["one"], 2)["state_dict"], a)
    torch.testing.assert_close(torch.tensor(history(unet_runs["one"], UNET_STEPS)["train_loss_list"]),
                               torch.tensor(history(unet_runs["two"], UNET_STEPS)["train_loss_list"]), **TOLERANCE)


def test_unet_validation_videos_come_from_rank_0_without_disturbing_training(unet_runs):
    """The 2-process run validated (rank 0) at steps 4 and 8, the broken and resumed one never, and
    both end with the same weights (test below); the one-process run did not validate either."""
    videos = sorted(p.name for p in (unet_runs["two"] / "val_videos").iterdir())
    assert videos == ["val_video_4.mp4", "val_video_8.mp4"]
    assert not (unet_runs["broken"] / "val_videos").exists()


def test_a_killed_process_stops_the_run_and_leaves_the_last_checkpoint(unet_runs):
    from latentsync.models.checkpoint import load_unet

    killed = unet_runs["killed"]
    assert killed["code"] != 0
    output = killed["output"]
    assert "rank      : 1" in output and "Signal 9 (SIGKILL)" in output, output[-3000:]  # the launcher's report
    assert "process 0 of 2: stopped by SIGTERM" in output and "the last complete checkpoint is step" in output
    assert f"--resume_from {unet_runs['broken']}" in output
    # every file in checkpoints/ is complete (no temporary names); the newest checkpoint loads
    steps = sorted(int(f.split("-")[1].split(".")[0]) for f in killed["files"] if f.startswith("checkpoint-"))
    assert steps and steps[-1] < UNET_STEPS
    assert all(f.startswith(("checkpoint-", "training-state-")) and f.endswith(".pt") for f in killed["files"])
    unet = load_unet(unet_runs["broken"] / "config.yaml", unet_runs["broken"] / f"checkpoints/checkpoint-{steps[-1]}.pt",
                     strict=True)
    assert unet.global_step == steps[-1]


def test_the_killed_two_process_run_resumes_exactly(unet_runs):
    two, broken = unet_runs["two"], unet_runs["broken"]
    assert_same_weights(weights(two, UNET_STEPS)["state_dict"], weights(broken, UNET_STEPS)["state_dict"], exact=True)
    assert history(broken, UNET_STEPS)["train_loss_list"] == history(two, UNET_STEPS)["train_loss_list"]
