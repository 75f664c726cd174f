"""A quantized base is loaded and quantized on the host CPU, then placed on the training devices.

JAX fixes its device count when it starts, so the check runs this file as a
script in a fresh Python with two CPU devices
(`XLA_FLAGS=--xla_force_host_platform_device_count=2`): data parallel over
both stands in for the accelerators, and CPU device 0 is also "the host".
The script builds the same `quantize="int8"` run twice, once through the
host (the default) and once as without a CPU backend (the fallback: the
float base loaded on the devices and quantized there), runs the first one's
compiled train step on its first batch and prints one JSON line.
"""

import json
import os
import subprocess
import sys
import tempfile

import pytest


def run_script():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2").strip()
    done = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # a fresh Python on 2 devices: ~25 s; `place_on_devices`' doctest is the fast check
def test_quantized_base_goes_through_the_host_to_the_devices():
    result = run_script()
    host, devices = result["host"], result["devices"]
    assert "the base is loaded and quantized on the host CPU first" in host["log"]
    assert "loads on the host: " in host["log"] and "of host RAM" in host["log"]
    assert "JAX has no CPU backend" in devices["log"] and "on the host CPU first" not in devices["log"]
    # Every weight, LoRA matrix and optimizer slot is laid out over both
    # devices (replicated under data parallel), none left on the host.
    assert host["variables"] > 0 and host["optimizer_variables"] > 0 and host["quantized"] == "int8"
    assert host["off_mesh"] == [], host["off_mesh"]
    # No float copy survives: no float array of a quantized kernel's shape
    # lives on the host device alone (the check finds one made there).
    assert host["host_only_float"] == [], host["host_only_float"]
    assert host["float_copy_found"] == 1
    # The same quantized base and the same LoRA start, bit for bit, as
    # loading on the devices: the same train step then gives the same
    # losses. The host-built run's compiled step runs.
    assert host["weights"] == devices["weights"]
    assert 0 < host["first_loss"] < 100


def _through_host():
    """`start_run` of an int8 run on the 2-device data-parallel mesh, and what the test checks of it."""
    import contextlib
    import gc
    import io

    import jax
    import numpy as np

    from kerasgemma.config import TrainConfig
    from kerasgemma.demo import SAMPLE_DATA
    from kerasgemma.distribution import host_device, on_host, shard_batch
    from kerasgemma.quantization import quantization_mode
    from kerasgemma.run import start_run
    from kerasgemma.training import stack_micro_batches

    config = TrainConfig(preset="tiny:gemma", data=str(SAMPLE_DATA), quantize="int8", distribution="data",
                         batch_size=2, sequence_length=32, max_steps=2, dtype="float32", output_dir=tempfile.mkdtemp())
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        run = start_run(config, progress=False)
    lm, trainer = run.causal_lm, run.trainer
    quantized_shapes = {tuple(v.shape) for v in lm.variables if v.dtype == "int8"}

    def host_only_float():
        gc.collect()
        return [f"{a.dtype}{a.shape}" for a in jax.live_arrays() if a.devices() == {host_device()}
                and np.issubdtype(a.dtype, np.floating) and tuple(a.shape) in quantized_shapes]

    left_on_host = host_only_float()
    with on_host():
        float_copy = jax.numpy.zeros(sorted(quantized_shapes)[0], "float32")
    float_copy_found = len(host_only_float()) if float_copy is not None else 0
    batch = shard_batch(stack_micro_batches(trainer.batches_for_step(0)), batch_axis=1)  # as `Trainer.fit` does
    _, loss, _ = trainer.train_step(trainer.state, trainer.non_trainable, batch)
    return config, run.data.examples.texts(), {
        "log": log.getvalue(), "weights": _digest(lm.variables), "quantized": quantization_mode(lm),
        "variables": len(lm.variables), "optimizer_variables": len(trainer.optimizer.variables),
        "off_mesh": [v.path for v in lm.variables + trainer.optimizer.variables
                     if v.value.devices() != set(jax.devices())],
        "host_only_float": left_on_host, "float_copy_found": float_copy_found, "first_loss": float(loss),
    }


def _through_devices(config, texts):
    """`build_model` of the same run as if JAX had no CPU backend (the float base loaded on the devices)."""
    import contextlib
    import io
    from unittest import mock

    from kerasgemma.run import build_model

    log = io.StringIO()
    with contextlib.redirect_stdout(log), mock.patch("kerasgemma.distribution.host_device", return_value=None):
        lm = build_model(config, texts)
    return {"log": log.getvalue(), "weights": _digest(lm.variables)}


def _digest(variables):
    """One SHA-256 over the paths, dtypes and bytes of `variables`."""
    import hashlib

    import numpy as np

    digest = hashlib.sha256()
    for variable in variables:
        digest.update(f"{variable.path}:{variable.dtype}".encode())
        digest.update(np.ascontiguousarray(np.asarray(variable.value)).tobytes())
    return digest.hexdigest()


if __name__ == "__main__":
    config, texts, host = _through_host()
    print(json.dumps({"host": host, "devices": _through_devices(config, texts)}))
