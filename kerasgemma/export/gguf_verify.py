"""Read a written GGUF back and check it against the Keras model it came from.

Three checks, all on the file as written:

1. tensors: the names are exactly those llama.cpp's converter writes for
   the architecture (`gguf.MODEL_TENSORS`), and every tensor's type, shape
   and bytes equal the Keras weight (LoRA merged) put through the
   converter's rules again (`gguf_layout.stored_tensor`): bit for bit,
   quantized types included;
2. tokenizer: the SentencePiece model rebuilt from the GGUF vocabulary
   (`kerasgemma.offline.tokenizer`, the reader of the offline Gemma 3)
   gives the Keras tokenizer's ids on probe texts and the prompts;
3. logits: the GGUF is loaded into the family's transformers model, by
   transformers' own GGUF loader where it has one (Gemma 2 and 3; the
   folder's config is passed, since that loader guesses settings such as
   `query_pre_attn_scalar` that a GGUF does not store) and otherwise
   (Gemma 1) by dequantizing with the `gguf` reader. Its float32 logits
   and greedy tokens are compared with a float32 Keras model carrying
   exactly the weights the GGUF stores (dequantized, norms minus the 1 + w
   shift; put into Keras by keras-hub's own Hugging Face converter), so
   every type (f16, bf16 and q8_0 included) must agree to float32
   round-off and give identical greedy tokens. This is what the Hugging
   Face check does for a bfloat16 folder (`kerasgemma.export.verify`):
   check 1 proves the stored weights are the Keras weights rounded, and
   the logits check measures the conversion, not the rounding.

The distance of the same read-back to the unrounded Keras model (float32,
LoRA merged), what the rounding itself costs, is reported beside it for
information (`rounded_max_abs_logits_diff`, `rounded_greedy_match`;
measured figures in docs/facts.md#gguf-export).
"""

import dataclasses
import json
import os

import numpy as np

from kerasgemma.atomic import write_text_atomic
from kerasgemma.export.gguf_layout import (dequantized_hf_tensors,
                                           expected_tensor_names,
                                           gguf_architecture, gguf_tensor_name,
                                           stored_tensor)
from kerasgemma.export.gguf_reuse import reusing_gguf_reader
from kerasgemma.export.tokenizer_files import PROBE_TEXTS
from kerasgemma.export.verify import (DEFAULT_ATOL, _compare_prompts,
                                      _float32_model, _load_float32,
                                      _torch_logits, default_prompts,
                                      keras_forward)
from kerasgemma.export.weights import hf_tensors
from kerasgemma.files import HF_CONFIG, VERIFICATION_REPORT
from kerasgemma.offline.tokenizer import (read_gguf_vocabulary,
                                          sentencepiece_proto)

# Largest max |Δlogits| (float32 compute, vs the Keras model holding the
# GGUF's weights) allowed per type: float32 round-off for every type, as
# for the Hugging Face check (docs/facts.md#gguf-export).
GGUF_ATOL = {"f32": DEFAULT_ATOL, "f16": DEFAULT_ATOL, "bf16": DEFAULT_ATOL, "q8_0": DEFAULT_ATOL}
# model_type -> transformers has a GGUF loader for it (transformers 5.x).
TRANSFORMERS_GGUF = ("gemma2", "gemma3_text")
# What the logits and greedy tokens are compared with.
REFERENCE = "Keras model (float32) holding the GGUF's weights, dequantized"


