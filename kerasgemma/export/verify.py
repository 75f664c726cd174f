"""Check an exported folder against the Keras model it came from.

What is compared, per prompt: the token ids (Keras tokenizer vs the folder's
transformers tokenizer), the logits over prompt + greedy continuation (max
|Δ| must stay under `atol`), and the greedy tokens themselves (identical).
Everything runs in float32: in bfloat16 a correct conversion's greedy text
drifts apart after 30-50 tokens (shared DESIGN.md), which would look like a
bug that is not there. A Keras model held in bfloat16 is compared through a
float32 copy of its weights (`float32_reference`, 2x its memory).

How a bfloat16 folder stays under a tight tolerance: its tensors are first
checked bit for bit against the Keras weights mapped to HF layout and rounded
to the folder's dtype; the folder is then loaded by transformers (its config,
its model class) in float32 and its parameters are replaced by the same
mapped weights unrounded, so the logit comparison measures the conversion,
not bfloat16 rounding. The rounded folder's own max |Δ| is reported too
(`rounded_max_abs_logits_diff`), for information only.

The optional PEFT check does the same for a base folder plus an adapter, and
the optional mlx-lm check compares mlx-lm's greedy tokens with transformers'.
"""

import dataclasses
import json
import os

import numpy as np

from kerasgemma.atomic import write_text_atomic
from kerasgemma.export.safetensors_io import cast, read_weight_map
from kerasgemma.export.tokenizer_files import special_token_ids
from kerasgemma.export.weights import hf_tensors

REPORT_FILE = "verification.json"
DEFAULT_PROMPTS = (
    "中国的首都是哪里？",
    "<start_of_turn>user\nWrite a haiku about the sea.<end_of_turn>\n"
    "<start_of_turn>model\n",
    "The quick brown fox",
)
DEFAULT_ATOL = 1e-3


@dataclasses.dataclass
class PromptCheck:
    """Result of one prompt: ids, logits and greedy tokens compared."""

    prompt: str
    tokens_match: bool
    max_abs_logits_diff: float
    keras_greedy: list
    hf_greedy: list
    greedy_match: bool
    mlx_greedy: list | None = None


@dataclasses.dataclass
class VerificationReport:
    """Outcome of `verify_export`; `passed` is what the Hub push checks."""

    passed: bool
    folder: str
    kind: str
    atol: float
    max_new_tokens: int
    max_abs_logits_diff: float
    weights_dtype: str
    weights_bit_exact: bool
    rounded_max_abs_logits_diff: float
    prompts: list
    mlx: str
    failures: list
    reference: str = "Keras model (float32)"

    def summary(self):
        """A few lines for a terminal."""
        lines = [
            f"verification {'PASSED' if self.passed else 'FAILED'} ({self.kind}): "
            f"{self.folder}",
            f"  reference: {self.reference}",
            f"  max |Δlogits| {self.max_abs_logits_diff:.3g} (tolerance {self.atol:g}, "
            f"float32); weights {self.weights_dtype}, bit-exact vs Keras: "
            f"{self.weights_bit_exact}; max |Δlogits| as rounded "
            f"{self.rounded_max_abs_logits_diff:.3g} (information)",
        ]
        for check in self.prompts:
            lines.append(
                f"  {check.prompt[:40]!r}: ids {'=' if check.tokens_match else '≠'}, "
                f"|Δ| {check.max_abs_logits_diff:.3g}, greedy {len(check.hf_greedy)} "
                f"tokens {'identical' if check.greedy_match else 'DIFFER'}"
            )
        lines.append(f"  mlx-lm: {self.mlx}")
        lines.extend(f"  FAILURE: {failure}" for failure in self.failures)
        return "\n".join(lines)

    def to_json(self):
        return json.dumps(dataclasses.asdict(self), indent=2, ensure_ascii=False)


