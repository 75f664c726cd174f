"""Check an exported folder against the Keras model it came from.

What is compared, per prompt: the token ids (Keras tokenizer vs the folder's
transformers tokenizer), the logits over prompt + greedy continuation (max
|Δ| must stay under `atol`), and the greedy tokens themselves (identical).
Everything runs in float32: in bfloat16 a correct conversion's greedy text
drifts apart after 30-50 tokens (docs/facts.md#precision), which would look like a
bug that is not there. A Keras model held in bfloat16 is compared through a
float32 copy of its weights (`float32_reference`, 2x its memory).

How a bfloat16 folder stays under a tight tolerance: its tensors are first
checked bit for bit against the Keras weights mapped to HF layout and rounded
to the folder's dtype; the folder is then loaded by transformers (its config,
its model class) in float32 and its parameters are replaced by the same
mapped weights unrounded, so the logit comparison measures the conversion,
not bfloat16 rounding. The rounded folder's own max |Δ| is reported too
(`rounded_max_abs_logits_diff`), for information only.

A multimodal folder (`*ForConditionalGeneration`) is loaded in that class
and checked the same way on text-only prompts; its towers are checked too:
the Keras vision tower's output on a random image (and the audio tower's on
random mel features) against transformers' `get_image_features` /
`get_audio_features` (tower + embedder), max |Δ| under `atol`
(`tower_max_abs_diff`). Their tensors are in the bit-exact check.

The optional PEFT check does the same for a base folder plus an adapter, and
the optional mlx-lm check compares mlx-lm's greedy tokens with transformers'
greedy choice on the folder's (rounded) weights: one teacher-forced forward
pass per prompt along mlx-lm's tokens (`_teacher_forced_greedy`), not a
second generate loop.
"""

import dataclasses
import json
import os

import jax
import numpy as np

from kerasgemma.atomic import read_json
from kerasgemma.atomic import write_text_atomic
from kerasgemma.distribution.host import on_host
from kerasgemma.errors import UserError
from kerasgemma.export.mlx_check import mlx_greedy
from kerasgemma.export.safetensors_io import cast
from kerasgemma.export.safetensors_io import read_weight_map
from kerasgemma.export.tokenizer_files import special_token_ids
from kerasgemma.export.tokenizer_files import stop_token_ids
from kerasgemma.export.tokenizer_files import turn_markers
from kerasgemma.export.towers import random_tower_inputs
from kerasgemma.export.towers import tower_outputs_keras
from kerasgemma.export.towers import tower_outputs_torch
from kerasgemma.export.towers import towers
from kerasgemma.export.weights import hf_tensors
from kerasgemma.export.weights import text_prefix
from kerasgemma.forward import empty_media_inputs
from kerasgemma.files import ADAPTER_CONFIG
from kerasgemma.files import HF_CONFIG
from kerasgemma.files import VERIFICATION_REPORT

DEFAULT_PROMPTS = (
    "中国的首都是哪里？",
    "<start_of_turn>user\nWrite a haiku about the sea.<end_of_turn>\n"
    "<start_of_turn>model\n",
    "The quick brown fox",
)
DEFAULT_ATOL = 1e-3


def default_prompts(tokenizer):
    r"""`DEFAULT_PROMPTS` with the turn markers of the tokenizer's generation.

    Example:
    >>> from kerasgemma.tiny import build_tiny_causal_lm
    >>> default_prompts(build_tiny_causal_lm("gemma4").preprocessor.tokenizer)[1][:12]
    '<|turn>user\n'
    """
    start, end = turn_markers(tokenizer)
    return tuple(
        p.replace("<start_of_turn>", start).replace("<end_of_turn>", end)
        for p in DEFAULT_PROMPTS
    )


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
    # Multimodal folders: max |Δ| of each tower's output ({"vision": ..., "audio": ...}).
    tower_max_abs_diff: dict = dataclasses.field(default_factory=dict)
    architecture: str = ""
    # A run trained on a quantized base (`kerasgemma.export.quantized`): its
    # mode, and the quantized model's max |Δlogits| to the dequantized copy checked here.
    quantized_base: str | None = None
    trained_model_max_abs_logits_diff: float | None = None

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
        for tower, diff in self.tower_max_abs_diff.items():
            lines.append(f"  {tower} tower: max |Δ| {diff:.3g} (float32, random input)")
        if self.quantized_base:
            lines.append(f"  trained on a {self.quantized_base} base: quantized model vs its dequantized copy "
                         f"max |Δlogits| {self.trained_model_max_abs_logits_diff:.3g}")
        lines.append(f"  mlx-lm: {self.mlx}")
        lines.extend(f"  FAILURE: {failure}" for failure in self.failures)
        return "\n".join(lines)

    def to_json(self):
        return json.dumps(dataclasses.asdict(self), indent=2, ensure_ascii=False)


