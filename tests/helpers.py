"""Helpers shared by several test modules (plain code; fixtures live in conftest.py).

Test modules import this as `helpers` (pytest puts tests/ on sys.path, as
tests/ has no __init__.py). Keep test modules from importing each other.
"""

import argparse
import base64
import contextlib
import http.server
import json
import os
import threading
from pathlib import Path

import jax
import numpy as np
import pytest
import yaml

from kerasgemma.config import TrainConfig
from kerasgemma.export.verify import PromptCheck, VerificationReport
from kerasgemma.files import VERIFICATION_REPORT
from kerasgemma.tiny import build_tiny_causal_lm, tiny_backbone_config

REPO_ROOT = Path(__file__).resolve().parents[1]

# The tests that read the real Gemma 3 270M's GGUF (the `offline_gguf_reader`
# fixture) run on one pytest-xdist worker (`--dist loadgroup`), so the file is
# parsed once for all of them, the preset build included when that worker
# builds it; tests that need only the built preset may run on another worker.
uses_offline_gguf = pytest.mark.xdist_group("offline_gguf")


@contextlib.contextmanager
def optimized_xla():
    """XLA's full optimizations inside the block (the suite turns most of them off, tests/conftest.py).

    For tests that run the real Gemma 3 270M: they execute more than they
    compile. Programs compiled inside the block keep their optimizations.
    """
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", False)
    try:
        yield
    finally:
        jax.config.update("jax_disable_most_optimizations", previous)


def jitted_backbone(backbone):
    """`backbone(inputs)` as one compiled program.

    Eager JAX compiles every op again for each new shape: a tiny Gemma's
    first forward at a length takes 6-9 s on 2 cores, a jitted one 1-3 s.
    Call it inside any patch the forward should see (`packed_attention`):
    it is traced at the first call.
    """
    return jax.jit(lambda inputs: backbone(inputs))


def optimized_xla_environment():
    """`os.environ` for a subprocess that runs the real Gemma 3 270M with XLA's full optimizations."""
    return {**os.environ, "JAX_DISABLE_MOST_OPTIMIZATIONS": "0"}


def write_sum_rows(path, count=12, with_ids=False):
    """Write `count` HC3-style rows ("i加i等于几？" -> "i加i等于2i。") to `path` (JSON lines); return it.

    `with_ids`: each row also carries its index as an "id" string.
    """
    rows = [{**({"id": str(i)} if with_ids else {}), "question": f"{i}加{i}等于几？",
             "human_answers": [f"{i}加{i}等于{2 * i}。"]} for i in range(count)]
    Path(path).write_text("\n".join(json.dumps(row, ensure_ascii=False) for row in rows) + "\n", encoding="utf-8")
    return Path(path)


def parse_subcommand(command_module, name, argv):
    """Parse `argv` with only `command_module`'s subcommand registered (`kerasgemma NAME ...`)."""
    parser = argparse.ArgumentParser()
    command_module.add_parser(parser.add_subparsers())
    return parser.parse_args([name] + list(argv))


# --- LoRA models for the export tests (merged, adapter) ---------------------

ALL_LINEAR = [
    "query",
    "key",
    "value",
    "attention_output",
    "ffw_gating",
    "ffw_gating_2",
    "ffw_linear",
]


def lora_model(architecture, num_key_value_heads=1, num_layers=2, targets=None, rank=2):
    """A tiny causal LM with LoRA whose A and B are random (a dropped LoRA shows)."""
    lm = build_tiny_causal_lm(architecture, num_key_value_heads=num_key_value_heads)
    if num_layers != lm.backbone.num_layers:
        if lm.backbone.vision_encoder is not None:
            raise ValueError("lora_model cannot change the layer count of a multimodal tiny model.")
        config = tiny_backbone_config(
            architecture, lm.backbone.vocabulary_size, num_key_value_heads
        )
        backbone = type(lm.backbone)(**dict(config, num_layers=num_layers))
        lm = type(lm)(backbone=backbone, preprocessor=lm.preprocessor)
    lm.backbone.enable_lora(rank, target_layer_names=targets)
    rng = np.random.default_rng(0)
    for layer in lm.backbone._flatten_layers():
        if getattr(layer, "lora_enabled", False):
            layer.lora_kernel_a.assign(rng.normal(0, 0.3, layer.lora_kernel_a.shape))
            layer.lora_kernel_b.assign(rng.normal(0, 0.3, layer.lora_kernel_b.shape))
    return lm


CASES = {
    # Gemma 1 2B shape (one KV head) and 7B shape (KV heads = query heads).
    "gemma_1kv": dict(architecture="gemma", num_key_value_heads=1),
    "gemma_4kv": dict(architecture="gemma", num_key_value_heads=4, targets=ALL_LINEAR),
    "gemma2": dict(architecture="gemma2", num_key_value_heads=2, targets=ALL_LINEAR),
    # 6 layers: 5 sliding + 1 global, and mlx-lm needs >= 6 Gemma 3 layers.
    "gemma3": dict(architecture="gemma3", num_layers=6),
}


# --- A local stand-in for the Hugging Face Hub (hub push, convert script) ---

TOKEN = "hf_standinSECRETtoken0123456789"