def float32_reference(causal_lm):
    """`causal_lm` with the same weights (and LoRA) held in float32.

    A bfloat16 Keras model computes in bfloat16, so its own logits sit
    ~1e-2 from any float32 run of the same weights (measured 0.015 on a
    tiny Gemma 3): too far for a 1e-3 check. The copy costs a float32 model
    of host memory (2x a bfloat16 model) for the duration of the check.

    Example:
    >>> from kerasgemma.tiny import build_tiny_causal_lm
    >>> lm = build_tiny_causal_lm("gemma", dtype="bfloat16")
    >>> lm.backbone.enable_lora(2)
    >>> {v.dtype for v in float32_reference(lm).backbone.weights}
    {'float32'}
    """
    backbone = causal_lm.backbone
    copy = type(backbone).from_config(dict(backbone.get_config(), dtype="float32"))
    for source, target in zip(
        backbone._flatten_layers(include_self=False), copy._flatten_layers(include_self=False)
    ):
        if getattr(source, "lora_enabled", False):
            target.enable_lora(source.lora_rank, lora_alpha=source.lora_alpha)
    if len(copy.weights) != len(backbone.weights):
        raise RuntimeError("The float32 copy does not have the model's variables.")
    for source, target in zip(backbone.weights, copy.weights):
        if tuple(source.shape) != tuple(target.shape):
            raise RuntimeError(f"Variable {source.path} does not match its float32 copy.")
        target.assign(np.asarray(source.numpy(), dtype=np.float32))
    return type(causal_lm)(backbone=copy, preprocessor=causal_lm.preprocessor)


def keras_forward(causal_lm, length):
    """A function `ids -> float32 logits (len(ids), vocab)` for `causal_lm`.

    Inputs are right-padded to one fixed `length` and the call is jitted
    once with the variables as arguments: eager JAX calls recompile for
    every new sequence length (12 greedy steps of a tiny model took 65 s).
    Causal attention makes the padding invisible to the real positions.
    """
    import jax

    trainable = [v.value for v in causal_lm.trainable_variables]
    non_trainable = [v.value for v in causal_lm.non_trainable_variables]

    @jax.jit
    def call(trainable, non_trainable, token_ids, padding_mask):
        inputs = {"token_ids": token_ids, "padding_mask": padding_mask}
        logits, _ = causal_lm.stateless_call(trainable, non_trainable, inputs)
        return logits.astype("float32")

    def forward(ids):
        if len(ids) > length:
            raise ValueError(f"{len(ids)} tokens exceed the forward length {length}.")
        token_ids = np.zeros((1, length), dtype="int32")
        token_ids[0, : len(ids)] = ids
        padding_mask = token_ids != 0
        padding_mask[0, : len(ids)] = True
        logits = call(trainable, non_trainable, token_ids, padding_mask)
        return np.asarray(logits)[0, : len(ids)]

    return forward


def _keras_greedy(forward, ids, max_new_tokens, stop_ids):
    # A plain loop over full forward passes: no cache, no preprocessor, so the
    # reference depends on nothing but the weights and the token ids.
    ids = list(ids)
    new = []
    for _ in range(max_new_tokens):
        token = int(np.argmax(forward(ids)[-1]))
        new.append(token)
        ids.append(token)
        if token in stop_ids:
            break
    return new


def _torch_logits(model, ids):
    import torch

    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]))
    return out.logits[0].float().numpy()


def _torch_greedy(model, ids, max_new_tokens, stop_ids):
    import torch

    with torch.no_grad():
        out = model.generate(
            input_ids=torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=sorted(stop_ids),
            pad_token_id=0,
        )
    return [int(t) for t in out[0, len(ids):]]


def _compare_files(folder, backbone, merge_lora, dtype):
    """True if every tensor in `folder` equals the Keras one rounded to dtype."""
    import torch
    from safetensors import safe_open

    weight_map = read_weight_map(folder)
    expected_names = set()
    handles = {}
    try:
        for name, array in hf_tensors(backbone, merge_lora=merge_lora):
            expected_names.add(name)
            file = weight_map.get(name)
            if file is None:
                return False
            if file not in handles:
                handles[file] = safe_open(os.path.join(folder, file), framework="pt")
            stored = handles[file].get_tensor(name)
            expected = cast(array, dtype)
            # Compare raw bits (bfloat16 has no numpy dtype in torch.numpy()).
            stored_bits = stored.view(torch.int16 if stored.element_size() == 2 else torch.int32)
            expected_bits = expected.view(np.int16 if expected.itemsize == 2 else np.int32)
            if tuple(stored.shape) != expected.shape or not np.array_equal(
                stored_bits.numpy(), expected_bits
            ):
                return False
    finally:
        handles.clear()
    return expected_names == set(weight_map)


def _load_float32(folder):
    """The folder's model as transformers loads it, upcast to float32."""
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32, attn_implementation="eager"
    )
    model.eval()
    return model