@dataclasses.dataclass
class GGUFReport:
    """Outcome of `verify_gguf`."""

    passed: bool
    gguf_file: str
    gguf_type: str
    atol: float
    max_abs_logits_diff: float
    tensors_match: bool
    tokenizer_match: bool
    loader: str
    prompts: list
    failures: list
    notes: list
    rounded_max_abs_logits_diff: float
    rounded_greedy_match: list
    reference: str = REFERENCE
    kind: str = "gguf"

    @property
    def greedy_match(self):
        """True if every prompt's greedy tokens equal the Keras model's (holding the GGUF's weights)."""
        return all(check.greedy_match for check in self.prompts)

    def summary(self):
        """A few lines for a terminal."""
        lines = [
            f"verification {'PASSED' if self.passed else 'FAILED'} (gguf {self.gguf_type}): {self.gguf_file}",
            f"  tensors (names, types, shapes, bytes) as llama.cpp's converter writes them: {self.tensors_match}",
            f"  tokenizer rebuilt from the GGUF gives the Keras ids: {self.tokenizer_match}",
            f"  read back by: {self.loader}",
            f"  reference: {self.reference}",
            f"  max |Δlogits| {self.max_abs_logits_diff:.3g} (tolerance {self.atol:g} for {self.gguf_type}, float32)",
            f"  vs the unrounded Keras model (float32, LoRA merged): max |Δlogits| "
            f"{self.rounded_max_abs_logits_diff:.3g}, greedy identical on {sum(self.rounded_greedy_match)} of "
            f"{len(self.rounded_greedy_match)} prompts (information: the cost of {self.gguf_type})",
        ]
        for check in self.prompts:
            lines.append(
                f"  {check.prompt[:40]!r}: |Δ| {check.max_abs_logits_diff:.3g}, greedy "
                f"{len(check.hf_greedy)} tokens {'identical' if check.greedy_match else 'DIFFER'}"
            )
        lines.extend(f"  note: {note}" for note in self.notes)
        lines.extend(f"  FAILURE: {failure}" for failure in self.failures)
        return "\n".join(lines)

    def to_json(self):
        return json.dumps(dataclasses.asdict(self), indent=2, ensure_ascii=False)


class _TensorLoader:
    """keras-hub's Hugging Face loader interface (`get_tensor`, `port_weight`) over arrays in memory."""

    def __init__(self, tensors):
        self.tensors = tensors
        self.ported = set()

    def get_tensor(self, hf_weight_key):
        return self.tensors[hf_weight_key]

    def port_weight(self, keras_variable, hf_weight_key, hook_fn=None):
        tensor = self.tensors[hf_weight_key]
        if hook_fn:
            tensor = hook_fn(tensor, list(keras_variable.shape))
        keras_variable.assign(tensor)
        self.ported.add(keras_variable.path)


def keras_model_holding(causal_lm, config, tensors):
    """A float32 copy of `causal_lm` without LoRA whose weights are `tensors` (HF names and layouts).

    The tensors go in through keras-hub's own Hugging Face converter for the
    family (`convert_gemma` / `convert_gemma3`), the inverse of the mapping
    the export used (`kerasgemma.export.weights`), written independently.

    Args:
        causal_lm: a Keras Gemma 1-3 causal LM (its architecture and preprocessor are used).
        config: dict. The exported folder's `config.json`.
        tensors: dict of HF name -> array, every weight of the model.

    Example:
    >>> from kerasgemma.tiny import build_tiny_causal_lm
    >>> from kerasgemma.export.weights import hf_tensors
    >>> from kerasgemma.export.hf_config import hf_config
    >>> lm = build_tiny_causal_lm("gemma2", num_key_value_heads=2)
    >>> lm.backbone.enable_lora(2)
    >>> config = hf_config(lm.backbone, lm.preprocessor.tokenizer)
    >>> copy = keras_model_holding(lm, config, dict(hf_tensors(lm.backbone)))
    >>> all(np.array_equal(a, b) for (_, a), (_, b) in zip(hf_tensors(copy.backbone), hf_tensors(lm.backbone)))
    True
    """
    from keras_hub.src.utils.transformers.preset_loader import \
        TransformersPresetLoader

    backbone = causal_lm.backbone
    copy = type(backbone).from_config(dict(backbone.get_config(), dtype="float32"))
    loader = _TensorLoader(tensors)
    TransformersPresetLoader(None, config).converter.convert_weights(copy, loader, config)
    missed = sorted({variable.path for variable in copy.weights} - loader.ported)
    if missed:
        raise RuntimeError(f"keras-hub's converter left Keras variables unset: {missed}.")
    return type(causal_lm)(backbone=copy, preprocessor=causal_lm.preprocessor)


