"""CLI subcommands, one module each (see swarmkern/cli.py)."""
