"""The `agentguard` subcommands, one module each.

A command module has NAME, SUMMARY (one line), EPILOG (examples), `add_arguments(parser)` and
`run(ctx, args) -> int`; `agentguard.cli` lists them in COMMANDS.
"""
