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
   (Gemma 1) by dequantizing with the `gguf` reader; its float32 logits
   and greedy tokens are compared with the Keras model's in float32.

Each type has its own logits tolerance (`GGUF_ATOL`, measured on the tiny
test models and the real Gemma 3 270M, docs/facts.md#gguf-export); greedy
tokens must be identical for f32, f16 and bf16 and are reported for q8_0.
"""

import dataclasses
import json
import os

import numpy as np

from kerasgemma.atomic import write_text_atomic
from kerasgemma.export.gguf_layout import expected_tensor_names
from kerasgemma.export.gguf_layout import gguf_architecture
from kerasgemma.export.gguf_layout import gguf_tensor_name
from kerasgemma.export.gguf_layout import is_norm
from kerasgemma.export.gguf_layout import stored_tensor
from kerasgemma.export.tokenizer_files import PROBE_TEXTS
from kerasgemma.export.verify import _compare_prompts
from kerasgemma.export.verify import _float32_model
from kerasgemma.export.verify import _load_float32
from kerasgemma.export.verify import default_prompts
from kerasgemma.export.weights import hf_tensors
from kerasgemma.files import HF_CONFIG
from kerasgemma.files import VERIFICATION_REPORT
from kerasgemma.offline.tokenizer import read_gguf_vocabulary
from kerasgemma.offline.tokenizer import sentencepiece_proto

# Largest max |Δlogits| (float32 compute) allowed per type.
GGUF_ATOL = {"f32": 1e-4, "f16": 2e-2, "bf16": 1e-1, "q8_0": 2e-1}
# Types whose greedy tokens must equal the Keras model's.
GREEDY_EXACT = ("f32", "f16", "bf16")
# model_type -> transformers has a GGUF loader for it (transformers 5.x).
TRANSFORMERS_GGUF = ("gemma2", "gemma3_text")


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
    kind: str = "gguf"

    @property
    def greedy_match(self):
        """True if every prompt's greedy tokens equal the Keras model's."""
        return all(check.greedy_match for check in self.prompts)

    def summary(self):
        """A few lines for a terminal."""
        lines = [
            f"verification {'PASSED' if self.passed else 'FAILED'} (gguf {self.gguf_type}): {self.gguf_file}",
            f"  tensors (names, types, shapes, bytes) as llama.cpp's converter writes them: {self.tensors_match}",
            f"  tokenizer rebuilt from the GGUF gives the Keras ids: {self.tokenizer_match}",
            f"  read back by: {self.loader}",
            f"  max |Δlogits| {self.max_abs_logits_diff:.3g} (tolerance {self.atol:g} for {self.gguf_type}, float32)",
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


def dequantized_hf_tensors(reader, names):
    """`{hf_name: float32 array}` of a Gemma GGUF, with the converter's 1 + w norms undone.

    Args:
        reader: `gguf.GGUFReader`.
        names: dict of GGUF tensor name -> HF tensor name.

    Example:
    >>> import tempfile, gguf
    >>> from kerasgemma.tiny import build_tiny_causal_lm
    >>> from kerasgemma.export import export_merged
    >>> from kerasgemma.export.gguf_writer import write_gguf
    >>> scratch = tempfile.mkdtemp()
    >>> lm = build_tiny_causal_lm("gemma")
    >>> names = write_gguf(export_merged(lm, scratch + "/hf", dtype="float32"), scratch + "/m.gguf", "f32")
    >>> weights = dequantized_hf_tensors(gguf.GGUFReader(scratch + "/m.gguf"), names)
    >>> float(abs(weights["model.norm.weight"] - lm.backbone.get_layer("final_normalization").scale.numpy()).max())
    0.0
    """
    import gguf

    tensors = {tensor.name: tensor for tensor in reader.tensors}
    weights = {}
    for gguf_name, hf_name in names.items():
        if gguf_name not in tensors:
            raise ValueError(f"The GGUF has no tensor {gguf_name!r} ({hf_name}).")
        tensor = tensors[gguf_name]
        # `dequantize` returns NumPy (row-major) order, the reverse of the
        # GGUF's listed shape, which is HF's [out_features, in_features].
        array = np.asarray(gguf.quants.dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
        if is_norm(hf_name):
            array = array - np.float32(1.0)
        weights[hf_name] = np.ascontiguousarray(array)
    return weights


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


def _gguf_model(gguf_file, folder, names, reader):
    """`(float32 transformers model holding the GGUF's weights, how it was loaded)`."""
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
    state = {name: torch.from_numpy(array) for name, array in dequantized_hf_tensors(reader, names).items()}
    state["lm_head.weight"] = state["model.embed_tokens.weight"]
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"GGUF weights do not fit {type(model).__name__}: missing {missing}, unexpected {unexpected}.")
    return model, f"gguf {_gguf_version()} reader, dequantized into {type(model).__name__}"


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
    model, loader = _gguf_model(gguf_file, folder, names, reader)
    prompt_failures = []
    checks, _, _ = _compare_prompts(reference_lm, model, folder, prompts, max_new_tokens, atol,
                                    prompt_failures, unround=lambda: None)
    notes = []
    for failure in prompt_failures:
        if failure.startswith("greedy") and gguf_type not in GREEDY_EXACT:
            notes.append(f"{failure} ({gguf_type} is lossy; reported, not required)")
        else:
            failures.append(failure)
    report = GGUFReport(
        passed=not failures, gguf_file=os.path.abspath(gguf_file), gguf_type=gguf_type, atol=atol,
        max_abs_logits_diff=max(check.max_abs_logits_diff for check in checks), tensors_match=tensors_match,
        tokenizer_match=tokenizer_match, loader=loader, prompts=checks, failures=failures, notes=notes,
    )
    if report_dir is not None:
        write_text_atomic(os.path.join(report_dir, VERIFICATION_REPORT), report.to_json() + "\n")
    return report