def float32_reference(causal_lm, log=print):
    """`causal_lm` with the same weights (and LoRA) held in float32, on the host CPU.

    A bfloat16 Keras model computes in bfloat16, so its own logits sit
    ~1e-2 from any float32 run of the same weights (measured 0.015 on a
    tiny Gemma 3): too far for a 1e-3 check. The copy costs a float32 model
    of host memory (2x a bfloat16 model) for the duration of the check. It
    is built under `kerasgemma.distribution.on_host`, with every weight
    committed to the CPU device, so training's distribution never
    replicates it on the accelerators and `keras_forward` runs it on the CPU.

    Example:
    >>> from kerasgemma.tiny import build_tiny_causal_lm
    >>> lm = build_tiny_causal_lm("gemma", dtype="bfloat16")
    >>> lm.backbone.enable_lora(2)
    >>> {v.dtype for v in float32_reference(lm).backbone.weights}
    {'float32'}
    """
    backbone = causal_lm.backbone
    with on_host(log=log) as device:
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
            # Committed to the host: a jitted call on these runs there too.
            target.assign(jax.device_put(np.asarray(source.numpy(), dtype=np.float32), device))
        return type(causal_lm)(backbone=copy, preprocessor=causal_lm.preprocessor)


def keras_forward(causal_lm, length):
    """A function `ids -> float32 logits (len(ids), vocab)` for `causal_lm`.

    Inputs are right-padded to one fixed `length` and the call is jitted
    once with the variables as arguments: eager JAX calls recompile for
    every new sequence length (12 greedy steps of a tiny model took 65 s).
    Causal attention makes the padding invisible to the real positions.
    """

    trainable = [v.value for v in causal_lm.trainable_variables]
    non_trainable = [v.value for v in causal_lm.non_trainable_variables]
    # Gemma 4 backbones take explicit positions (0..n-1, what transformers
    # uses for one unpadded sequence); Gemma 1-3 derive them.
    backbone_inputs = causal_lm.backbone.input
    needs_positions = isinstance(backbone_inputs, dict) and "position_ids" in backbone_inputs
    # Multimodal backbones also get zero images / audio clips (text-only prompts).
    media = empty_media_inputs(causal_lm.backbone, 1, length)

    @jax.jit
    def call(trainable, non_trainable, token_ids, padding_mask):
        inputs = {"token_ids": token_ids, "padding_mask": padding_mask, **media}
        if needs_positions:
            positions = jax.numpy.arange(token_ids.shape[1], dtype="int32")
            inputs["position_ids"] = jax.numpy.broadcast_to(positions, token_ids.shape)
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


def media_placeholder_ids(config):
    """Token ids a ConditionalGeneration folder reads as "a tower output goes here".

    transformers embeds such an id as the pad token when no image/audio is
    given (Gemma4Model.forward, `torch.where(multimodal_mask, pad_token_id,
    ...)`); Keras embeds it as text. A random tiny model generates one now
    and then (measured: `<|video|>`, then max |Δlogits| 0.82), so text-only
    greedy decoding suppresses them on both sides.

    Example:
    >>> media_placeholder_ids({"model_type": "gemma4", "image_token_id": 17, "audio_token_id": 20,
    ...                        "video_token_id": 258884, "text_config": {"vocab_size": 600}})
    [17, 20]
    >>> media_placeholder_ids({"model_type": "gemma3_text", "vocab_size": 600})
    []
    """
    if "text_config" not in config:
        return []
    keys = ("image_token_id", "audio_token_id", "video_token_id", "image_token_index")
    vocabulary = config["text_config"]["vocab_size"]
    return sorted({config[k] for k in keys if isinstance(config.get(k), int) and 0 <= config[k] < vocabulary})


def _keras_greedy(forward, ids, max_new_tokens, stop_ids, banned=()):
    # A plain loop over full forward passes: no cache, no preprocessor, so the
    # reference depends on nothing but the weights and the token ids.
    ids = list(ids)
    new = []
    for _ in range(max_new_tokens):
        logits = forward(ids)[-1].copy()
        logits[list(banned)] = -np.inf
        token = int(np.argmax(logits))
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


