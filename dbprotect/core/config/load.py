"""Reading ``dbprotect.yaml``: where it is, parsing it, and errors that name file, key and reason.

Where it is: the explicit path, else ``$DBPROTECT_CONFIG``, else ``./dbprotect.yaml``.
``$DBPROTECT_DEPLOYMENT`` overrides the file's ``deployment:`` (one file, several deployments).
Invalid configuration raises :class:`~dbprotect.core.errors.ConfigError` with one sentence:
``<file>: <key>: <reason>``, in the words a person wrote the file in (``storage.x.path``, not
pydantic's ``storage.x.filesystem.path``).
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from pydantic import ValidationError

from dbprotect.core.config.model import Config
from dbprotect.core.errors import ConfigError

CONFIG_ENV = "DBPROTECT_CONFIG"
DEPLOYMENT_ENV = "DBPROTECT_DEPLOYMENT"
DEFAULT_CONFIG_FILE = "dbprotect.yaml"


def config_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The configuration file to read: explicit argument, ``$DBPROTECT_CONFIG``, ./dbprotect.yaml."""
    if explicit:
        return Path(explicit)
    return Path(os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_FILE)


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Read and validate the configuration; raise :class:`ConfigError` naming file, key and reason."""
    file = config_path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{file}: configuration file not found",
            hint=f"create it, point {CONFIG_ENV} at it, or run 'dbprotect demo' for a working example",
        ) from None
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read configuration: {exc.strerror}") from None
    return parse_config(text, source=str(file))


def parse_config(text: str, *, source: str = "<memory>") -> Config:
    """Validate configuration text; ``source`` names it in errors (and anchors relative paths)."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{source}: not valid YAML{where}: {problem}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of keys (deployment, databases, ...)")
    override = os.environ.get(DEPLOYMENT_ENV)
    if override:
        raw = {**raw, "deployment": override}
    try:
        return Config.model_validate({**raw, "source": source})
    except ValidationError as exc:
        raise ConfigError(_describe_validation_error(source, exc)) from None


def _describe_validation_error(source: str, exc: ValidationError) -> str:
    """The first problem as ``<source>: <key>: <reason>``, and how many more there are."""
    problems = []
    for error in exc.errors():
        loc = _drop_union_tags(".".join(str(part) for part in error["loc"]))
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        elif error["type"] == "missing":
            message = "required key is missing"
        problems.append(f"{loc}: {message}" if loc else message)  # model checks name their own keys
    first = problems[0]
    more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
    return f"{source}: {first}{more}"


def _drop_union_tags(loc: str) -> str:
    """Pydantic names the union branch (``storage.x.filesystem.path``); users wrote ``storage.x.path``."""
    for tag in (".filesystem", ".s3"):
        loc = loc.replace(tag + ".", ".")
    return loc


def config_file(config: Config) -> str:
    """Where ``config`` was read from, as an absolute path (``<memory>`` when it was not read from a file).

    Absolute so that a process started elsewhere (a Dagster run) reads the same file.
    """
    return str(Path(config.source).resolve()) if config.source != "<memory>" else config.source


__all__ = ["CONFIG_ENV", "DEFAULT_CONFIG_FILE", "DEPLOYMENT_ENV", "config_file", "config_path", "load_config",
           "parse_config"]
