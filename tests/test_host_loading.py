"""A quantized base is loaded and quantized on the host CPU, then placed on the training devices.

JAX fixes its device count when it starts, so the check runs this file as a
script in a fresh Python with two CPU devices
(`XLA_FLAGS=--xla_force_host_platform_device_count=2`): data parallel over
both stands in for the accelerators, and CPU device 0 is also "the host".
The script builds the same `quantize="int8"` run twice, once through the
host (the default) and once as without a CPU backend (today's fallback: the
float base loaded on the devices and quantized there), trains two steps of
the first and prints one JSON line.
"""

import json
import os
import subprocess
import sys
import tempfile


def run_script():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2").strip()
    done = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_quantized_base_goes_through_the_host_to_the_devices():
    result = run_script()
    host, devices = result["host"], result["devices"]
    assert "the base is loaded and quantized on the host CPU first" in host["log"]
    assert "loads on the host: " in host["log"] and "of host RAM" in host["log"]
    assert "JAX has no CPU backend" in devices["log"] and "on the host CPU first" not in devices["log"]
    for built in (host, devices):
        # Every weight, LoRA matrix and optimizer slot is laid out over both
        # devices (replicated under data parallel), none left on the host.
        assert built["variables"] > 0 and built["optimizer_variables"] > 0
        assert built["off_mesh"] == [], built["off_mesh"]
        assert built["quantized"] == "int8"
    # No float copy survives: no float array of a quantized kernel's shape
    # lives on the host device alone (a float model kept there would).
    assert host["host_only_float"] == [], host["host_only_float"]
    assert host["float_model_on_host"] > 0
    # The same quantized base and the same LoRA start, bit for bit: the same
    # train step then gives the same losses; the host-built run trains.
    assert host["weights"] == devices["weights"]
    assert len(host["losses"]) == 2 and all(loss > 0 for loss in host["losses"])


def _build(through_host):
    """Start and train a two-step int8 run on the 2-device data-parallel mesh; what the test checks of it."""
    import contextlib
    import gc
    import io
    from unittest import mock

    import jax
    import numpy as np

    from kerasgemma.config import TrainConfig
    from kerasgemma.demo import SAMPLE_DATA
    from kerasgemma.distribution import host_device
    from kerasgemma.distribution import on_host
    from kerasgemma.model import load_causal_lm
    from kerasgemma.quantization import quantization_mode
    from kerasgemma.run import start_run

    config = TrainConfig(preset="tiny:gemma", data=str(SAMPLE_DATA), quantize="int8", distribution="data",
                         batch_size=2, sequence_length=32, max_steps=2, dtype="float32", output_dir=tempfile.mkdtemp())
    log = io.StringIO()
    no_cpu_backend = mock.patch("kerasgemma.distribution.host_device", return_value=None)
    with contextlib.redirect_stdout(log), (contextlib.nullcontext() if through_host else no_cpu_backend):
        run = start_run(config, progress=False)
    lm, optimizer = run.causal_lm, run.trainer.optimizer
    off_mesh = [v.path for v in lm.variables + optimizer.variables if v.value.devices() != set(jax.devices())]
    quantized_shapes = {tuple(v.shape) for v in lm.variables if v.dtype == "int8"}

    def host_only_float():
        gc.collect()
        return [f"{a.dtype}{a.shape}" for a in jax.live_arrays() if a.devices() == {host_device()}
                and np.issubdtype(a.dtype, np.floating) and tuple(a.shape) in quantized_shapes]

    result = {"host_only_float": host_only_float(), "weights": _digest(lm.variables)}
    if through_host:
        with on_host():  # the check finds a float model kept on the host
            float_model = load_causal_lm(config.preset, dtype="float32", texts=run.data.examples.texts())
        result["float_model_on_host"] = len(host_only_float()) if float_model else 0
        with contextlib.redirect_stdout(log):
            run.fit()
        metrics = [json.loads(line) for line in (run.run_dir / "metrics.jsonl").read_text().splitlines()]
        result["losses"] = [record["train_loss"] for record in metrics if "train_loss" in record]
    return dict(result, **{
        "log": log.getvalue(), "variables": len(lm.variables), "optimizer_variables": len(optimizer.variables),
        "off_mesh": off_mesh, "quantized": quantization_mode(lm),
    })


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
    print(json.dumps({"host": _build(through_host=True), "devices": _build(through_host=False)}))
