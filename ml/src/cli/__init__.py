"""The command line: one console command (`swiftbolt-ml`, ml.src.cli.main) over thin commands, one per job.

Each command module parses its flags, calls the core and turns the outcome into output and an exit code; the
core packages below never import from here (tests/test_import_graph.py). The `python -m` entry points of the
core modules hand over to these commands.
"""
