"""Launched by tests/test_multiprocess_training.py under `accelerate launch --num_processes 2`:
the samples each process gets from the training core in one epoch of a SyncNet config.

    python tests/multiprocess_probe.py CONFIG OUT_DIR

Builds the trainer's own dataset and `Run` (nothing is written to the run folder: no `begin`),
draws `ceil(len(dataset) / global batch)` batches from `Run.batches` and writes
`OUT_DIR/rank-<r>.json`: the sample indices this process's data loader asked for and a hash
of each sample's frames.
"""

import hashlib
import json
import math
import sys
from pathlib import Path

import torch

from latentsync.training.core import Run
from latentsync.training.options import TrainOptions
from latentsync.training.syncnet_trainer import KIND, build_datasets, load_config


class Recording(torch.utils.data.Dataset):
    """`dataset`, remembering which indices were read."""

    def __init__(self, dataset):
        self.dataset, self.indices = dataset, []

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        self.indices.append(int(index))
        return self.dataset[index]


def main(config_path: str, out_dir: str) -> None:
    options = TrainOptions(config_path, device="cpu", run_name="probe", num_threads=1, show_progress=False)
    config = load_config(config_path, options)
    train_set, _ = build_datasets(config)
    run = Run(KIND, config, options)
    recording = Recording(train_set)
    batch_size = config.data.batch_size
    batches = run.batches(recording, batch_size)
    hashes = []
    for _ in range(math.ceil(len(train_set) / (batch_size * run.world_size))):
        frames = next(batches)["frames"]
        hashes += [hashlib.sha256(sample.numpy().tobytes()).hexdigest() for sample in frames]
    result = {"rank": run.rank, "world_size": run.world_size, "length": len(train_set),
              "indices": recording.indices, "hashes": hashes}
    Path(out_dir, f"rank-{run.rank}.json").write_text(json.dumps(result))
    run.accelerator.wait_for_everyone()


if __name__ == "__main__":
    main(*sys.argv[1:])
