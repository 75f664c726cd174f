"""The `kerasgemma` subcommands: each module parses its flags and calls the library.

Commands sit above the library: they import `kerasgemma`'s modules, never the
other way round. Each module has `add_parser(subparsers)`, which registers
its subcommand(s) and sets each one's handler (`args.run(args) -> exit code`).
"""
