"""Model card and Hub push for an exported folder.

`push_to_hub` uploads only a folder whose `verification.json` says it passed
(unless forced), creates the repo private unless told otherwise, and never
handles the token itself: `huggingface_hub` reads `HF_TOKEN` or the stored
login, so the token is not in our arguments, messages, logs or files.
"""

import os

from kerasgemma.atomic import write_text_atomic
from kerasgemma.data.loading import DATASETS_PREFIX
from kerasgemma.data.loading import HC3_REPO_ID
from kerasgemma.data.loading import HC3_SOURCE
from kerasgemma.data.loading import HUB_PREFIX
from kerasgemma.errors import UserError
from kerasgemma.export.verify import read_report
from kerasgemma.files import ADAPTER_CONFIG
from kerasgemma.files import EXPORT_MARKER
from kerasgemma.files import MODEL_CARD

# Gemma weights are distributed under the Gemma Terms of Use; derivatives
# inherit them (https://ai.google.dev/gemma/terms).
GEMMA_LICENSE = "gemma"


class VerificationError(RuntimeError):
    """The folder failed verification, or was never verified."""


def _is_repo_id(name):
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "~")) and not os.path.exists(name)


def _usage(kind, repo_or_folder, base_model):
    if kind == "adapter":
        return f"""```python
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

base = AutoModelForCausalLM.from_pretrained("{base_model}")
model = PeftModel.from_pretrained(base, "{repo_or_folder}")
tokenizer = AutoTokenizer.from_pretrained("{base_model}")
```"""
    return f"""```python
from transformers import pipeline

chat = pipeline("text-generation", model="{repo_or_folder}")
messages = [{{"role": "user", "content": "中国的首都是哪里？"}}]
print(chat(messages, max_new_tokens=64, do_sample=False)[0]["generated_text"][-1]["content"])
```"""


def dataset_id(run_config):
    """`(Hub dataset id or None, how the card names the data)` for a run's config.

    Example:
    >>> dataset_id({"data": "hub", "subset": "baike"})
    ('Hello-SimpleAI/HC3-Chinese', 'Hello-SimpleAI/HC3-Chinese (subset baike)')
    >>> dataset_id({"data": "hub:shibing624/alpaca-zh@train"})
    ('shibing624/alpaca-zh', 'shibing624/alpaca-zh@train')
    >>> dataset_id({"data": "data/mine.jsonl"})
    (None, 'data/mine.jsonl')
    """
    data = run_config.get("data")
    if not data:
        return None, "not recorded"
    if data == HC3_SOURCE or data.startswith(HUB_PREFIX):
        repo = HC3_REPO_ID if data == HC3_SOURCE else data[len(HUB_PREFIX):].strip("/")
        subset = run_config.get("subset")
        return repo, f"{repo} (subset {subset})" if subset else repo
    if data.startswith(DATASETS_PREFIX):
        spec = data[len(DATASETS_PREFIX):]
        return spec.split("@")[0].split(":")[0], spec
    return None, data


def _serving(kind, repo_or_folder, base_model):
    """The "Serve it" commands: vLLM / SGLang on the folder, llama.cpp / Ollama through a GGUF export."""
    if kind == "adapter":
        return f"""```bash
vllm serve {base_model} --enable-lora --lora-modules finetuned={repo_or_folder}
```"""
    return f"""vLLM and SGLang pick the model class from `config.json`'s `architectures`:

```bash
vllm serve {repo_or_folder}
python -m sglang.launch_server --model-path {repo_or_folder}
```

llama.cpp and Ollama run a GGUF, written and verified from the Keras run (Gemma 1-3):

```bash
kerasgemma export RUN_FOLDER out/gguf --format gguf --gguf-type q8_0
llama-server -m out/gguf/model-Q8_0.gguf
ollama create my-gemma -f out/gguf/Modelfile && ollama run my-gemma
```"""


