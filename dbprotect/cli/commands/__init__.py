"""The ``dbprotect`` commands, one module per domain; :mod:`dbprotect.cli.app` adds them to the group."""