class JsonReplyHandler(http.server.BaseHTTPRequestHandler):
    """Base for the local stand-ins' request handlers: quiet, with a JSON `_reply`."""

    def log_message(self, *args):  # keep test output clean
        pass

    def _reply(self, value, status=200):
        body = json.dumps(value).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class HubStandIn:
    """A thread serving the Hub endpoints used by `push_to_hub`; records what it got."""

    def __init__(self):
        self.repos = {}  # repo_id -> {"visibility": ..., "files": {path: bytes}}
        self.authorizations = []
        self.metadata = []
        standin = self

        class Handler(JsonReplyHandler):

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                standin.authorizations.append(self.headers.get("Authorization"))
                parts = self.path.split("?")[0].strip("/").split("/")
                if parts[:3] == ["api", "repos", "create"]:
                    payload = json.loads(body)
                    repo_id = f"{payload['organization']}/{payload['name']}"
                    standin.repos.setdefault(repo_id, {"visibility": payload.get("visibility"), "files": {}})
                    return self._reply({"url": f"{standin.url}/{repo_id}", "name": repo_id, "id": repo_id})
                if parts[:2] == ["api", "validate-yaml"]:
                    content = json.loads(body)["content"]
                    try:
                        standin.metadata.append(yaml.safe_load(content.split("---")[1]))
                    except (IndexError, yaml.YAMLError) as error:
                        return self._reply({"errors": [{"message": str(error)}]}, 400)
                    return self._reply({"warnings": []})
                if parts[:2] == ["api", "models"] and len(parts) == 6:
                    repo_id, action = f"{parts[2]}/{parts[3]}", parts[4]
                    if repo_id not in standin.repos:
                        return self._reply({"error": "Repository not found"}, 404)
                    if action == "preupload":
                        files = json.loads(body)["files"]
                        return self._reply({"files": [
                            {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None}
                            for f in files
                        ]})
                    if action == "commit":
                        for line in body.decode().splitlines():
                            item = json.loads(line)
                            if item["key"] == "file":
                                value = item["value"]
                                standin.repos[repo_id]["files"][value["path"]] = base64.b64decode(value["content"])
                        return self._reply({"commitUrl": f"{standin.url}/{repo_id}/commit/{'0' * 40}",
                                            "commitOid": "0" * 40, "pullRequestUrl": None})
                self._reply({"error": f"not in the stand-in: {self.path}"}, 404)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


# --- The fused attention path, forced on CPU ---------------------------------


def spy_fused_attention(lm, monkeypatch):
    """Force keras-hub's fused attention op in every block of `lm` and record each call.

    XLA runs the op on CPU too, so the cuDNN/TPU code path (and the arguments
    `packed_attention` gives it) can be tested here. Returns `(calls, spy)`:
    the list each call's keyword arguments are appended to, and the spy now
    standing in for `keras.ops.dot_product_attention`.
    """
    import keras

    for block in lm.backbone.transformer_layers:
        monkeypatch.setattr(block.attention, "_use_fused_attention_op", lambda: True)
    calls = []
    dense = keras.ops.dot_product_attention

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return dense(*args, **kwargs)

    monkeypatch.setattr(keras.ops, "dot_product_attention", spy)
    return calls, spy


# --- PEFT adapter check ------------------------------------------------------


def export_and_verify_adapter(lm, folder, max_new_tokens):
    """Export `lm`'s base (unmerged, bfloat16) and PEFT adapter under `folder`, verify, return the adapter config.

    Asserts the verification passed with max |Δlogits| < 1e-4.
    """
    from kerasgemma.export import export_merged, verify_export
    from kerasgemma.export.adapter import export_adapter

    base = export_merged(lm, folder / "base", dtype="bfloat16", merge_lora=False)
    adapter = export_adapter(lm, folder / "adapter", base_model_name_or_path=base)
    report = verify_export(lm, adapter, base_dir=base, max_new_tokens=max_new_tokens)
    print(report.summary())
    assert report.passed, report.summary()
    assert report.max_abs_logits_diff < 1e-4
    return json.loads((Path(adapter) / "adapter_config.json").read_text())


def tiny_config(tmp_path, **changes):
    """A `TrainConfig` of a short `tiny:gemma` run on 24 `write_sum_rows` rows under `tmp_path`, with `changes`."""
    values = dict(
        preset="tiny:gemma",
        data=str(write_sum_rows(tmp_path / "rows.jsonl", count=24, with_ids=True)),
        sequence_length=48,
        batch_size=2,
        validation_fraction=0.15,
        learning_rate=1e-2,
        warmup_steps=2,
        max_steps=8,
        eval_every=4,
        save_every=2,
        keep_checkpoints=2,
        output_dir=str(tmp_path / "runs"),
    )
    values.update(changes)
    return TrainConfig(**values)


def losses(run_dir, key="train_loss"):
    """`{step: value}` of `key` in a run folder's metrics.jsonl."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {record["step"]: record[key] for record in records if key in record}


def fake_export(folder, passed=True):
    """A folder shaped like an export, with a verification report."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump({"model_type": "gemma3_text"}, f)
    check = PromptCheck("你好", True, 1e-6, [5, 6], [5, 6], True)
    report = VerificationReport(
        passed=passed, folder=str(folder), kind="merged", atol=1e-3, max_new_tokens=2,
        max_abs_logits_diff=1e-6 if passed else 0.5, weights_dtype="bfloat16", weights_bit_exact=True,
        rounded_max_abs_logits_diff=0.01, prompts=[check], mlx="skipped: test",
        failures=[] if passed else ["max |Δlogits| 0.5 > 0.001 on '你好'"],
    )
    with open(os.path.join(folder, VERIFICATION_REPORT), "w") as f:
        f.write(report.to_json())
    return str(folder)