def _verification_section(report):
    if report is None:
        return "Not verified (`--no-verify`)."
    lines = [
        f"**{'Passed' if report['passed'] else 'FAILED'}** ({report['kind']}): compared with the Keras "
        f"model it was exported from, in float32, on {len(report['prompts'])} prompts "
        f"(reference: {report.get('reference', 'Keras model (float32)')}).",
        "",
        "| check | result |",
        "| --- | --- |",
        f"| max \\|Δ logits\\| (tolerance {report['atol']:g}) | {report['max_abs_logits_diff']:.3g} |",
        f"| weights ({report['weights_dtype']}) bit-exact vs Keras | {report['weights_bit_exact']} |",
        f"| max \\|Δ logits\\| with the folder's rounded weights | {report['rounded_max_abs_logits_diff']:.3g} |",
        f"| greedy tokens identical (≤ {report['max_new_tokens']} new) | "
        f"{all(p['greedy_match'] for p in report['prompts'])} |",
        f"| tokenizer ids identical | {all(p['tokens_match'] for p in report['prompts'])} |",
        f"| mlx-lm | {report['mlx']} |",
    ]
    lines.extend(f"\nFailure: {failure}" for failure in report["failures"])
    return "\n".join(lines)


def _quantized_note(kind, mode):
    """The model card's line for a run trained on a quantized base."""
    if kind == "adapter":
        return (f"- base weights: {mode}-quantized while training (QLoRA-style, Keras weight-only). This adapter was "
                "trained on, and verified against, that quantized base; on the float base above it computes a "
                "slightly different model (the base's quantization error).")
    return (f"- base weights: {mode}-quantized while training (QLoRA-style, Keras weight-only). These weights are "
            "that dequantized base plus LoRA, merged in float32: the model that was trained, not the float base.")


def model_card(folder, base_model, lora=None, run_config=None, training=None, repo_id=None):
    """The README.md text for an exported folder.

    Args:
        folder: str. The exported folder (its `verification.json` is read).
        base_model: str. The model fine-tuned (a preset or an HF id).
        lora: dict or None. LoRA settings: rank, alpha, targets.
        run_config: dict or None. The training run's config.json.
        training: dict or None. `kerasgemma.training.metrics.training_summary`.
        repo_id: str or None. Used in the usage snippet (else the folder).

    Example:
    >>> import tempfile
    >>> card = model_card(tempfile.mkdtemp(), "google/gemma-2b", lora={"rank": 4})
    >>> card.splitlines()[1:3], "Not verified" in card
    (['license: gemma', 'base_model: google/gemma-2b'], True)
    """
    kind = "adapter" if os.path.isfile(os.path.join(folder, ADAPTER_CONFIG)) else "merged"
    run_config = run_config or {}
    dataset, data = dataset_id(run_config)
    front = ["---", f"license: {GEMMA_LICENSE}"]
    if _is_repo_id(base_model):  # the Hub's metadata field takes repo ids, not local paths
        front.append(f"base_model: {base_model}")
    if dataset:
        front.append(f"datasets: [{dataset}]")
    front += ["library_name: " + ("peft" if kind == "adapter" else "transformers"),
             "pipeline_tag: text-generation", "tags: [gemma, lora, keras, kerasgemma]", "---"]
    training_lines = [f"- {key}: {run_config[key]}" for key in (
        "epochs", "max_steps", "sequence_length", "batch_size", "learning_rate", "schedule", "dtype", "seed",
    ) if run_config.get(key) is not None]
    if training:
        training_lines.append(f"- steps run: {training['steps']}, tokens: {training['tokens']}")
        for key in ("train_loss", "val_loss"):
            if key in training:
                training_lines.append(
                    f"- {key.replace('_', ' ')}: {training[key]['first']:.4f} → {training[key]['last']:.4f}"
                )
    lora_text = (
        f"rank {lora['rank']}, alpha {lora.get('alpha', lora['rank'])}, on {', '.join(lora.get('targets', []))}"
        if lora else "none recorded"
    )
    what = ("A PEFT LoRA adapter" if kind == "adapter" else "Gemma with LoRA merged into the weights")
    quantized = run_config.get("quantize")
    if quantized:
        training_lines.append(_quantized_note(kind, quantized))
    sections = [
        "\n".join(front),
        f"# {repo_id or os.path.basename(os.path.abspath(folder))}",
        f"{what}, fine-tuned from `{base_model}` with Keras 3 / keras-hub on JAX and exported by "
        "kerasgemma (`kerasgemma export`).",
        "## Training\n" + "\n".join([
            f"- data: {data}",
            f"- LoRA: {lora_text}",
            *training_lines,
        ]),
        "## Verification\n" + _verification_section(read_report(folder)),
        "## Usage\n" + _usage(kind, repo_id or os.path.abspath(folder), base_model),
        "## Serve it\n" + _serving(kind, repo_id or os.path.abspath(folder), base_model),
        "## License\nGemma is provided under the [Gemma Terms of Use](https://ai.google.dev/gemma/terms); "
        "this derivative is subject to the same terms.",
    ]
    return "\n\n".join(sections) + "\n"


