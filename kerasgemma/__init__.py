"""kerasgemma: LoRA instruction tuning of Gemma in Keras 3 (JAX), exported to Hugging Face.

Everything a notebook needs is here, one import away:

    import kerasgemma as kg

    config = kg.TrainConfig(preset="gemma_2b_en", data="hub", subset="baike", max_steps=500)
    run = kg.train(config)                                  # folder, model, losses
    folder, report = run.export()                           # merged HF folder, verified
    kg.push_to_hub(folder, "me/gemma-2b-zh")                # private repo

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

ensure_jax_backend()

from kerasgemma.config import TrainConfig  # noqa: E402  (after the backend is chosen)
from kerasgemma.data.chat_format import format_chat  # noqa: E402
from kerasgemma.data.pipeline import prepare_data  # noqa: E402
from kerasgemma.export.adapter import export_adapter  # noqa: E402
from kerasgemma.export.convert import convert  # noqa: E402
from kerasgemma.export.gguf_export import export_gguf  # noqa: E402
from kerasgemma.export.merged import export_merged  # noqa: E402
from kerasgemma.export.verify import verify_export  # noqa: E402
from kerasgemma.generation import chat  # noqa: E402
from kerasgemma.generation import generate  # noqa: E402
from kerasgemma.hub import push_to_hub  # noqa: E402
from kerasgemma.run import Run  # noqa: E402
from kerasgemma.run import load_run  # noqa: E402
from kerasgemma.run import plan_distribution  # noqa: E402
from kerasgemma.run import resume  # noqa: E402
from kerasgemma.run import start_run  # noqa: E402
from kerasgemma.run import train  # noqa: E402

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
    "load_run",
    "plan_distribution",
    "prepare_data",
    "push_to_hub",
    "resume",
    "start_run",
    "train",
    "verify_export",
]
