"""Export verification on 8 devices builds its float32 reference on the host CPU, not replicated.

JAX fixes its device count at start-up, so the check runs this file as a
script in a fresh Python with `XLA_FLAGS=--xla_force_host_platform_device_count=8`
(as tests/test_distribution_mesh.py does), with training's data-parallel
distribution installed, and prints one JSON line.
"""

import json
import os
import subprocess
import sys

import pytest


@pytest.mark.slow  # a fresh Python with transformers: ~40 s of CPU
def test_float32_reference_lives_on_the_host_cpu_under_data_parallel(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
    done = subprocess.run([sys.executable, __file__, str(tmp_path / "hf")], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["devices"] == 8
    assert result["model_weight_devices"] == [8]  # the bfloat16 model: replicated by data parallel
    assert result["reference_weight_devices"] == [["cpu:0"]]  # the float32 copy: one, the host CPU
    assert result["distribution_after"] == "DataParallel"  # training's distribution is back
    assert result["passed"] and result["reference"].startswith("float32 copy")


def main(output_dir):
    import jax

    from kerasgemma.distribution import Strategy
    from kerasgemma.distribution import configure
    from kerasgemma.export import verify
    from kerasgemma.export.merged import export_merged
    from kerasgemma.tiny import build_tiny_causal_lm

    configure(Strategy("data", (8, 1), "test"), "gemma")
    lm = build_tiny_causal_lm("gemma", dtype="bfloat16")
    lm.backbone.enable_lora(2)
    references = []
    build_reference = verify.float32_reference

    def recording_reference(causal_lm, log=print):
        references.append(build_reference(causal_lm, log=log))
        return references[-1]

    verify.float32_reference = recording_reference
    folder = export_merged(lm, output_dir)
    report = verify.verify_merged(lm, folder, max_new_tokens=2, check_mlx=False, write_report=False)
    import keras

    print(json.dumps({
        "devices": jax.device_count(),
        "model_weight_devices": sorted({len(v.value.devices()) for v in lm.weights}),
        "reference_weight_devices": sorted(
            {tuple(sorted(str(d) for d in v.value.devices())) for v in references[0].weights}
        ),
        "distribution_after": type(keras.distribution.distribution()).__name__,
        "passed": report.passed,
        "reference": report.reference,
    }))


if __name__ == "__main__":
    main(sys.argv[1])
