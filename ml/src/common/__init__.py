"""Plumbing every layer may use: command-line parsing, exit codes, stop requests, logging, the NYSE calendar."""
