"""Scale-out on JAX's own machinery: 4 forced CPU devices, and 2 processes on localhost."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from litlab import sharding, train
from litlab.configs import quickstart

ROOT = Path(__file__).resolve().parents[1]
STEPS = 4

FOUR_DEVICES = """
import json, sys
from litlab import train
from litlab.configs import quickstart
out = {}
for strategy in ("replicate", "fsdp"):
    c = quickstart.get_config("smoke"); c.total_steps = %d; c.sharding_strategy = strategy
    r = train.train(c, sys.argv[1] + "/" + strategy, progress=False)
    out[strategy] = [h["loss"] for h in r.history]
import jax
out["devices"] = jax.device_count()
print("RESULT " + json.dumps(out))
""" % STEPS

TWO_PROCESSES = """
import json, sys
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(sys.argv[3], 2, int(sys.argv[1]))
from litlab import train
from litlab.configs import quickstart
c = quickstart.get_config("smoke"); c.total_steps = %d
r = train.train(c, sys.argv[2], progress=False)
print("RESULT " + json.dumps({"process": jax.process_index(), "devices": jax.device_count(),
                              "losses": [h["loss"] for h in r.history]}))
""" % STEPS


def _result(stdout: str) -> dict:
    return json.loads(next(l for l in stdout.splitlines() if l.startswith("RESULT "))[7:])


@pytest.fixture(scope="module")
def one_device_losses(tmp_path_factory):
    c = quickstart.get_config("smoke")
    c.total_steps = STEPS
    run = train.train(c, tmp_path_factory.mktemp("one"), progress=False)
    return [h["loss"] for h in run.history]


def test_four_forced_cpu_devices_match_one_device(one_device_losses, tmp_path):
    env = dict(os.environ, XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip())
    done = subprocess.run([sys.executable, "-c", FOUR_DEVICES, str(tmp_path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    out = _result(done.stdout)
    assert out["devices"] == 4
    for strategy in ("replicate", "fsdp"):
        np.testing.assert_allclose(out[strategy], one_device_losses, rtol=1e-4, err_msg=strategy)


def test_two_processes_train_in_lockstep(one_device_losses, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = lambda i: [sys.executable, "-c", TWO_PROCESSES, str(i), str(tmp_path), f"127.0.0.1:{port}"]
    procs = [subprocess.Popen(cmd(i), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    r0, r1 = (_result(o) for o, _ in outs)
    assert {r0["process"], r1["process"]} == {0, 1} and r0["devices"] == 2
    assert r0["losses"] == r1["losses"]  # lockstep: both see the same global loss every step
    np.testing.assert_allclose(r0["losses"], one_device_losses, rtol=1e-4)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())


def test_fsdp_shards_the_largest_divisible_axis():
    import jax
    mesh = sharding.make_mesh(1)
    specs = sharding.param_shardings(mesh, {"w": np.zeros((6, 8))}, "fsdp")
    assert specs["w"].spec == jax.sharding.PartitionSpec()  # one device: nothing to split
    with pytest.raises(ValueError, match="unknown sharding_strategy"):
        sharding.param_shardings(mesh, {}, "zigzag")
    with pytest.raises(ValueError, match="mesh.data=3 but 1 devices"):
        sharding.make_mesh(3)