def _set_unrounded(model, backbone, merge_lora):
    import torch

    state = {
        name: torch.from_numpy(np.asarray(array, dtype=np.float32).copy())
        for name, array in hf_tensors(backbone, merge_lora=merge_lora)
    }
    if model.config.tie_word_embeddings:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    target = model.get_base_model() if hasattr(model, "peft_config") else model
    # PEFT moves a wrapped projection's weight to `<module>.base_layer.weight`.
    names = set(target.state_dict())
    state = {
        name if name in names else name.replace(".weight", ".base_layer.weight"): value
        for name, value in state.items()
    }
    missing, unexpected = target.load_state_dict(state, strict=False)
    # LoRA modules keep their own weights; everything else must be covered.
    missing = [m for m in missing if "lora_" not in m]
    if missing or unexpected:
        raise RuntimeError(f"Weight names differ: missing {missing}, unexpected {unexpected}.")


def mlx_limitation(config, longest):
    """Why mlx-lm 0.32 cannot run this config correctly, or None.

    These are mlx-lm's limits, not the folder's: transformers runs the same
    folder. Anything else mlx-lm gets wrong is a verification failure.

    Args:
        config: dict. The folder's config.json, as mlx-lm reads it.
        longest: int. The longest sequence the check runs.

    Example:
    >>> mlx_limitation({"model_type": "gemma3_text", "num_hidden_layers": 2}, 40)
    "mlx-lm's gemma3_text needs at least 6 layers (sliding_window_pattern), this model has 2"
    >>> mlx_limitation({"model_type": "gemma", "num_hidden_layers": 2}, 40) is None
    True
    """
    model_type, layers = config["model_type"], config["num_hidden_layers"]
    if model_type == "gemma2" and longest > config["sliding_window"]:
        # Its Gemma 2 has no sliding window: past the window it must differ.
        return (
            f"mlx-lm's gemma2 ignores sliding_window "
            f"({config['sliding_window']} < {longest} tokens checked)"
        )
    if model_type == "gemma3_text":
        # It indexes the cache at `sliding_window_pattern - 1` (its default 6)
        # for the global mask: an IndexError with fewer layers.
        pattern = config.get("sliding_window_pattern") or 6
        if layers < pattern:
            return (
                f"mlx-lm's gemma3_text needs at least {pattern} layers "
                f"(sliding_window_pattern), this model has {layers}"
            )
    return None


