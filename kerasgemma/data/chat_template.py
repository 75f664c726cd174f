"""Gemma's official chat template, as the exported Hugging Face tokenizer carries it.

This is the Jinja template of Google's instruction-tuned Gemma 3 checkpoints
(`tokenizer_config.json` / `chat_template.jinja`). It is a superset of the
Gemma 1/2 template: the turns are identical, and where Gemma 1/2 refuse a
`system` message this one prepends it, plus a blank line, to the first user
turn — the behaviour `kerasgemma.data.chat_format.format_chat` reproduces.

The template starts with `{{ bos_token }}`: transformers renders the text
`<bos>` and tokenizes it as the special id 2. Training adds BOS as an id
instead (SentencePiece never matches control pieces in text), so training
ids equal `tokenizer.apply_chat_template(messages, tokenize=True)` of the
exported tokenizer.
"""

GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}\n"
    "{%- if messages[0]['role'] == 'system' -%}\n"
    "    {%- if messages[0]['content'] is string -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}\n"
    "    {%- else -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\\n\\n' -%}\n"
    "    {%- endif -%}\n"
    "    {%- set loop_messages = messages[1:] -%}\n"
    "{%- else -%}\n"
    '    {%- set first_user_prefix = "" -%}\n'
    "    {%- set loop_messages = messages -%}\n"
    "{%- endif -%}\n"
    "{%- for message in loop_messages -%}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
    '        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}\n'
    "    {%- endif -%}\n"
    "    {%- if (message['role'] == 'assistant') -%}\n"
    '        {%- set role = "model" -%}\n'
    "    {%- else -%}\n"
    "        {%- set role = message['role'] -%}\n"
    "    {%- endif -%}\n"
    "    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else \"\") }}\n"
    "    {%- if message['content'] is string -%}\n"
    "        {{ message['content'] | trim }}\n"
    "    {%- elif message['content'] is iterable -%}\n"
    "        {%- for item in message['content'] -%}\n"
    "            {%- if item['type'] == 'image' -%}\n"
    "                {{ '<start_of_image>' }}\n"
    "            {%- elif item['type'] == 'text' -%}\n"
    "                {{ item['text'] | trim }}\n"
    "            {%- endif -%}\n"
    "        {%- endfor -%}\n"
    "    {%- else -%}\n"
    '        {{ raise_exception("Invalid content type") }}\n'
    "    {%- endif -%}\n"
    "    {{ '<end_of_turn>\\n' }}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "    {{'<start_of_turn>model\\n'}}\n"
    "{%- endif -%}\n"
)

# Gemma 4's chat template for text conversations, the turns exactly as
# Google's Gemma 4 template writes them (`<|turn>{role}\n{content | trim}<turn|>\n`,
# `assistant` → `model`, a system message as its own `<|turn>system` turn,
# `enable_thinking` → `<|think|>` at the start of the system turn, off by
# default) without Google's tool-calling and media branches. The generation
# prompt is `<|turn>model\n`, as in the E2B/E4B template (the 26B/31B one
# also pre-fills an empty thought channel when thinking is off).
# `kerasgemma.data.chat_format.format_chat(..., template="gemma4")` writes
# the same text, minus the leading BOS (added as an id).
GEMMA4_CHAT_TEMPLATE = (
    "{{- bos_token -}}\n"
    "{%- set loop_messages = messages -%}\n"
    "{%- set thinking = enable_thinking is defined and enable_thinking -%}\n"
    "{%- if thinking or messages[0]['role'] == 'system' -%}\n"
    "    {{- '<|turn>system\\n' -}}\n"
    "    {%- if thinking -%}\n"
    "        {{- '<|think|>\\n' -}}\n"
    "    {%- endif -%}\n"
    "    {%- if messages[0]['role'] == 'system' -%}\n"
    "        {{- messages[0]['content'] | trim -}}\n"
    "        {%- set loop_messages = messages[1:] -%}\n"
    "    {%- endif -%}\n"
    "    {{- '<turn|>\\n' -}}\n"
    "{%- endif -%}\n"
    "{%- for message in loop_messages -%}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
    '        {{- raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") -}}\n'
    "    {%- endif -%}\n"
    "    {%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}\n"
    "    {{- '<|turn>' + role + '\\n' + (message['content'] | trim) + '<turn|>\\n' -}}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "    {{- '<|turn>model\\n' -}}\n"
    "{%- endif -%}\n"
)

# The Jinja template of each chat family of `kerasgemma.data.chat_format`.
CHAT_TEMPLATES = {"gemma3": GEMMA_CHAT_TEMPLATE, "gemma4": GEMMA4_CHAT_TEMPLATE}