def _check_tensors(reader, config, backbone, gguf_type, failures):
    """Names, types, shapes and bytes of every tensor vs the Keras weights; returns `{gguf: hf}` names."""
    import gguf

    architecture = gguf_architecture(config)
    layers = config["num_hidden_layers"]
    name_map = gguf.get_tensor_name_map(architecture, layers)
    tensors = {tensor.name: tensor for tensor in reader.tensors}
    expected = expected_tensor_names(architecture, layers)
    if set(tensors) != expected:
        failures.append(
            f"GGUF tensor names differ from llama.cpp's: missing {sorted(expected - set(tensors))}, "
            f"unexpected {sorted(set(tensors) - expected)}"
        )
    names = {}
    for hf_name, array in hf_tensors(backbone, merge_lora=True):
        gguf_name = gguf_tensor_name(name_map, hf_name)
        names[gguf_name] = hf_name
        tensor = tensors.get(gguf_name)
        if tensor is None:
            continue
        data, qtype = stored_tensor(hf_name, array, gguf_type)
        shape = tuple(int(n) for n in tensor.shape)
        if tensor.tensor_type != qtype:
            failures.append(f"{gguf_name}: type {tensor.tensor_type.name}, the converter writes {qtype.name}")
        elif shape != tuple(reversed(array.shape)):
            failures.append(f"{gguf_name}: shape {shape}, expected {tuple(reversed(array.shape))}")
        elif np.asarray(tensor.data).tobytes() != data.tobytes():
            failures.append(f"{gguf_name}: bytes differ from the Keras weight stored as {qtype.name}")
    return names


def _check_tokenizer(reader, keras_tokenizer, prompts, failures):
    import sentencepiece

    processor = sentencepiece.SentencePieceProcessor(
        model_proto=sentencepiece_proto(**read_gguf_vocabulary(reader))
    )
    for text in PROBE_TEXTS + tuple(prompts):
        if processor.encode(text) != [int(i) for i in keras_tokenizer(text)]:
            failures.append(f"the GGUF tokenizer's ids differ from Keras' on {text[:30]!r}")
            return False
    return True


def _gguf_model(gguf_file, folder, stored):
    """`(float32 transformers model holding the GGUF's weights, how it was loaded)`.

    `stored`: the GGUF's tensors, dequantized (`dequantized_hf_tensors`),
    for the families transformers' GGUF loader does not read.
    """
    import torch
    import transformers

    config = transformers.AutoConfig.from_pretrained(folder)
    if config.model_type in TRANSFORMERS_GGUF:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            os.path.dirname(os.path.abspath(gguf_file)), gguf_file=os.path.basename(gguf_file),
            config=config, dtype=torch.float32, attn_implementation="eager",
        )
        model.eval()
        return model, f"transformers {transformers.__version__} GGUF loader ({type(model).__name__})"
    model = _load_float32(folder)
    state = {name: torch.tensor(array) for name, array in stored.items()}  # a copy: the reader's arrays are read-only
    state["lm_head.weight"] = state["model.embed_tokens.weight"]
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"GGUF weights do not fit {type(model).__name__}: missing {missing}, unexpected {unexpected}.")
    return model, f"gguf {_gguf_version()} reader, dequantized into {type(model).__name__}"


def _unrounded_distance(reference_lm, model, prompt_ids, checks):
    """`(max |Δlogits|, [greedy identical per prompt])` of the read-back vs the unrounded Keras model.

    Taken along the read-back's own greedy tokens: the unrounded model's
    argmax at each generated position equals them exactly when its own
    greedy run would produce the same tokens, so one forward pass per
    prompt tells both.
    """
    sequences = [ids + check.hf_greedy for ids, check in zip(prompt_ids, checks)]
    forward = keras_forward(reference_lm, max(map(len, sequences)))
    diffs, greedy = [], []
    for ids, check, sequence in zip(prompt_ids, checks, sequences):
        logits = forward(sequence)
        diffs.append(float(np.max(np.abs(_torch_logits(model, sequence) - logits))))
        greedy.append(logits[len(ids) - 1 : len(sequence) - 1].argmax(-1).tolist() == check.hf_greedy)
    return max(diffs), greedy


