"""CLI subcommands, one module each.

Every module here defines `NAME: str`, `HELP: str`, `add_arguments(parser)` and
`run(args) -> int`; `mansu_audit.cli` discovers them, so adding a command never
edits another module. Commands stay thin: parse, call the Python API, print.
"""
