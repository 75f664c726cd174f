"""The benchmarks' CPU smoke modes run, so the scripts cannot rot between GPU runs; the peers' packed inputs are right."""

import doctest
import importlib.util
import json
import sys

import numpy as np
import pytest
from helpers import REPO_ROOT

ROOT = REPO_ROOT


@pytest.fixture(scope="module")
def bench():
    """bench/ on the path, for its modules (train_throughput, peers_*, levers, memory)."""
    sys.path.insert(0, str(ROOT / "bench"))
    yield
    sys.path.remove(str(ROOT / "bench"))


@pytest.mark.slow
def test_train_throughput_smoke(bench, tmp_path, capsys):
    import train_throughput

    out = tmp_path / "smoke.json"
    assert train_throughput.main(["--smoke", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| tiny | kerasgemma |" in printed and "| tiny | hf_packed |" in printed
    arms = {row["arm"]: row for row in json.loads(out.read_text())["rows"]}
    assert set(arms) == set(train_throughput.ARMS)
    skipped = {arm: row["skipped"] for arm, row in arms.items() if "skipped" in row}
    # Everything that can run on a CPU runs; the rest says why not.
    assert set(skipped) <= {"kerashub_fit_fp32", "hf_peft_compile", "hf_packed_liger", "hf_packed_liger_compile",
                            "unsloth", "tunix"}
    assert all(reason for reason in skipped.values())
    ran = {arm: row for arm, row in arms.items() if arm not in skipped}
    assert {"kerasgemma", "kerasgemma_reference_loss", "kerashub_fit_bf16", "hf_peft_eager", "hf_packed",
            "hf_packed_across_examples"} <= set(ran)
    for row in ran.values():
        assert row["useful_tokens_per_second"] > 0
    # Same data, same model, same seed: the fused loss is the reference loss, and transformers on the
    # same packed rows, loaded from kerasgemma's export of the same weights, computes the same first loss.
    assert abs(arms["kerasgemma"]["loss"] - arms["kerasgemma_reference_loss"]["loss"]) < 1e-3
    assert arms["hf_packed"]["same_function"] and arms["hf_packed"]["loss_difference"] < 1e-3
    # The control lets the examples of a row attend to each other: the check sees it.
    assert arms["hf_packed_across_examples"]["same_function"] is False
    # Packing: nearly every computed position is a real token; padding to 1024 wastes most.
    packed = arms["kerasgemma"]["useful_tokens"] / arms["kerasgemma"]["computed_tokens"]
    padded = arms["kerashub_fit_bf16"]["useful_tokens"] / arms["kerashub_fit_bf16"]["computed_tokens"]
    assert packed > 0.95 > 0.5 > padded


def _row(arm, speed, first_loss, **extra):
    return dict(model="gemma_2b", arm=arm, useful_tokens_per_second=speed, useful_tokens=speed, seconds=1.0, steps=10,
                compile_seconds=1.0, loss=12.0, first_loss=first_loss, peak_bytes=2**30, **extra)


def test_table_ratios_against_the_best_peer_that_computes_the_same_function(bench, tmp_path):
    import peers_table

    setting = dict(date="2026-11-29", sequence_length=1024, tokens_per_step=8192)
    first = dict(setting, rows=[_row("kerasgemma", 50_000, 12.460, remat="none"),
                                _row("hf_packed_liger", 40_000, 12.461)])
    # A peer whose first loss is off is marked but still counted (it can only lower kerasgemma's ratio);
    # the control is never a peer.
    second = dict(setting, rows=[_row("kerasgemma", 51_000, 12.460, remat="block"),
                                 _row("unsloth", 45_000, 12.300), _row("tunix", 20_000, 12.4601),
                                 _row("hf_packed_across_examples", 90_000, 12.470)])
    paths = []
    for index, run in enumerate((first, second)):
        paths.append(str(tmp_path / f"run{index}.json"))
        (tmp_path / f"run{index}.json").write_text(json.dumps(run))
    lines = peers_table.combined_table(paths).splitlines()
    row = {line.split(" | ")[1]: line.split(" | ") for line in lines[3:]}
    assert row["kerasgemma"][-1] == "1.11x |" and row["kerasgemma (remat block)"][-1] == "1.13x |"
    assert row["unsloth"][7].startswith("NO (0.1600)") and row["tunix"][7].startswith("yes")
    assert row["hf_packed_across_examples"][7].startswith("NO (0.0100)")
    assert "8 rows x 1024 tokens" in lines[0]


def _tiny_hf_model(architecture):
    import torch
    import transformers

    common = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=1, head_dim=16)
    if architecture == "gemma":
        config, model_class = transformers.GemmaConfig(**common), transformers.GemmaForCausalLM
    elif architecture == "gemma2":  # soft-caps small enough to matter, a window shorter than the examples
        config = transformers.Gemma2Config(**common, sliding_window=4, attn_logit_softcapping=0.5,
                                           final_logit_softcapping=1.0)
        model_class = transformers.Gemma2ForCausalLM
    else:
        config = transformers.Gemma3TextConfig(**common, sliding_window=4,
                                               layer_types=["sliding_attention", "full_attention"])
        model_class = transformers.Gemma3ForCausalLM
    import peers_torch

    config._attn_implementation = peers_torch.attention_for(architecture)
    torch.manual_seed(0)
    return model_class(config).eval()


@pytest.mark.parametrize("architecture", ["gemma", "gemma2", "gemma3"])
def test_packed_rows_give_transformers_each_example_alone(bench, architecture):
    """transformers on kerasgemma's packed rows (restarting position_ids, no mask) scores each example as if
    it were alone, on the path each peer arm takes (sdpa; eager for Gemma 2's soft-cap) -- only without a KV
    cache: with the config's default `use_cache` the examples attend to each other."""
    import torch

    import peers_torch
    from kerasgemma.data import Batches, TokenizedExample

    rng = np.random.default_rng(0)
    examples = [TokenizedExample(rng.integers(3, 128, n).astype(np.int32), (np.arange(n) >= 2).astype(np.int8))
                for n in (7, 9, 5)]
    batch = next(Batches(examples, 1, 24).epoch(0))
    assert batch["segment_ids"].max() == 3
    model = _tiny_hf_model(architecture)
    with torch.no_grad():
        alone = 0.0
        for example in examples:
            ids = torch.from_numpy(example.token_ids.astype(np.int64))[None]
            labels = torch.where(torch.from_numpy(example.loss_mask)[None] == 1, ids, -100)
            alone += model(input_ids=ids, labels=labels).loss.item() * int((labels[:, 1:] != -100).sum())
        inputs = {key: torch.from_numpy(value) for key, value in peers_torch.packed_batch(batch).items()}
        count = int((inputs["shift_labels"] != -100).sum())
        packed = model(**inputs, use_cache=False).loss.item() * count
        with_cache = model(**inputs).loss.item() * count
        one_row = {key: torch.from_numpy(value) for key, value in peers_torch.packed_batch(batch, one_row=True).items()
                   if key != "shift_labels"}  # Unsloth's layout: labels it shifts itself
        unshifted = model(**one_row, use_cache=False).loss.item() * count
    assert packed == pytest.approx(alone, rel=1e-5)
    assert unshifted == pytest.approx(alone, rel=1e-5)
    assert abs(with_cache - alone) > 1e-3


@pytest.mark.slow
def test_levers_smoke_with_kernel_summary(bench, tmp_path, capsys):
    import levers

    out = tmp_path / "levers.json"
    variants = ["default", "causal_only", "flash_attention", "loss_every_token"]
    assert levers.main(["--smoke", "--variants", *variants, "--profile", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert all(f"| {variant} |" in printed for variant in variants)
    rows = {row["variant"]: row for row in json.loads(out.read_text())["rows"]}
    # Without the segment mask examples see each other: a different loss.
    assert rows["default"]["loss"] != rows["causal_only"]["loss"]
    # The flash kernel (interpret mode here) computes the default's function: equal to the printed 1e-4,
    # where letting examples see each other (causal_only) moves the loss by 2.2e-3 (measured).
    assert rows["flash_attention"]["loss"] == pytest.approx(rows["default"]["loss"], abs=5e-4)
    # Projecting the prompt tokens too changes nothing but the work done.
    assert rows["loss_every_token"]["loss"] == pytest.approx(rows["default"]["loss"], abs=1e-4)
    assert (tmp_path / "profile").is_dir()
    assert rows["default"]["profile"][0].startswith(("device time per step", "no device events"))


def test_gemma2_peers_compute_the_attention_soft_cap(bench):
    """The attention path the peers take for Gemma 2 applies its soft-cap (transformers 5.17's sdpa drops it)."""
    import torch

    import peers_torch

    ids = torch.arange(3, 19)[None]
    capped = _tiny_hf_model("gemma2")
    uncapped = _tiny_hf_model("gemma2")
    with torch.no_grad():
        for model in (capped, uncapped):  # attention logits of a few units, past the cap of 0.5
            for layer in model.model.layers:
                layer.self_attn.q_proj.weight.mul_(100.0)
        for layer in uncapped.model.layers:
            layer.self_attn.attn_logit_softcapping = None
        difference = (capped(input_ids=ids).logits - uncapped(input_ids=ids).logits).abs().max().item()
    assert peers_torch.attention_for("gemma2") == capped.config._attn_implementation and difference > 1e-3


def test_kernel_summary_groups_device_time(bench):
    import levers

    assert levers.kernel_kind("cudnn_generated_fort_native_sdpa_sm90_flash_bprop") == "attention"
    assert levers.kernel_kind("splash_mha_dkv_segmented_no_residuals") == "attention"
    assert levers.kernel_kind("segment_flash_dkv") == "attention"
    assert levers.kernel_kind("nvjet_sm90_tst_128x160_64x5_2x1_v_bz_NNT") == "matmul"
    assert levers.kernel_kind("loop_add_multiply_fusion_17") == "other fusion"


def test_trace_summary_reads_device_kernels_only(bench, tmp_path):
    import gzip

    import levers

    events = [
        {"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/device:GPU:0"}},
        {"ph": "M", "name": "process_name", "pid": 2, "args": {"name": "/host:CPU"}},
        {"ph": "X", "pid": 1, "ts": 0, "name": "nvjet_sm90_gemm", "dur": 2000, "args": {"hlo_op": "custom-call.7"}},
        {"ph": "X", "pid": 1, "ts": 2500, "name": "nvjet_sm90_gemm", "dur": 1000, "args": {"hlo_op": "custom-call.9"}},
        {"ph": "X", "pid": 1, "ts": 3500, "name": "cudnn_flash_bprop", "dur": 1000},
        {"ph": "X", "pid": 2, "ts": 0, "name": "python_host_work", "dur": 99000},
    ]
    (tmp_path / "run").mkdir()
    with gzip.open(tmp_path / "run" / "perfetto_trace.json.gz", "wt") as file:
        json.dump({"traceEvents": events}, file)
    hlo = ('%custom-call.7 = bf16[8,8] custom-call(%a), metadata={op_name="jit(step)/jvp(fused_cross_entropy)/dot"}\n'
           '%custom-call.9 = bf16[8,8] custom-call(%b), metadata={op_name="jit(step)/transpose/dot_general"}')
    summary = levers.summarize_trace(str(tmp_path), steps=2, op_names=levers.hlo_op_names(hlo))
    assert "device time per step: 2.0 ms" in summary and "no kernel running: 0.2 ms" in summary
    assert "matmul" in summary and "75.0%" in summary and "python_host_work" not in summary
    parts = summary.split("per part of the step (2 of 3 kernel runs traced to a JAX op):")[1]
    assert "loss                1.0 ms   50.0%" in parts and "attention           0.5 ms" in parts
    assert "decoder blocks      0.5 ms" in parts
    gaps = summary.split("no kernel running, by the kernel that ran next (ms per step):\n")[1]
    assert gaps.startswith("      0.25  [decoder blocks] jit(step)/transpose/dot_general\n")


@pytest.mark.slow
def test_memory_bench_smoke(bench, tmp_path, capsys):
    import memory

    out = tmp_path / "memory.json"
    assert memory.main(["--smoke", "--out", str(out)]) == 0
    assert "| tiny | int8 | block | 128 |" in capsys.readouterr().out
    rows = json.loads(out.read_text())["rows"]
    assert [row["row"] for row in rows] == ["tiny:bf16:none:128", "tiny:int8:block:128", "tiny_gemma4:int4:dots:128",
                                            "tiny:hf-bnb4:none:128"]
    for row in rows[:3]:
        assert row["useful_tokens"] > 0 and row["estimate_bytes"] > 0 and np.isfinite(row["loss"])
        assert row["host_peak_bytes"] > 0 and row["row_seconds"] > 0
    # No CUDA GPU here: the transformers + bitsandbytes arm says why it did not run.
    assert rows[3]["skipped"] == "transformers + bitsandbytes 4-bit needs a CUDA GPU"


def test_memory_bench_feeds_transformers_the_same_packed_rows():
    sys.path.insert(0, str(ROOT / "bench"))
    import memory

    assert doctest.testmod(memory).failed == 0
    # Every loss-weighted target of the packed batch is one of transformers' labels, one place later.
    batch = memory.packed_batches("tiny", 64, 2, 1)[0]
    inputs = memory.hf_packed(batch)
    weighted = batch["loss_weights"][:, :-1] > 0
    assert (inputs["labels"][:, 1:][weighted] == batch["target_ids"][:, :-1][weighted]).all()
    assert (inputs["labels"] != -100).sum() == weighted.sum()
    assert (inputs["position_ids"][batch["segment_ids"] > 0] < 64).all()
    assert set(inputs["position_ids"][:, 0]) == {0}


def test_attention_kernels_smoke_compares_each_arm_with_the_dense_reference(bench, tmp_path, capsys):
    import attention_kernels

    out = tmp_path / "attention.json"
    arms = ["cudnn_hint", "xla_softcap", "tokamax_xla"]
    assert attention_kernels.main(["--smoke", "--arms", *arms, "--out", str(out)]) == 0
    rows = {(row["shape"], row["arm"]): row for row in json.loads(out.read_text())["rows"]}
    assert "| tiny_softcap | xla_softcap |" in capsys.readouterr().out
    # Without a soft-cap every path computes the reference; with one, only the paths that apply it do.
    assert rows["tiny", "cudnn_hint"]["max_abs_diff"] < 0.05 and rows["tiny", "xla_softcap"]["max_abs_diff"] < 0.05
    assert rows["tiny_softcap", "xla_softcap"]["max_abs_diff"] < 0.05
    assert rows["tiny_softcap", "cudnn_hint"]["max_abs_diff"] > 0.5
    tokamax_row = rows["tiny_softcap", "tokamax_xla"]
    if importlib.util.find_spec("tokamax") is None:  # optional: the bench's arm, not a kerasgemma dependency
        assert "tokamax" in tokamax_row["error"]
    else:
        assert tokamax_row["max_abs_diff"] < 0.05 and rows["tiny", "tokamax_xla"]["max_abs_diff"] < 0.05


def test_arms_spread_over_gpus_one_at_a_time_each_after_their_models_weights(bench):
    import threading
    import time

    import train_throughput

    jobs = [(0, "a", "kerasgemma"), (1, "a", "hf_packed"), (2, "a", "tunix"), (3, "b", "kerasgemma"),
            (4, "b", "hf_packed")]
    spans, busy, most_busy, lock = {}, set(), [0], threading.Lock()

    def run(model, arm, gpu):
        with lock:
            assert gpu not in busy, f"two arms on GPU {gpu}"
            busy.add(gpu)
            most_busy[0] = max(most_busy[0], len(busy))
        start = time.monotonic()
        time.sleep(0.1 if arm == "kerasgemma" else 0.03)  # a free GPU must not start a peer before its weights
        with lock:
            busy.discard(gpu)
        spans[(model, arm)] = (start, time.monotonic())
        return {"gpu": gpu}

    ended = list(train_throughput.spread_over_gpus(jobs, run, ["4", "7", "9"]))
    assert sorted(index for index, _ in ended) == list(range(5))
    assert {row["gpu"] for _, row in ended} <= {"4", "7", "9"} and most_busy[0] >= 2
    for model, arm in [("a", "hf_packed"), ("a", "tunix"), ("b", "hf_packed")]:
        assert spans[(model, arm)][0] >= spans[(model, "kerasgemma")][1]


def test_resume_runs_only_the_arms_an_earlier_run_left(bench, tmp_path, monkeypatch, capsys):
    import train_throughput

    settings = dict(sequence_length=1024, tokens_per_step=8192, remat="none")
    earlier = {"card": "NVIDIA H200", "date": "2026-11-30", **settings, "steps": 10, "seed": 0, "rows": [
        dict(model="gemma_2b", arm="kerasgemma", **settings, useful_tokens=1000, seconds=1.0, steps=10,
             compile_seconds=5.0, first_loss=12.0, loss=11.0, peak_bytes=2**30, useful_tokens_per_second=1000.0),
        dict(model="gemma_2b", arm="hf_packed", **settings, error="RuntimeError: killed"),
        dict(model="gemma_2b", arm="unsloth", **settings, skipped="ModuleNotFoundError: No module named 'unsloth'")]}
    out = tmp_path / "whole.json"
    out.write_text(json.dumps(earlier))
    calls = []

    def fake_child(arm, model, args, shared_dir, gpu=None):
        calls.append((model, arm, gpu))
        return dict(useful_tokens=500, seconds=1.0, steps=10, compile_seconds=5.0, first_loss=12.0, loss=11.5,
                    peak_bytes=2**30)

    monkeypatch.setattr(train_throughput, "run_child", fake_child)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    shared = tmp_path / "shared"
    argv = ["--models", "gemma_2b", "--extra-models", "--arms", "kerasgemma", "hf_packed", "unsloth", "tunix",
            "--steps", "10", "--out", str(out), "--resume", "--gpus", "2", "--shared-dir", str(shared)]
    # On another machine the peers' weights are gone: kerasgemma runs again first.
    assert train_throughput.main(argv) == 0
    assert sorted((model, arm) for model, arm, _ in calls) == [("gemma_2b", "hf_packed"), ("gemma_2b", "kerasgemma"),
                                                               ("gemma_2b", "tunix")]
    calls.clear()
    out.write_text(json.dumps(earlier))
    (shared / "gemma_2b-seed0").mkdir(parents=True)
    (shared / "gemma_2b-seed0" / "config.json").write_text("{}")
    assert train_throughput.main(argv) == 0
    assert sorted((model, arm) for model, arm, _ in calls) == [("gemma_2b", "hf_packed"), ("gemma_2b", "tunix")]
    assert {gpu for _, _, gpu in calls} <= {"0", "1"}
    rows = json.loads(out.read_text())["rows"]
    assert [row["arm"] for row in rows] == ["kerasgemma", "hf_packed", "unsloth", "tunix"]
    assert rows[0]["useful_tokens_per_second"] == 1000.0 and rows[1]["same_function"] is True
    assert "| gemma_2b | tunix |" in capsys.readouterr().out
    # Another row length is another run: refused, the file untouched.
    assert train_throughput.main(argv + ["--sequence-length", "4096"]) == 2
    assert "--resume:" in capsys.readouterr().err and json.loads(out.read_text())["rows"] == rows
