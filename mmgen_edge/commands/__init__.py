"""The ``mmgen-edge`` subcommands, one module each (see ``mmgen_edge.cli.COMMANDS``)."""
