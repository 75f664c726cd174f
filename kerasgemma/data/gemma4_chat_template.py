"""Gemma 4's chat format for text, as an exported tokenizer carries it.

Gemma 4 replaced Gemma 1–3's `<start_of_turn>`/`<end_of_turn>` with
`<|turn>`/`<turn|>` and gave `system` its own turn (Gemma 3 folded it into
the first user turn). Thinking is off unless `enable_thinking=True` is
passed to `apply_chat_template`, which opens a system turn with `<|think|>`.
This is the text subset of Google's template (no images, audio or tools),
written here because no Gemma 4 tokenizer can be downloaded offline.

Example:
>>> import jinja2
>>> text = jinja2.Template(GEMMA4_CHAT_TEMPLATE).render(
...     bos_token="<bos>", add_generation_prompt=True,
...     messages=[{"role": "user", "content": "Hi"}])
>>> text
'<bos><|turn>user\\nHi<turn|>\\n<|turn>model\\n'
"""

GEMMA4_START_OF_TURN = "<|turn>"
GEMMA4_END_OF_TURN = "<turn|>"

GEMMA4_CHAT_TEMPLATE = (
    "{{ bos_token }}\n"
    "{%- set loop_messages = messages -%}\n"
    "{%- if messages and messages[0]['role'] in ['system', 'developer'] -%}\n"
    "    {%- set system_text = messages[0]['content'] if messages[0]['content'] is string"
    " else messages[0]['content'][0]['text'] -%}\n"
    "    {%- set loop_messages = messages[1:] -%}\n"
    "{%- else -%}\n"
    "    {%- set system_text = '' -%}\n"
    "{%- endif -%}\n"
    "{%- if enable_thinking is defined and enable_thinking -%}\n"
    "    {{ '<|turn>system\\n<|think|>' + (system_text | trim) + '<turn|>\\n' }}\n"
    "{%- elif system_text -%}\n"
    "    {{ '<|turn>system\\n' + (system_text | trim) + '<turn|>\\n' }}\n"
    "{%- endif -%}\n"
    "{%- for message in loop_messages -%}\n"
    "    {%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}\n"
    "    {{ '<|turn>' + role + '\\n' }}\n"
    "    {%- if message['content'] is string -%}\n"
    "        {{ message['content'] | trim }}\n"
    "    {%- else -%}\n"
    "        {%- for item in message['content'] -%}\n"
    "            {%- if item['type'] == 'text' -%}{{ item['text'] | trim }}{%- endif -%}\n"
    "        {%- endfor -%}\n"
    "    {%- endif -%}\n"
    "    {{ '<turn|>\\n' }}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "    {{ '<|turn>model\\n' }}\n"
    "{%- endif -%}\n"
)
