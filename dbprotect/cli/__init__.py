"""The ``dbprotect`` command line: ``app`` holds the group and entry point, ``commands`` one module per domain."""
