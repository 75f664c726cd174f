"""The Ollama `Modelfile` written beside a GGUF: the chat template and stop tokens of the family.

The template renders the training chat format (`kerasgemma.data.chat_format`,
the same turns as the Jinja template in `tokenizer_config.json`): a system
message goes before the first user message, separated by a blank line;
each turn is `<start_of_turn>ROLE\\n...<end_of_turn>\\n`, the assistant's
role is `model`; the prompt ends with an open model turn. Ollama (through
llama.cpp) adds `<bos>` itself (`tokenizer.ggml.add_bos_token`).
"""

TEMPLATE = '''{{- $system := "" }}
{{- range .Messages }}{{ if eq .Role "system" }}{{ $system = .Content }}{{ end }}{{ end }}
{{- $first := true }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "user" }}START_TURNuser
{{ if and $first $system }}{{ $system }}

{{ end }}{{ .Content }}END_TURN
{{ $first = false }}{{ if $last }}START_TURNmodel
{{ end }}
{{- else if eq .Role "assistant" }}START_TURNmodel
{{ .Content }}{{ if not $last }}END_TURN
{{ end }}
{{- end }}
{{- end }}'''


def modelfile(gguf_name, turn_markers, stop_tokens, temperature=None):
    """The text of an Ollama Modelfile for `gguf_name` (a path relative to the Modelfile).

    Args:
        gguf_name: str. The GGUF file, relative to the Modelfile's folder.
        turn_markers: (str, str). The family's start/end of turn markers.
        stop_tokens: sequence of str. Tokens that end a reply.
        temperature: float or None. A `PARAMETER temperature` line if given.

    Example:
    >>> text = modelfile("model-f16.gguf", ("<start_of_turn>", "<end_of_turn>"), ["<eos>", "<end_of_turn>"])
    >>> text.splitlines()[0], text.splitlines()[-1]
    ('FROM ./model-f16.gguf', 'PARAMETER stop "<end_of_turn>"')
    >>> "<start_of_turn>model" in text
    True
    """
    start, end = turn_markers
    template = TEMPLATE.replace("START_TURN", start).replace("END_TURN", end)
    lines = [f"FROM ./{gguf_name}", f'TEMPLATE """{template}"""']
    if temperature is not None:
        lines.append(f"PARAMETER temperature {temperature:g}")
    lines += [f'PARAMETER stop "{token}"' for token in stop_tokens]
    return "\n".join(lines) + "\n"
