"""Every file and folder name kerasgemma writes or reads, defined once.

Writers and readers import the same constant, so a run folder written by
`train` is always what `resume` and `export` look for.

A run folder (`kerasgemma train`):

    config.json            the resolved `TrainConfig`
    data_report.json       counts of loading, tokenizing and batching
    metrics.jsonl/.csv     one record per step and per evaluation
    loss.png               the loss curve
    samples.jsonl          answers to `sample_prompts` at each evaluation
    checkpoints/step-N/    state.npz, progress.json, config.json
    adapter.lora.h5        the final LoRA matrices (keras-hub's format)
    lora.json              preset, rank, alpha and targets to reload them
    hf-merged/, hf-adapter/  exports made by `Run.export` (and the demo)
    gguf/                  `Run.export_gguf`: NAME-TYPE.gguf, Modelfile

An exported folder (`kerasgemma export`): `config.json`, safetensors shards
and their index, tokenizer files, `generation_config.json`,
`verification.json` and `README.md`; or, for an adapter,
`adapter_config.json` + `adapter_model.safetensors`. Either also holds the
empty marker `.kerasgemma-export`: only a folder with it is replaced
without `--overwrite`.

Example:
>>> RUN_CONFIG, LORA_WEIGHTS
('config.json', 'adapter.lora.h5')
"""

# Run folder.
RUN_CONFIG = "config.json"
DATA_REPORT = "data_report.json"
METRICS_JSONL = "metrics.jsonl"
METRICS_CSV = "metrics.csv"
LOSS_PLOT = "loss.png"
SAMPLES = "samples.jsonl"
LORA_WEIGHTS = "adapter.lora.h5"
LORA_SETTINGS = "lora.json"
RUN_LOCK = ".lock"
DEMO_REPORT = "demo_report.json"
MERGED_DIR = "hf-merged"
ADAPTER_DIR = "hf-adapter"
GGUF_DIR = "gguf"

# Checkpoints inside a run folder.
CHECKPOINTS_DIR = "checkpoints"
CHECKPOINT_STATE = "state.npz"
CHECKPOINT_PROGRESS = "progress.json"
CHECKPOINT_CONFIG = "config.json"

# Hugging Face folders.
HF_CONFIG = "config.json"
SAFETENSORS_SINGLE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
VERIFICATION_REPORT = "verification.json"
TOKENIZER_MODEL = "tokenizer.model"
TOKENIZER_CONFIG = "tokenizer_config.json"
TOKENIZER_JSON = "tokenizer.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"
GENERATION_CONFIG = "generation_config.json"
MODEL_CARD = "README.md"
EXPORT_MARKER = ".kerasgemma-export"

# Prefix of every temporary file or folder kerasgemma creates next to its
# final place; anything with it is ours to delete.
TEMPORARY_PREFIX = ".tmp-"
