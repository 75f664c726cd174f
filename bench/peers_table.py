"""The throughput table of bench/train_throughput.py: which arms are peers, whether each computes kerasgemma's
function, and each row's speed against kerasgemma and against the best peer of the same model.

A packed arm's first-step loss (the weights as loaded, LoRA B = 0) is compared with kerasgemma's on the same
first batch (`compare_functions`); "vs best peer" divides by the fastest peer of the model that ran (`best_peer`),
marked or not: a peer that computes another, cheaper function then lowers kerasgemma's ratio rather than raising
it, and its mark says so. `combined_table` prints one table from the JSON of
consecutive calls, e.g. peers split over two calls to stay under a device call's time limit.

    python bench/train_throughput.py --table bench/results/a.json bench/results/b.json
"""

import json

# kerasgemma; the notebook baselines (padded); the peers on kerasgemma's packed rows.
KERASGEMMA_ARMS = ("kerasgemma", "kerasgemma_reference_loss")
BASELINE_ARMS = ("kerashub_fit_bf16", "kerashub_fit_fp32", "hf_peft_eager", "hf_peft_compile")
PACKED_PEER_ARMS = ("hf_packed", "hf_packed_liger", "hf_packed_liger_compile", "unsloth", "tunix")
# Measurement only, never a peer: hf_packed with transformers' default KV cache, so the examples of a row attend
# to each other; its first-loss difference shows what such a leak looks like at the shape measured.
CONTROL_ARMS = ("hf_packed_across_examples",)
ARMS = KERASGEMMA_ARMS + BASELINE_ARMS + PACKED_PEER_ARMS + CONTROL_ARMS


# First-step losses of two bf16 implementations of one function differ by rounding only: <= 3e-4 on the tiny
# shapes (transformers <= 1e-4, Tunix <= 3e-4); the control (examples attending to each other) moved tiny Gemma 1
# and 2 by 1.1e-3 to 1.2e-3 but a tiny Gemma 3 with an 8-token window not at all. bench/NOTES.md ("Same function
# first") says how to read the column at real shapes: next to the control's difference.
SAME_FUNCTION_TOLERANCE = 5e-4


def card_of(rows):
    return next((row["device"] for row in rows if row.get("device")), "unknown")


def is_kerasgemma(arm):
    return arm.startswith("kerasgemma")


def measured(row):
    """True for a row that ran (neither failed nor skipped)."""
    return "error" not in row and "skipped" not in row


def compare_functions(rows, tolerance=SAME_FUNCTION_TOLERANCE):
    """Mark each packed arm's row with `loss_difference` and `same_function` against kerasgemma's first loss.

    Padded arms see other first batches, so they get neither.

    Example:
    >>> rows = [{"model": "m", "arm": "kerasgemma", "first_loss": 12.46},
    ...         {"model": "m", "arm": "hf_packed", "first_loss": 12.4602}, {"model": "m", "arm": "unsloth", "first_loss": 12.9}]
    >>> [(r["arm"], r["same_function"]) for r in compare_functions(rows)]
    [('kerasgemma', True), ('hf_packed', True), ('unsloth', False)]
    """
    for row in rows:
        reference = next((r for r in rows if r["model"] == row["model"] and r["arm"] == "kerasgemma"
                          and "first_loss" in r), None)
        packed = is_kerasgemma(row["arm"]) or row["arm"] in PACKED_PEER_ARMS + CONTROL_ARMS
        if reference and "first_loss" in row and packed:
            row["loss_difference"] = abs(row["first_loss"] - reference["first_loss"])
            row["same_function"] = row["loss_difference"] <= tolerance
    return rows


def best_peer(rows, model):
    """The fastest peer row of `model` that ran (controls aside), or None."""
    peers = [r for r in rows if r["model"] == model and not is_kerasgemma(r["arm"]) and r["arm"] not in CONTROL_ARMS
             and measured(r)]
    return max(peers, key=lambda r: r["useful_tokens_per_second"], default=None)


def format_table(rows, card, setting=""):
    header = ("model", "arm", "useful tok/s", "step ms", "peak GiB", "compile s", "loss", "same function (Δ first loss)",
              "vs kerasgemma", "vs best peer")
    lines = [f"card: {card}{setting}", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        head = f"| {row['model']} | {row['arm']} |"
        if not measured(row):
            what = f"skipped: {row['skipped']}" if "skipped" in row else f"failed: {row['error']}"
            lines.append(f"{head} {what[:160]} |" + " |" * (len(header) - 3))
            continue
        speed = row["useful_tokens_per_second"]
        base = next((r for r in rows if r["model"] == row["model"] and r["arm"] == "kerasgemma" and measured(r)), None)
        peer = best_peer(rows, row["model"])
        ratio = lambda other: f"{speed / other['useful_tokens_per_second']:.2f}x" if other else "n/a"
        peak = f"{row['peak_bytes'] / 2**30:.1f}" if row.get("peak_bytes") else "n/a"
        same = "n/a"
        if "same_function" in row:
            same = f"{'yes' if row['same_function'] else 'NO'} ({row['loss_difference']:.4f})"
        lines.append(
            f"{head} {speed:,.0f} | {1000 * row['seconds'] / row['steps']:.0f} | {peak} | "
            f"{row['compile_seconds']:.1f} | {row['loss']:.3f} | {same} | {ratio(base)} | {ratio(peer)} |"
        )
    return "\n".join(lines)


def combined_table(paths):
    """One table from the --out files of consecutive calls with the same rows per step: the same-function
    check and the best peer are taken over all their rows (kerasgemma's first row of a model is the reference;
    a kerasgemma row run with remat is labelled so)."""
    runs = []
    for path in paths:
        with open(path) as file:
            runs.append(json.load(file))
    shapes = {(run["sequence_length"], run["tokens_per_step"]) for run in runs}
    if len(shapes) > 1:
        raise SystemExit(f"--table: the runs have different rows per step {sorted(shapes)}; print them apart")
    rows = [dict(row, arm=f"{row['arm']} (remat {row['remat']})") if row["arm"] in KERASGEMMA_ARMS
            and row.get("remat", "none") != "none" else row for run in runs for row in run["rows"]]
    (length, tokens), = shapes
    return format_table(compare_functions(rows), card_of(rows),
                        f", {tokens // length} rows x {length} tokens a step; runs: {', '.join(paths)}")
