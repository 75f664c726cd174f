"""Two processes × 4 CPU devices start through `keras.distribution.initialize` (JAX's
distributed runtime, as on a TPU pod or GPU nodes) and see one 8-device mesh."""

import os
import socket
import subprocess
import sys

import pytest
from helpers import REPO_ROOT

ROOT = str(REPO_ROOT)


@pytest.mark.slow
def test_two_processes_form_one_mesh():
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        port = probe.getsockname()[1]
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=4",
               PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])),
               KERAS_DISTRIBUTION_JOB_ADDRESSES=f"localhost:{port}", KERAS_DISTRIBUTION_NUM_PROCESSES="2")
    workers = [
        subprocess.Popen([sys.executable, __file__], env=dict(env, KERAS_DISTRIBUTION_PROCESS_ID=str(i)),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    outputs = [worker.communicate(timeout=300) for worker in workers]
    for worker, (out, err) in zip(workers, outputs):
        assert worker.returncode == 0, err[-3000:]
        # Each process fed its own 4 rows; the sum runs over all 8 (0 + … + 31).
        assert out.strip().splitlines()[-1] == "8 2 (8, 4) 496.0"


if __name__ == "__main__":
    import jax

    # CPU devices of different processes talk through gloo (TPU/GPU use ICI/NCCL).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    import keras
    import numpy as np

    keras.distribution.initialize()  # reads KERAS_DISTRIBUTION_* from the environment
    from kerasgemma.distribution import choose_strategy, configure, detect_devices, shard_batch

    devices = detect_devices()
    configure(choose_strategy(1, devices, batch_size=8, distribution="data"), "gemma")
    rows = np.arange(16, dtype=np.float32).reshape(4, 4) + 16 * jax.process_index()
    batch = shard_batch({"x": rows})["x"]
    print(devices.count, devices.processes, batch.shape, float(jax.jit(lambda x: x.sum())(batch)))