def verify_export(
    causal_lm,
    hf_dir,
    prompts=DEFAULT_PROMPTS,
    max_new_tokens=16,
    atol=DEFAULT_ATOL,
    adapter_dir=None,
    base_dir=None,
    check_mlx=True,
    write_report=True,
):
    """Compare an exported folder (or base + adapter) with the Keras model.

    Args:
        causal_lm: the Keras causal LM that was exported (LoRA enabled).
        hf_dir: str. The merged folder, or the adapter folder when
            `adapter_dir` is given (then pass the same path or None).
        prompts: sequence of str. Fixed prompts (a bos id is prepended).
        max_new_tokens: int. Greedy tokens generated and compared.
        atol: float. Largest allowed max |Δlogits| in float32.
        adapter_dir: str or None. A PEFT adapter folder to check on top of
            `base_dir` (the base exported with `merge_lora=False`).
        base_dir: str or None. Base folder for the adapter check.
        check_mlx: bool. Also check mlx-lm's greedy tokens when importable
            (merged folders only).
        write_report: bool. Write `verification.json` into the checked folder.

    Returns:
        `VerificationReport`.

    Example:
    >>> import tempfile
    >>> from kerasgemma.tiny import build_tiny_causal_lm
    >>> from kerasgemma.export import export_merged
    >>> lm = build_tiny_causal_lm("gemma")
    >>> folder = export_merged(lm, tempfile.mkdtemp() + "/hf")
    >>> report = verify_export(lm, folder, max_new_tokens=4, check_mlx=False)
    >>> report.passed, report.weights_dtype, report.weights_bit_exact
    (True, 'bfloat16', True)
    """
    import transformers

    is_adapter = adapter_dir is not None
    if is_adapter and base_dir is None:
        raise ValueError("Checking an adapter needs base_dir (the exported base).")
    model_dir = base_dir if is_adapter else hf_dir
    report_dir = adapter_dir if is_adapter else hf_dir
    # The folder is checked bit for bit against the model as it is; the
    # logits against a float32 run of the same weights.
    exported_backbone = causal_lm.backbone
    reference = "Keras model (float32)"
    weight_dtypes = {str(v.dtype) for v in causal_lm.weights}
    if weight_dtypes != {"float32"}:
        causal_lm = float32_reference(causal_lm)
        reference = f"float32 copy of the Keras model ({', '.join(sorted(weight_dtypes))} weights)"
    backbone = causal_lm.backbone
    keras_tokenizer = causal_lm.preprocessor.tokenizer
    ids = special_token_ids(keras_tokenizer)
    stop_ids = {ids["<eos>"], ids["<end_of_turn>"]}
    failures = []

    with open(os.path.join(model_dir, "config.json")) as f:
        folder_config = json.load(f)
    dtype = folder_config.get("dtype", "float32")
    bit_exact = _compare_files(model_dir, exported_backbone, not is_adapter, dtype)
    if not bit_exact:
        failures.append(
            f"weights in {model_dir} differ from the Keras weights rounded to {dtype}"
        )

    model = _load_float32(model_dir)
    if is_adapter:
        import peft

        model = peft.PeftModel.from_pretrained(model, adapter_dir)
        model.eval()
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)

    prompt_ids = [[ids["<bos>"]] + [int(t) for t in keras_tokenizer(p)] for p in prompts]
    forward = keras_forward(causal_lm, max(map(len, prompt_ids)) + max_new_tokens)
    keras_greedy = [_keras_greedy(forward, p, max_new_tokens, stop_ids) for p in prompt_ids]
    rounded = max(
        float(np.max(np.abs(_torch_logits(model, p + g) - forward(p + g))))
        for p, g in zip(prompt_ids, keras_greedy)
    )
    # mlx-lm runs the folder's (rounded) weights: compare it with these.
    rounded_greedy = [_torch_greedy(model, p, max_new_tokens, stop_ids) for p in prompt_ids]
    if dtype != "float32":
        _set_unrounded(model, backbone, not is_adapter)

    checks = []
    for prompt, p_ids, k_greedy in zip(prompts, prompt_ids, keras_greedy):
        full = p_ids + k_greedy
        delta = float(np.max(np.abs(_torch_logits(model, full) - forward(full))))
        hf_greedy = _torch_greedy(model, p_ids, max_new_tokens, stop_ids)
        check = PromptCheck(
            prompt=prompt,
            tokens_match=hf_tokenizer(prompt)["input_ids"] == p_ids,
            max_abs_logits_diff=delta,
            keras_greedy=k_greedy,
            hf_greedy=hf_greedy,
            greedy_match=hf_greedy == k_greedy,
        )
        checks.append(check)
        if not check.tokens_match:
            failures.append(f"tokenizer ids differ on {prompt[:30]!r}")
        if delta > atol:
            failures.append(f"max |Δlogits| {delta:.3g} > {atol:g} on {prompt[:30]!r}")
        if not check.greedy_match:
            failures.append(f"greedy tokens differ on {prompt[:30]!r}")

    mlx_status = "not checked (adapter)" if is_adapter else "skipped"
    limitation = mlx_limitation(folder_config, max(len(p) for p in prompt_ids) + max_new_tokens)
    if limitation and check_mlx and not is_adapter:
        mlx_status = f"skipped: {limitation}"
    elif check_mlx and not is_adapter:
        from kerasgemma.export.mlx_check import mlx_greedy

        try:
            mlx_tokens = mlx_greedy(hf_dir, prompt_ids, max_new_tokens, stop_ids)
        except Exception as error:  # noqa: BLE001 - reported as a failure, not raised
            mlx_tokens = error
        if mlx_tokens is None:
            mlx_status = "mlx-lm not importable, skipped"
        elif isinstance(mlx_tokens, Exception):
            mlx_status = f"mlx-lm FAILED: {type(mlx_tokens).__name__}: {mlx_tokens}"
            failures.append(mlx_status)
        else:
            for check, tokens in zip(checks, mlx_tokens):
                check.mlx_greedy = tokens
            same = mlx_tokens == rounded_greedy
            mlx_status = (
                "greedy identical to transformers (folder weights, float32)"
                if same
                else "greedy DIFFERS from transformers"
            )
            if not same:
                failures.append("mlx-lm greedy tokens differ from transformers'")

    del model
    report = VerificationReport(
        passed=not failures,
        folder=os.path.abspath(report_dir),
        kind="peft adapter" if is_adapter else "merged",
        atol=atol,
        max_new_tokens=max_new_tokens,
        max_abs_logits_diff=max(c.max_abs_logits_diff for c in checks),
        weights_dtype=dtype,
        weights_bit_exact=bit_exact,
        rounded_max_abs_logits_diff=rounded,
        prompts=checks,
        mlx=mlx_status,
        failures=failures,
        reference=reference,
    )
    if write_report:
        write_text_atomic(os.path.join(report_dir, REPORT_FILE), report.to_json() + "\n")
    return report


def read_report(folder):
    """The `verification.json` of `folder` as a dict, or None if absent.

    Example:
    >>> import tempfile
    >>> read_report(tempfile.mkdtemp()) is None
    True
    """
    path = os.path.join(folder, REPORT_FILE)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)
