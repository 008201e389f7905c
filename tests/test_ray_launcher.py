"""qfi sweep --launcher ray: Hydra's Ray launcher on a private local Ray instance gives the basic launcher's numbers."""

from __future__ import annotations

import os

import pytest
from omegaconf import OmegaConf

from tests.test_sweep import summary, sweep

pytest.importorskip("hydra_plugins.hydra_ray_launcher", reason="the ray launcher is not installed: "
                                                                "pip install 'qfi[ray]'")

USAGE = "RAY_USAGE_STATS_ENABLED"


@pytest.fixture
def local_ray():
    """Leave no Ray instance and no usage-statistics setting behind for the next test."""
    import ray

    saved = os.environ.pop(USAGE, None)
    yield
    ray.shutdown()
    os.environ.pop(USAGE, None)
    if saved is not None:
        os.environ[USAGE] = saved


@pytest.mark.slow
def test_ray_launcher_agrees_with_basic(trained_digits, in_tmp, local_ray):
    checkpoint, _ = trained_digits
    sweep(in_tmp / "basic", checkpoint, "--launcher", "basic", "device=cpu")
    sweep(in_tmp / "ray", checkpoint, "--launcher", "ray", "device=cpu")
    rows = summary(in_tmp / "ray")
    assert len(rows) == 3 and all(r["status"] == "ok" for r in rows)
    assert rows == summary(in_tmp / "basic")
    assert (in_tmp / "ray" / "ber_curve.png").stat().st_size > 10_000
    launcher = OmegaConf.load(in_tmp / "ray" / "multirun.yaml").hydra.launcher
    assert launcher._target_.endswith("RayLauncher")
    assert launcher.ray.init == {"address": None, "_node_ip_address": "127.0.0.1", "include_dashboard": False}
    assert os.environ[USAGE] == "0", "qfi must not let Ray report usage statistics"
