"""The data stage: rows -> validated chat examples -> token ids with a loss mask -> batches.

Typical use, step by step (`prepare_data(config, tokenizer)` does all of it in
one call, as `kerasgemma data`, `kerasgemma train` and the notebooks do):

    examples, load_report = load_examples("baike.jsonl", on_error="skip")
    train, validation = split_examples(examples, validation_fraction=0.05, seed=0)
    tokenized, token_report = tokenize_examples(train, tokenizer, max_tokens=513)
    batches = Batches(tokenized, batch_size=8, sequence_length=512)
    for batch in batches.epoch(0):
        ...
"""

from kerasgemma.data.batching import MODES, Batches, bucket_length, pack_rows
from kerasgemma.data.chat_format import (
    PLAIN_INSTRUCTION,
    TEMPLATES,
    TURN_FORMATS,
    ChatText,
    format_chat,
    generation_prompt,
)
from kerasgemma.data.chat_template import CHAT_TEMPLATES, GEMMA4_CHAT_TEMPLATE, GEMMA_CHAT_TEMPLATE
from kerasgemma.data.formats import FORMAT_CHOICES, FORMS, form_of, parse_columns, to_conversations, with_forms
from kerasgemma.data.loading import (
    DATASETS_PREFIX,
    HUB_PREFIX,
    load_dataset_examples,
    load_hub_dataset,
    parse_hub_spec,
    load_source_examples,
    HC3_REPO_ID,
    HC3_SUBSETS,
    DataError,
    load_examples,
    load_hub_examples,
)
from kerasgemma.data.pipeline import PreparedData, SplitExamples, load_data, prepare_data
from kerasgemma.data.report import LoadReport, TokenReport
from kerasgemma.data.rows import RowError, row_to_conversations, validate_messages
from kerasgemma.data.split import split_examples
from kerasgemma.data.tokenize import (
    TokenizedExample,
    resolve_template,
    sentencepiece_processor,
    tokenize_examples,
)
