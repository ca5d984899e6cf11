"""dbprotect: verified, encrypted PostgreSQL backups orchestrated by Dagster."""

__version__ = "0.1.0"
__all__ = ["__version__"]
