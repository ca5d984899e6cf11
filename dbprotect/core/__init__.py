"""The rules of dbprotect, in plain Python: no Dagster import anywhere below this folder.

Dagster definitions (:mod:`dbprotect.defs`) and the CLI (:mod:`dbprotect.cli`) only call in here.
"""
