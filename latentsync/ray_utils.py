"""Connecting to Ray, shared by the data pipeline (latentsync/data/preprocess/runner.py) and batch
dubbing (latentsync/batch.py).

`address` is what the command lines' `--ray_address` takes: "local" starts a private Ray instance
on this machine only (with `num_cpus` CPUs), "auto" joins the cluster this machine belongs to
(started with `ray start`), and anything else is a cluster address such as `ray://head:10001`.
"""

from __future__ import annotations

from latentsync.errors import UserError

LOCAL = "local"
QUIET_WORKERS = {"env_vars": {"GLOG_minloglevel": "2"}}  # no MediaPipe/absl chatter from every worker


def init_ray(address: str, num_cpus: int | None = None):
    """The `ray` module, connected to `address` (once per process; later calls keep the connection)."""
    try:
        import ray
    except ImportError:
        raise UserError("--ray_address needs Ray: pip install 'ray>=2.9'") from None
    if ray.is_initialized():
        return ray
    try:
        if address == LOCAL:
            ray.init(num_cpus=num_cpus, include_dashboard=False, runtime_env=QUIET_WORKERS)
        else:
            ray.init(address=address, runtime_env=QUIET_WORKERS)
    except ConnectionError as exc:
        raise UserError(f"--ray_address {address}: cannot connect to a Ray cluster ({exc})") from None
    return ray


def cluster_gpus(ray) -> float:
    """GPUs in the connected cluster (0 on CPU-only machines)."""
    return float(ray.cluster_resources().get("GPU", 0))
