"""`kerasgemma chat`: talk to a trained run or an exported folder, with the chat template it trained on.

    kerasgemma chat runs/20261128-101500 --prompt "中国的首都是哪里？"
    kerasgemma chat runs/20261128-101500                  # a conversation (on a terminal)
    kerasgemma chat runs/20261128-101500 < questions.txt  # one answer per line of input
    kerasgemma chat runs/20261128-101500 -p "写一首诗" --sampler top_p --top-p 0.9 --temperature 0.7 --seed 1
    kerasgemma chat runs/20261128-101500/hf-merged -p "你好"  # a merged export, through transformers

Each `--prompt` is answered on its own. Without one, a terminal gets a
conversation (the model sees the earlier turns; `/reset` forgets them, an
empty line, `/exit` or Ctrl-D ends it) and piped input is read one prompt
per line, each answered on its own. Answers are greedy unless `--sampler`
says otherwise, and stop at the end of the model's turn or after
`--max-new-tokens`. The answer is printed as it is generated, a token or a
whole character at a time (`kerasgemma.streaming`). A run folder answers
with its newest good checkpoint in Keras; a merged Hugging Face folder
(`config.json` + safetensors, as `kerasgemma export` writes it) answers
through transformers with the folder's own chat template
(`kerasgemma.folder_chat`, needs the `verify` extra).
"""

import argparse
import sys

from kerasgemma.commands.loaded_run import load_run_to_stderr
from kerasgemma.folder_chat import FolderChat
from kerasgemma.folder_chat import is_model_folder
from kerasgemma.generation import SAMPLERS
from kerasgemma.streaming import TokenStream

RESET, EXIT = "/reset", "/exit"


def add_parser(subparsers):
    """Register `chat` on an argparse `subparsers` object.

    Example:
    >>> import argparse
    >>> parser = argparse.ArgumentParser()
    >>> parser = add_parser(parser.add_subparsers())
    >>> args = parser.parse_args(["runs/x", "-p", "hi", "-p", "again", "--sampler", "top_k", "--top-k", "5"])
    >>> args.prompt, args.sampler, args.top_k, args.max_new_tokens
    (['hi', 'again'], 'top_k', 5, 256)
    """
    parser = subparsers.add_parser(
        "chat",
        help="Talk to a trained run: one prompt, or a conversation.",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run_dir", metavar="RUN_OR_FOLDER",
                        help="A run folder (its newest good checkpoint), or a merged Hugging Face folder.")
    parser.add_argument("-p", "--prompt", action="append",
                        help="A question to answer (repeat for several). Default: read from the terminal or stdin.")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="Longest answer, in tokens (default 256).")
    sampling = parser.add_argument_group("sampling (default: greedy)")
    sampling.add_argument("--sampler", choices=SAMPLERS, default="greedy", help="How the next token is picked.")
    sampling.add_argument("--temperature", type=float, default=1.0, help="Softmax temperature (default 1.0).")
    sampling.add_argument("--top-k", type=int, help="k of --sampler top_k (default 50), or a cap for top_p.")
    sampling.add_argument("--top-p", type=float, help="p of --sampler top_p (default 0.9).")
    sampling.add_argument("--seed", type=int, help="Seed, for the same sampled answers again.")
    parser.set_defaults(run=run)
    return parser


def run(args, stdin=None):
    """Run `kerasgemma chat` with parsed arguments; returns the exit code."""
    stdin = stdin or sys.stdin
    reply_pieces = open_chat(args)

    def answer(messages):
        """Print the answer as it comes; return it whole (for the conversation's history)."""
        pieces = []
        for piece in reply_pieces(messages):
            pieces.append(piece)
            print(piece, end="", flush=True)
        print(flush=True)
        return "".join(pieces)

    if args.prompt:
        prompts = args.prompt
    elif stdin.isatty():
        return converse(answer, stdin)
    else:
        prompts = [line.rstrip("\n") for line in stdin if line.strip()]
    for prompt in prompts:
        answer([{"role": "user", "content": prompt}])
    return 0


def open_chat(args):
    """`reply_pieces(messages)`: the answer of `args.run_dir`'s model as text pieces, with `args`' sampling."""
    sampling = {} if args.sampler == "greedy" else {
        "temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p, "seed": args.seed}
    if is_model_folder(args.run_dir):
        folder = FolderChat(args.run_dir, sampler=args.sampler, **sampling)
        return lambda messages: folder.chat(messages, max_new_tokens=args.max_new_tokens)
    loaded = load_run_to_stderr(args.run_dir)
    stream = TokenStream(loaded.causal_lm, sampler=args.sampler, **sampling)
    return lambda messages: stream.chat(messages, template=loaded.config.template,
                                        max_new_tokens=args.max_new_tokens)


def converse(answer, stdin):
    """A conversation on a terminal: prompts on stderr, history kept between turns.

    `answer(messages)` prints the reply (on stdout) and returns it.
    """
    print(f"(an empty line, {EXIT} or Ctrl-D ends; {RESET} forgets the conversation)", file=sys.stderr)
    messages = []
    while True:
        print("> ", end="", file=sys.stderr, flush=True)
        line = stdin.readline()
        text = line.strip()
        if not line or not text or text == EXIT:
            return 0
        if text == RESET:
            messages = []
            continue
        messages.append({"role": "user", "content": text})
        messages.append({"role": "assistant", "content": answer(messages)})
