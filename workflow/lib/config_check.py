"""Config files checked before the workflow plans anything: YAML syntax and the schema, each error one line with the
file and line it is on.

The Snakefile runs `check_syntax` on the embedded config before loading it and `check_schema` on the merged config
(files given with ``--configfile`` are read by Snakemake itself before the Snakefile runs; its message for a
syntax error there has no line, so run ``python workflow/lib/config_check.py FILE`` for the line).
Imports only PyYAML and jsonschema (Snakemake's own dependencies), not the brainatt package.
"""

from __future__ import annotations

import difflib
import sys
from pathlib import Path
from typing import Any

import jsonschema
import yaml


class ConfigError(Exception):
    """A config mistake: one line, ``FILE:LINE: key.path: what is wrong: what to do``."""


def check_syntax(path: str | Path) -> Any:
    """The parsed YAML of ``path``, or `ConfigError` naming the line and column of a syntax error."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the config file ({e}): check the path") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = " ".join(f"{getattr(e, 'context', '') or ''} {getattr(e, 'problem', '') or e}".split())
        raise ConfigError(f"{where}: YAML syntax error ({problem}): fix the line (or the one before it)") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the config must be a mapping of sections (dataset:, models:, …), not {data!r}")
    return data


def _find(node: yaml.Node | None, keys: list[Any]) -> tuple[yaml.Node | None, int]:
    """The node at ``keys`` under ``node`` (or the deepest one reached) and how many keys were matched."""
    depth = 0
    for key in keys:
        child = None
        if isinstance(node, yaml.MappingNode):
            child = next((v for k, v in node.value if getattr(k, "value", None) == str(key)), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            child = node.value[key]
        if child is None:
            break
        node, depth = child, depth + 1
    return node, depth


def _key_node(node: yaml.Node | None, key: str) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        return next((k for k, _ in node.value if getattr(k, "value", None) == key), None)
    return None


def _locate(files: list[Path], keys: list[Any], extra_key: str | None) -> str:
    """``FILE:LINE`` of the value at ``keys`` (or of its unknown key ``extra_key``) in the last file defining it."""
    for path in reversed(files):
        try:
            root = yaml.compose(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            continue
        node, depth = _find(root, keys)
        if extra_key is not None:
            node = _key_node(node, extra_key) if depth == len(keys) else None
        if node is None or depth < len(keys):
            continue
        return f"{path}:{node.start_mark.line + 1}"
    return "config (set by --config or a default)"


def check_schema(config: dict[str, Any], schema_path: str | Path, files: list[str | Path]) -> None:
    """`ConfigError` for the most relevant schema violation of ``config``, located in ``files`` (merged in order)."""
    schema = yaml.safe_load(Path(schema_path).read_text(encoding="utf-8"))
    errors = list(jsonschema.Draft202012Validator(schema).iter_errors(config))
    if not errors:
        return
    error = jsonschema.exceptions.best_match(errors)
    keys = list(error.absolute_path)
    extra_key, message, fix = None, error.message, "fix the value (schema: workflow/schemas/config.schema.yaml)"
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = list(error.schema.get("properties", {}))
        extras = [k for k in error.instance if k not in allowed]
        if extras:
            extra_key = extras[0]
            close = difflib.get_close_matches(str(extra_key), allowed, n=1, cutoff=0.6)
            message = f"unknown key {extra_key!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
            fix = f"the keys here are {', '.join(allowed)}"
    elif error.validator == "required":
        fix = "add it"
    name = ".".join(map(str, keys)) or "(top level)"
    where = _locate([Path(f) for f in files], keys, extra_key)
    raise ConfigError(f"{where}: {name}: {message}: {fix}")


def merge(base: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """``new`` merged into ``base`` section by section, as Snakemake merges config files."""
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = value
    return base


def main(argv: list[str]) -> int:
    """``python workflow/lib/config_check.py FILE…``: check config files alone (syntax, then the schema)."""
    schema = Path(__file__).resolve().parents[1] / "schemas/config.schema.yaml"
    try:
        merged: dict[str, Any] = {}
        for f in argv:
            merge(merged, check_syntax(f))
        check_schema(merged, schema, argv)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
