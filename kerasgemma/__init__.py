"""kerasgemma: LoRA instruction tuning of Gemma in Keras 3 (JAX), exported to Hugging Face.

Everything a notebook needs is here, one import away:

    import kerasgemma as kg

    config = kg.TrainConfig(preset="gemma_2b_en", data="hub", subset="baike", max_steps=500)
    run = kg.train(config)                                  # folder, model, losses
    folder, report = run.export()                           # merged HF folder, verified
    kg.push_to_hub(folder, "me/gemma-2b-zh")                # private repo
    kg.push_to_kaggle(folder, "me/gemma-2b-zh/transformers/merged")  # Kaggle Models

Or step by step: `kg.start_run(config)` returns a `Run` to `fit()`,
`answer(questions)`, `save_lora()` and `export()`; `kg.resume(run_dir)`
continues a killed run; `kg.load_run(run_dir)` brings a finished one back;
`kg.convert(run_dir_or_preset, out)` is `kerasgemma export` from Python.

Example:
>>> import kerasgemma as kg
>>> sorted(kg.__all__)[:4]
['Run', 'TrainConfig', 'chat', 'convert']
"""

from kerasgemma.backend import ensure_jax_backend
from kerasgemma.lazy import lazy_names

ensure_jax_backend()

# Public name -> the module that defines it. The names are loaded on first
# use (PEP 562 `__getattr__`), not here: most of them import Keras, keras-hub
# and, through keras-hub's tokenizers, TensorFlow (about 10 s together), and
# every `import kerasgemma.<anything>` runs this file first, including
# `kerasgemma --help`. `from kerasgemma import train` and `kg.train` work
# as with eager imports.
_PUBLIC = {
    "TrainConfig": "kerasgemma.config",
    "format_chat": "kerasgemma.data.chat_format",
    "load_examples": "kerasgemma.data.loading",
    "prepare_data": "kerasgemma.data.pipeline",
    "export_adapter": "kerasgemma.export.adapter",
    "export_gguf": "kerasgemma.export.gguf_export",
    "convert": "kerasgemma.export.convert",
    "export_merged": "kerasgemma.export.merged",
    "verify_export": "kerasgemma.export.verify",
    "chat": "kerasgemma.generation",
    "generate": "kerasgemma.generation",
    "push_to_hub": "kerasgemma.hub",
    "push_to_kaggle": "kerasgemma.kaggle_models",
    "prepare_notebook": "kerasgemma.notebook",
    "Run": "kerasgemma.run",
    "load_run": "kerasgemma.run",
    "plan_distribution": "kerasgemma.run",
    "resume": "kerasgemma.run",
    "start_run": "kerasgemma.run",
    "train": "kerasgemma.run",
}


__getattr__, __dir__ = lazy_names("kerasgemma", _PUBLIC, globals())


__version__ = "0.1.0"

__all__ = [
    "Run",
    "TrainConfig",
    "chat",
    "convert",
    "export_adapter",
    "export_gguf",
    "export_merged",
    "format_chat",
    "generate",
    "load_examples",
    "load_run",
    "plan_distribution",
    "prepare_data",
    "prepare_notebook",
    "push_to_hub",
    "push_to_kaggle",
    "resume",
    "start_run",
    "train",
    "verify_export",
]