def _torch_greedy(model, ids, max_new_tokens, stop_ids, banned=()):
    import torch

    with torch.no_grad():
        out = model.generate(
            input_ids=torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=sorted(stop_ids),
            pad_token_id=0,
            suppress_tokens=list(banned) or None,
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
    """The folder's model as transformers loads it, upcast to float32.

    The class is the one `config.json` names in `architectures`; a folder
    without it (keras-hub's own exporter writes none) loads as a causal LM.
    """
    import torch
    import transformers

    class_name = (read_json(os.path.join(folder, HF_CONFIG)).get("architectures") or ["AutoModelForCausalLM"])[0]
    model_class = getattr(transformers, class_name, None)
    if model_class is None:
        raise UserError(f"transformers {transformers.__version__} has no {class_name} (named in {folder}).")
    model = model_class.from_pretrained(
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
        state["lm_head.weight"] = state[text_prefix(backbone) + "embed_tokens.weight"]
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
    if "text_config" in config:  # a ConditionalGeneration folder: mlx-lm runs its text model
        config = {**config, **config["text_config"]}
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


def _float32_model(causal_lm):
    """`(float32 causal LM, what it is)`: the model itself if it is float32, else a float32 copy."""
    weight_dtypes = {str(v.dtype) for v in causal_lm.weights}
    if weight_dtypes == {"float32"}:
        return causal_lm, "Keras model (float32)"
    described = f"float32 copy of the Keras model ({', '.join(sorted(weight_dtypes))} weights)"
    return float32_reference(causal_lm), described


def _check_weight_files(folder, backbone, merge_lora, failures):
    """The folder's dtype and whether its tensors are bit-exact; a failure is appended if not."""
    dtype = read_json(os.path.join(folder, HF_CONFIG)).get("dtype", "float32")
    bit_exact = _compare_files(folder, backbone, merge_lora, dtype)
    if not bit_exact:
        failures.append(f"weights in {folder} differ from the Keras weights rounded to {dtype}")
    return dtype, bit_exact


def _prompt_ids(keras_tokenizer, prompts):
    """`(prompts, their ids with the bos id, stop ids)`; None prompts are `default_prompts`."""
    prompts = prompts or default_prompts(keras_tokenizer)
    bos = special_token_ids(keras_tokenizer)["<bos>"]
    prompt_ids = [[bos] + [int(t) for t in keras_tokenizer(p)] for p in prompts]
    return prompts, prompt_ids, set(stop_token_ids(keras_tokenizer))


def _teacher_forced_greedy(model, ids, continuation, banned=()):
    """transformers' argmax at each position of `continuation`, given `ids` and the tokens before it.

    It equals `continuation` exactly when greedy decoding from `ids` would
    generate `continuation`: one forward pass tells what a generate loop would.
    """
    if not continuation:
        return []
    logits = _torch_logits(model, list(ids) + list(continuation[:-1]))[len(ids) - 1 :]
    logits[:, list(banned)] = -np.inf
    return [int(t) for t in logits.argmax(-1)]


def _compare_prompts(causal_lm, model, tokenizer_dir, prompts, max_new_tokens, atol, failures, unround,
                     mlx_tokens=None):
    """Compare ids, logits and greedy tokens of `model` (transformers) with `causal_lm` on each prompt.

    `unround()` replaces the folder's rounded weights by the unrounded ones
    after the rounded model's own figures are taken: its max |Δ| to Keras,
    and, given `mlx_tokens` (mlx-lm's greedy tokens on the folder, per
    prompt), whether they are the rounded model's greedy tokens too.
    Returns `(checks, rounded max |Δ|, prompt ids, mlx agrees or None)`.
    """
    import transformers

    keras_tokenizer = causal_lm.preprocessor.tokenizer
    prompts, prompt_ids, stop_ids = _prompt_ids(keras_tokenizer, prompts)
    banned = media_placeholder_ids(read_json(os.path.join(tokenizer_dir, HF_CONFIG)))
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    forward = keras_forward(causal_lm, max(map(len, prompt_ids)) + max_new_tokens)
    keras_greedy = [_keras_greedy(forward, p, max_new_tokens, stop_ids, banned) for p in prompt_ids]
    rounded = max(
        float(np.max(np.abs(_torch_logits(model, p + g) - forward(p + g))))
        for p, g in zip(prompt_ids, keras_greedy)
    )
    mlx_agrees = None if mlx_tokens is None else all(
        _teacher_forced_greedy(model, p, m, banned) == m for p, m in zip(prompt_ids, mlx_tokens)
    )
    unround()
    checks = []
    for prompt, p_ids, k_greedy in zip(prompts, prompt_ids, keras_greedy):
        full = p_ids + k_greedy
        hf_greedy = _torch_greedy(model, p_ids, max_new_tokens, stop_ids, banned)
        check = PromptCheck(
            prompt=prompt,
            tokens_match=hf_tokenizer(prompt)["input_ids"] == p_ids,
            max_abs_logits_diff=float(np.max(np.abs(_torch_logits(model, full) - forward(full)))),
            keras_greedy=k_greedy,
            hf_greedy=hf_greedy,
            greedy_match=hf_greedy == k_greedy,
        )
        checks.append(check)
        if not check.tokens_match:
            failures.append(f"tokenizer ids differ on {prompt[:30]!r}")
        if check.max_abs_logits_diff > atol:
            failures.append(f"max |Δlogits| {check.max_abs_logits_diff:.3g} > {atol:g} on {prompt[:30]!r}")
        if not check.greedy_match:
            failures.append(f"greedy tokens differ on {prompt[:30]!r}")
    return checks, rounded, prompt_ids, mlx_agrees


def _mlx_tokens(folder, prompt_ids, stop_ids, max_new_tokens, failures):
    """`(mlx-lm's greedy tokens per prompt, None)`, or `(None, status line)` when skipped or failed."""
    config = read_json(os.path.join(folder, HF_CONFIG))
    limitation = mlx_limitation(config, max(map(len, prompt_ids)) + max_new_tokens)
    if limitation:
        return None, f"skipped: {limitation}"
    try:
        tokens = mlx_greedy(folder, prompt_ids, max_new_tokens, stop_ids, media_placeholder_ids(config))
    except Exception as error:  # noqa: BLE001 - any mlx-lm error is a failed check, reported
        status = f"mlx-lm FAILED: {type(error).__name__}: {error}"
        failures.append(status)
        return None, status
    if tokens is None:
        return None, "mlx-lm not importable, skipped"
    return tokens, None


def _check_towers(backbone, model, atol, failures):
    """`{tower: max |Δ|}` of the Keras towers vs transformers' on random inputs (float32 weights)."""
    if not towers(backbone):
        return {}
    inputs = random_tower_inputs(backbone)
    keras_out = tower_outputs_keras(backbone, inputs)
    torch_out = tower_outputs_torch(model, inputs)
    diffs = {}
    for tower, expected in keras_out.items():
        got = torch_out.get(tower)
        if got is None or got.shape != expected.shape:
            failures.append(f"{tower} tower output shape {None if got is None else got.shape} != {expected.shape}")
            diffs[tower] = float("inf")
            continue
        diffs[tower] = float(np.max(np.abs(got - expected)))
        if diffs[tower] > atol:
            failures.append(f"{tower} tower max |Δ| {diffs[tower]:.3g} > {atol:g}")
    return diffs


def _finish(folder, write_report, checks, weights, rounded, failures, **fields):
    """The `VerificationReport` of a finished check, written into `folder` if asked."""
    dtype, bit_exact = weights
    report = VerificationReport(
        passed=not failures, folder=os.path.abspath(folder),
        max_abs_logits_diff=max(check.max_abs_logits_diff for check in checks),
        weights_dtype=dtype, weights_bit_exact=bit_exact, rounded_max_abs_logits_diff=rounded,
        prompts=checks, failures=failures, **fields,
    )
    if write_report:
        write_text_atomic(os.path.join(folder, VERIFICATION_REPORT), report.to_json() + "\n")
    return report


def verify_merged(
    causal_lm,
    folder,
    prompts=None,
    max_new_tokens=16,
    atol=DEFAULT_ATOL,
    check_mlx=True,
    write_report=True,
):
    """Compare a merged Hugging Face folder with the Keras model it was exported from.

    Args:
        causal_lm: the Keras causal LM that was exported.
        folder: str. The merged folder.
        prompts: sequence of str or None. Fixed prompts (a bos id is
            prepended); None for `default_prompts(tokenizer)`.
        max_new_tokens: int. Greedy tokens generated and compared.
        atol: float. Largest allowed max |Δlogits| in float32.
        check_mlx: bool. Also compare mlx-lm's greedy tokens, when importable.
        write_report: bool. Write `verification.json` into the folder.

    Returns:
        `VerificationReport`.

    Example:
    >>> import tempfile
    >>> from kerasgemma.tiny import build_tiny_causal_lm
    >>> from kerasgemma.export import export_merged
    >>> lm = build_tiny_causal_lm("gemma")
    >>> folder = export_merged(lm, tempfile.mkdtemp() + "/hf")
    >>> report = verify_merged(lm, folder, max_new_tokens=2, check_mlx=False)
    >>> report.passed, report.weights_dtype, report.weights_bit_exact
    (True, 'bfloat16', True)
    """
    failures = []
    dtype, bit_exact = _check_weight_files(folder, causal_lm.backbone, True, failures)
    mlx_tokens, mlx = None, "not checked"
    if check_mlx:
        # Before transformers loads the folder: never two float32 copies at once.
        _, prompt_ids, stop_ids = _prompt_ids(causal_lm.preprocessor.tokenizer, prompts)
        mlx_tokens, mlx = _mlx_tokens(folder, prompt_ids, stop_ids, max_new_tokens, failures)
    reference_lm, reference = _float32_model(causal_lm)
    model = _load_float32(folder)

    def unround():
        if dtype != "float32":
            _set_unrounded(model, reference_lm.backbone, True)

    checks, rounded, _, mlx_agrees = _compare_prompts(
        reference_lm, model, folder, prompts, max_new_tokens, atol, failures, unround, mlx_tokens
    )
    if mlx_tokens is not None:
        for check, tokens in zip(checks, mlx_tokens):
            check.mlx_greedy = tokens
        mlx = "greedy identical to transformers' (folder weights, float32)"
        if not mlx_agrees:
            mlx = "greedy DIFFERS from transformers'"
            failures.append("mlx-lm greedy tokens differ from transformers'")
    tower_diffs = _check_towers(reference_lm.backbone, model, atol, failures)
    architecture = type(model).__name__
    return _finish(
        folder, write_report, kind="merged", atol=atol, max_new_tokens=max_new_tokens, checks=checks,
        weights=(dtype, bit_exact), rounded=rounded, mlx=mlx, failures=failures, reference=reference,
        tower_max_abs_diff=tower_diffs, architecture=architecture,
    )


def verify_adapter(
    causal_lm,
    adapter_dir,
    base_dir,
    prompts=None,
    max_new_tokens=16,
    atol=DEFAULT_ATOL,
    write_report=True,
):
    """Compare a PEFT adapter on its base folder with the Keras model (LoRA enabled).

    Args:
        causal_lm: the Keras causal LM whose LoRA weights were exported.
        adapter_dir: str. The PEFT adapter folder.
        base_dir: str. The base folder (exported with `merge_lora=False`).
        prompts, max_new_tokens, atol: as for `verify_merged`.
        write_report: bool. Write `verification.json` into the adapter folder.

    Returns:
        `VerificationReport`.
    """
    import peft

    failures = []
    dtype, bit_exact = _check_weight_files(base_dir, causal_lm.backbone, False, failures)
    reference_lm, reference = _float32_model(causal_lm)
    model = peft.PeftModel.from_pretrained(_load_float32(base_dir), adapter_dir)
    model.eval()

    def unround():
        if dtype != "float32":
            _set_unrounded(model, reference_lm.backbone, False)

    checks, rounded, _, _ = _compare_prompts(
        reference_lm, model, base_dir, prompts, max_new_tokens, atol, failures, unround
    )
    # The adapter must leave the towers as they are.
    tower_diffs = _check_towers(reference_lm.backbone, model.get_base_model(), atol, failures)
    return _finish(
        adapter_dir, write_report, kind="peft adapter", atol=atol, max_new_tokens=max_new_tokens, checks=checks,
        weights=(dtype, bit_exact), rounded=rounded, mlx="not checked (adapter)", failures=failures,
        reference=reference, tower_max_abs_diff=tower_diffs, architecture=type(model.get_base_model()).__name__,
    )


def verify_export(causal_lm, folder, base_dir=None, **options):
    """`verify_adapter` for an adapter folder (needs `base_dir`), else `verify_merged`.

    Example:
    >>> import pathlib, tempfile
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "adapter_config.json").write_text("{}")
    >>> verify_export(None, str(folder))
    Traceback (most recent call last):
    ...
    kerasgemma.errors.UserError: ... is a PEFT adapter: verifying it needs base_dir, the base folder.
    """
    if os.path.isfile(os.path.join(folder, ADAPTER_CONFIG)):
        if base_dir is None:
            raise UserError(f"{folder} is a PEFT adapter: verifying it needs base_dir, the base folder.")
        return verify_adapter(causal_lm, folder, base_dir, **options)
    return verify_merged(causal_lm, folder, **options)


def read_report(folder):
    """The `verification.json` of `folder` as a dict, or None if absent.

    Example:
    >>> import tempfile
    >>> read_report(tempfile.mkdtemp()) is None
    True
    """
    path = os.path.join(folder, VERIFICATION_REPORT)
    return read_json(path) if os.path.exists(path) else None
