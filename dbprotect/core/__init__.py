"""The rules of dbprotect, in plain Python: no Dagster import anywhere below this folder.

Dagster definitions (:mod:`dbprotect.defs`) and the CLI (:mod:`dbprotect.cli.app`) only call in here.
"""