def write_model_card(folder, base_model, **kwargs):
    """Write `model_card(folder, base_model, **kwargs)` as `folder/README.md`; returns its path."""
    path = os.path.join(folder, MODEL_CARD)
    write_text_atomic(path, model_card(folder, base_model, **kwargs))
    return path


def check_verified(folder):
    """Raise `VerificationError` unless `folder/verification.json` says it passed.

    Example:
    >>> import tempfile
    >>> check_verified(tempfile.mkdtemp())
    Traceback (most recent call last):
    ...
    kerasgemma.hub.VerificationError: ... was not verified ...
    """
    report = read_report(folder)
    if report is None:
        raise VerificationError(
            f"{folder} was not verified (no verification.json); verify it or pass force=True (--force-push)."
        )
    if not report["passed"]:
        raise VerificationError(
            f"{folder} failed verification ({'; '.join(report['failures'])}); not pushing without "
            "force=True (--force-push)."
        )


def check_token(endpoint=None, log=print):
    """Refuse a push up front: no token at all, or one the Hub rejects (HTTP 401).

    Called before an export loads anything, so a missing login costs a
    second, not an export. When the Hub cannot be reached the token is
    checked again by the push itself; a warning says so. The token is never
    printed.
    """
    from huggingface_hub import HfApi
    from huggingface_hub import get_token
    from huggingface_hub.errors import HfHubHTTPError

    token = get_token()
    if token is None:
        raise UserError("no Hugging Face token for --push: run `hf auth login` or set HF_TOKEN.")
    try:
        HfApi(endpoint=endpoint).whoami(token=token)
    except HfHubHTTPError as error:
        status = getattr(error.response, "status_code", None)
        if status == 401:
            raise UserError("the Hub rejected the Hugging Face token (401) for --push: run "
                            "`hf auth login --force` or set HF_TOKEN to a valid token.") from None
        log(f"warning: could not check the Hugging Face token (HTTP {status}); the push will try anyway")
    except Exception as error:  # noqa: BLE001 - network errors of whichever HTTP client huggingface_hub uses
        log(f"warning: the Hub is not reachable to check the token ({type(error).__name__}); "
            "the push will try anyway")


def push_to_hub(folder, repo_id, private=True, force=False, endpoint=None, commit_message=None):
    """Create `repo_id` (private by default) and upload `folder` to it.

    Args:
        folder: str. An exported folder with its model card.
        repo_id: str. "user/name" or "org/name".
        private: bool. Create the repo private (ignored if it exists).
        force: bool. Push even if verification failed or was skipped.
        endpoint: str or None. Hub URL; None for huggingface_hub's default.
        commit_message: str or None.

    Returns:
        str, the repo URL.
    """
    from huggingface_hub import HfApi

    if not force:
        check_verified(folder)
    api = HfApi(endpoint=endpoint)
    url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    report = read_report(folder)
    summary = "unverified" if report is None else ("verified" if report["passed"] else "FAILED verification")
    api.upload_folder(
        folder_path=folder,
        repo_id=repo_id,
        repo_type="model",
        commit_message=commit_message or f"Upload kerasgemma export ({summary})",
        ignore_patterns=[EXPORT_MARKER],  # ours, for replacing the folder safely; not the model's
    )
    return str(url)
