"""``dbprotect demo``: a whole protected setup on one machine, from nothing (see :mod:`.setup`).

The package by concept: :mod:`.setup` runs the demo and writes its files, :mod:`.server` starts
and stops its embedded PostgreSQL, :mod:`.data` creates and fills its databases (the SQL and the
word lists are package data beside it), :mod:`.keys` creates its key files, :mod:`.paths` is the
layout of its work folder. Callers import from here.
"""

from dbprotect.demo.data import DEFAULT_ROWS, MIN_ROWS, PG_DATABASE, demo_rules_yaml, load_demo_data
from dbprotect.demo.paths import DemoPaths
from dbprotect.demo.server import stop_demo_server
from dbprotect.demo.setup import NEXT_COMMANDS, DemoResult, display_path, executable, run_demo

__all__ = [
    "DEFAULT_ROWS",
    "MIN_ROWS",
    "NEXT_COMMANDS",
    "PG_DATABASE",
    "DemoPaths",
    "DemoResult",
    "demo_rules_yaml",
    "display_path",
    "executable",
    "load_demo_data",
    "run_demo",
    "stop_demo_server",
]
