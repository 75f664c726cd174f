"""Command-line flags generated from `TrainConfig`, layered over a config file.

Order of precedence: defaults < `--config FILE` (YAML/JSON) < flags.
"""

import argparse
import dataclasses
import re
import types
import typing

from kerasgemma.config import TrainConfig

# Short spellings people type for the most used settings.
ALIASES = {"learning_rate": ["--lr"], "lora_rank": ["--rank"]}


def _parse_optional(kind):
    def parse(text):
        return None if text.lower() in ("none", "null") else kind(text)

    parse.__name__ = kind.__name__
    return parse


def field_descriptions():
    """Each `TrainConfig` field's description, from the class docstring.

    Example:
    >>> field_descriptions()["batch_size"]
    'rows per micro-batch.'
    """
    entries, current = [], None
    for line in TrainConfig.__doc__.splitlines():
        if re.match(r"^ {8}\S", line):
            current = [line.strip()]
            entries.append(current)
        elif current is not None and re.match(r"^ {12}\S", line):
            current.append(line.strip())
        else:
            current = None
    texts = [" ".join(entry) for entry in entries]
    descriptions = {}
    for field in dataclasses.fields(TrainConfig):
        pattern = re.compile(rf"\b{field.name}\b")
        entry = next((text for text in texts if pattern.search(text.split(":")[0])), "")
        descriptions[field.name] = entry.split(": ", 1)[-1]
    return descriptions


def add_config_arguments(parser, base=None, fields=None):
    """Add `--config` and one flag per `TrainConfig` field to `parser`.

    `base`: the `TrainConfig` whose values the command starts from, shown as
    the defaults in `--help` (`TrainConfig()` when None). `fields`: the
    names of the fields to add flags for (all when None).

    Example:
    >>> parser = argparse.ArgumentParser()
    >>> add_config_arguments(parser)
    >>> config_from_args(parser.parse_args(["--lr", "1e-4", "--max-steps", "3"])).learning_rate
    0.0001
    """
    base = base or TrainConfig()
    parser.add_argument("--config", help="YAML or JSON file of settings; flags override it.")
    parser.add_argument("--allow-unknown-keys", action="store_true",
                        help="Warn about settings in --config that kerasgemma does not know, instead of refusing.")
    hints = typing.get_type_hints(TrainConfig)
    descriptions = field_descriptions()
    for field in dataclasses.fields(TrainConfig):
        if fields is not None and field.name not in fields:
            continue
        hint = hints[field.name]
        flags = ["--" + field.name.replace("_", "-")] + ALIASES.get(field.name, [])
        default = getattr(base, field.name)
        help_text = f"{descriptions[field.name]} (default: {default!r})".replace("%", "%%")
        options = {"dest": field.name, "default": argparse.SUPPRESS, "help": help_text}
        args = typing.get_args(hint)
        if hint is bool:
            parser.add_argument(*flags, action=argparse.BooleanOptionalAction, **options)
        elif typing.get_origin(hint) is list:
            parser.add_argument(*flags, nargs="*", type=args[0], **options)
        elif isinstance(hint, types.UnionType) and type(None) in args:
            kind = next(arg for arg in args if arg is not type(None))
            parser.add_argument(*flags, type=_parse_optional(kind), metavar=kind.__name__.upper(), **options)
        else:
            parser.add_argument(*flags, type=hint, metavar=hint.__name__.upper(), **options)


def config_from_args(args, base=None):
    """Resolve a `TrainConfig` from parsed arguments (file, then flags)."""
    config = base or TrainConfig()
    if getattr(args, "config", None):
        config = TrainConfig.from_file(args.config, base=config,
                                       allow_unknown_keys=getattr(args, "allow_unknown_keys", False))
    names = {field.name for field in dataclasses.fields(TrainConfig)}
    overrides = {key: value for key, value in vars(args).items() if key in names}
    return dataclasses.replace(config, **overrides)