def _gguf_version():
    from importlib.metadata import version

    return version("gguf")


def verify_gguf(causal_lm, gguf_file, folder, gguf_type, prompts=None, max_new_tokens=16, atol=None,
                report_dir=None):
    """Check a GGUF written by `write_gguf` against the Keras model it came from.

    Args:
        causal_lm: the Keras causal LM (LoRA enabled or not).
        gguf_file: str. The written `.gguf`.
        folder: str. The float32 merged folder it was written from (config, tokenizer).
        gguf_type: str. The type it was written in.
        prompts: sequence of str or None. None for `default_prompts`.
        max_new_tokens: int. Greedy tokens generated and compared.
        atol: float or None. Largest max |Δlogits|; None for `GGUF_ATOL[gguf_type]`.
        report_dir: str or None. Folder to write `verification.json` into.

    Returns:
        `GGUFReport`.

    Example:
    >>> import tempfile
    >>> from kerasgemma.tiny import build_tiny_causal_lm
    >>> from kerasgemma.export import export_merged
    >>> from kerasgemma.export.gguf_writer import write_gguf
    >>> scratch = tempfile.mkdtemp()
    >>> lm = build_tiny_causal_lm("gemma3")
    >>> folder = export_merged(lm, scratch + "/hf", dtype="float32")
    >>> _ = write_gguf(folder, scratch + "/m.gguf", "f16")
    >>> report = verify_gguf(lm, scratch + "/m.gguf", folder, "f16", max_new_tokens=2)
    >>> report.passed, report.tensors_match, report.tokenizer_match
    (True, True, True)
    """
    import gguf

    atol = GGUF_ATOL[gguf_type] if atol is None else atol
    with open(os.path.join(folder, HF_CONFIG), encoding="utf-8") as file:
        config = json.load(file)
    reference_lm, _ = _float32_model(causal_lm)
    reader = gguf.GGUFReader(gguf_file)
    failures = []
    names = _check_tensors(reader, config, reference_lm.backbone, gguf_type, failures)
    tensors_match = not failures
    keras_tokenizer = reference_lm.preprocessor.tokenizer
    prompts = tuple(prompts or default_prompts(keras_tokenizer))
    tokenizer_match = _check_tokenizer(reader, keras_tokenizer, prompts, failures)
    stored = dequantized_hf_tensors(reader, names)
    with reusing_gguf_reader(reader):  # transformers would parse the file again (gguf_reuse)
        model, loader = _gguf_model(gguf_file, folder, stored)
    stored_lm = keras_model_holding(reference_lm, config, stored)
    stored = None
    checks, _, prompt_ids, _ = _compare_prompts(stored_lm, model, folder, prompts, max_new_tokens, atol,
                                                     failures, unround=lambda: None)
    stored_lm = None
    rounded, rounded_greedy = _unrounded_distance(reference_lm, model, prompt_ids, checks)
    notes = [
        f"greedy tokens differ from the unrounded model's on {check.prompt[:30]!r} ({gguf_type} rounding)"
        for check, same in zip(checks, rounded_greedy) if not same
    ]
    report = GGUFReport(
        passed=not failures, gguf_file=os.path.abspath(gguf_file), gguf_type=gguf_type, atol=atol,
        max_abs_logits_diff=max(check.max_abs_logits_diff for check in checks), tensors_match=tensors_match,
        tokenizer_match=tokenizer_match, loader=loader, prompts=checks, failures=failures, notes=notes,
        rounded_max_abs_logits_diff=rounded, rounded_greedy_match=rounded_greedy,
    )
    if report_dir is not None:
        write_text_atomic(os.path.join(report_dir, VERIFICATION_REPORT), report.to_json() + "\n")
    return report
