"""Chat with an exported Hugging Face folder through transformers (`kerasgemma chat FOLDER`).

A merged export (`kerasgemma export`, `Run.export`) holds `config.json`,
safetensors weights and the tokenizer files, whose `tokenizer_config.json`
carries the chat template the run trained with. `FolderChat` loads that
folder with transformers (float32 on the CPU, bfloat16 on a GPU that
supports it), formats a conversation with the folder's own template and
streams the answer through transformers' `TextIteratorStreamer`. The
adapter-only folder (`adapter_config.json`) needs its base model and is
not a chat folder.

torch and transformers are the `verify` extra's; they are imported when a
folder is opened, not before.
"""

import json
import threading
from pathlib import Path

from kerasgemma.errors import UserError
from kerasgemma.files import HF_CONFIG
from kerasgemma.files import SAFETENSORS_INDEX
from kerasgemma.files import SAFETENSORS_SINGLE

FALLBACK_CLASS = "AutoModelForCausalLM"


def is_model_folder(path):
    """Whether `path` is a Hugging Face model folder: `config.json` and safetensors weights.

    Example:
    >>> import tempfile
    >>> is_model_folder(tempfile.mkdtemp())
    False
    """
    path = Path(path)
    return (path / HF_CONFIG).is_file() and (
        (path / SAFETENSORS_SINGLE).is_file() or (path / SAFETENSORS_INDEX).is_file()
    )


def generation_settings(sampler="greedy", temperature=1.0, top_k=None, top_p=None):
    """transformers `generate` arguments for kerasgemma's sampler settings (`kerasgemma.generation.make_sampler`'s).

    Example:
    >>> generation_settings()
    {'do_sample': False}
    >>> generation_settings("top_p", temperature=0.7, top_p=0.8)
    {'do_sample': True, 'temperature': 0.7, 'top_k': 0, 'top_p': 0.8}
    """
    if sampler == "greedy":
        return {"do_sample": False}
    settings = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
    if sampler == "top_k":
        settings["top_k"] = top_k or 50
    elif sampler == "top_p":
        settings.update(top_k=top_k or 0, top_p=top_p or 0.9)
    return settings


class FolderChat:
    """An exported folder loaded by transformers, answering conversations as text pieces.

    Args:
        folder: str or path. A merged Hugging Face folder (`is_model_folder`).
        sampler, temperature, top_k, top_p: as `kerasgemma chat`'s flags.
        seed: int or None. Seeds torch before each answer.

    Example (needs the `verify` extra and an exported folder):

        chat = FolderChat("runs/20261128-101500/hf-merged")
        print("".join(chat.chat([{"role": "user", "content": "你好"}], max_new_tokens=32)))
    """

    def __init__(self, folder, sampler="greedy", temperature=1.0, top_k=None, top_p=None, seed=None):
        import torch
        import transformers

        self.folder = Path(folder)
        self.seed = seed
        self.settings = generation_settings(sampler, temperature, top_k, top_p)
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(self.folder)
        if not self.tokenizer.chat_template:
            raise UserError(f"{self.folder} has no chat template (tokenizer_config.json); export it with kerasgemma.")
        config = json.loads((self.folder / HF_CONFIG).read_text(encoding="utf-8"))
        class_name = (config.get("architectures") or [FALLBACK_CLASS])[0]
        model_class = getattr(transformers, class_name, None)
        if model_class is None:
            raise UserError(f"transformers {transformers.__version__} has no {class_name} (named in {self.folder}).")
        on_gpu = torch.cuda.is_available()
        dtype = torch.bfloat16 if on_gpu and torch.cuda.is_bf16_supported() else torch.float32
        self.model = model_class.from_pretrained(self.folder, dtype=dtype)
        self.model.to("cuda" if on_gpu else "cpu").eval()

    def chat(self, messages, max_new_tokens=256):
        """Yield the answer to `messages` (`{"role", "content"}` dicts) in pieces as transformers writes it."""
        import torch
        import transformers

        if self.seed is not None:
            transformers.set_seed(self.seed)
        inputs = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        ).to(self.model.device)
        streamer = transformers.TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        arguments = dict(inputs, max_new_tokens=max_new_tokens, streamer=streamer, **self.settings)
        failure = []

        def generate():
            try:
                with torch.inference_mode():
                    self.model.generate(**arguments)
            except BaseException as error:  # re-raised in the caller's thread
                failure.append(error)
                streamer.end()

        thread = threading.Thread(target=generate, daemon=True)
        thread.start()
        yield from streamer
        thread.join()
        if failure:
            raise failure[0]
