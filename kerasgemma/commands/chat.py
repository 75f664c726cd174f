"""`kerasgemma chat`: talk to a trained run, with the chat template it trained on.

    kerasgemma chat runs/20261128-101500 --prompt "中国的首都是哪里？"
    kerasgemma chat runs/20261128-101500                  # a conversation (on a terminal)
    kerasgemma chat runs/20261128-101500 < questions.txt  # one answer per line of input
    kerasgemma chat runs/20261128-101500 -p "写一首诗" --sampler top_p --top-p 0.9 --temperature 0.7 --seed 1

Each `--prompt` is answered on its own. Without one, a terminal gets a
conversation (the model sees the earlier turns; `/reset` forgets them, an
empty line, `/exit` or Ctrl-D ends it) and piped input is read one prompt
per line, each answered on its own. Answers are greedy unless `--sampler`
says otherwise, and stop at the end of the model's turn or after
`--max-new-tokens`. The model is the run's newest good checkpoint.
"""

import argparse
import sys

from kerasgemma.commands.loaded_run import add_run_argument
from kerasgemma.commands.loaded_run import load_run_to_stderr
from kerasgemma.generation import SAMPLERS
from kerasgemma.generation import chat

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
    add_run_argument(parser)
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
    loaded = load_run_to_stderr(args.run_dir)

    def answer(messages):
        sampling = {} if args.sampler == "greedy" else {
            "temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p, "seed": args.seed}
        return chat(loaded.causal_lm, messages, max_new_tokens=args.max_new_tokens,
                    template=loaded.config.template, sampler=args.sampler, **sampling)

    if args.prompt:
        prompts = args.prompt
    elif stdin.isatty():
        return converse(answer, stdin)
    else:
        prompts = [line.rstrip("\n") for line in stdin if line.strip()]
    for prompt in prompts:
        print(answer([{"role": "user", "content": prompt}]), flush=True)
    return 0


def converse(answer, stdin):
    """A conversation on a terminal: prompts on stderr, answers on stdout, history kept between turns."""
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
        reply = answer(messages)
        messages.append({"role": "assistant", "content": reply})
        print(reply, flush=True)
