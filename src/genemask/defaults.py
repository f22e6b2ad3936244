"""Every default of the pipeline, read from its one home: the config schema's `default:` values.

`workflow/schemas/config.schema.yaml` gives each key that has a default a `default:`. This module
reads the schema once (YAML only: no torch, no numpy) and hands out those values; `plan.resolve`
writes them into the config, and the code's own tables are views of them (`pretrain.DEFAULTS`,
`finetune.DEFAULT_SETTINGS`, `make_masker`'s options), so the CLI without a config runs with the
same (the paper's) settings as the pipeline. A key whose default depends on other values (masking
`p` per scheme, `high_radius` = k - 1, `pretrain.seeds` = [settings.seed]) has no `default:`; its
description says what it is and where it is computed.

`check(value, path, where)` validates a part of a config (e.g. the fine-tuning settings given on the
command line) against the schema's rules for that part, with the same one-line errors as the config.
"""
from __future__ import annotations

import copy
import functools
from pathlib import Path

from .util import GeneMaskError

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"


@functools.lru_cache(maxsize=1)
def schema() -> dict:
    """The config schema (parsed once per process; callers must not modify it)."""
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        return yaml.load(SCHEMA.read_text(), Loader=loader) or {}
    except (OSError, yaml.YAMLError) as e:
        raise GeneMaskError(f"{SCHEMA}: cannot read the config schema ({e})") from None


def node(path: str) -> dict:
    """The schema of a key: "pretrain.settings" (nested `properties`), or "definitions.local_task"."""
    s = schema()
    parts = path.split(".")
    if parts[0] == "definitions":
        s, parts = s["definitions"][parts[1]], parts[2:]
    for p in parts:
        s = s["properties"][p]
    return s


def defaults(path: str) -> dict:
    """{key: default} of the keys of `path` (see `node`) whose schema has a `default:` (a fresh copy)."""
    return {k: copy.deepcopy(v["default"]) for k, v in node(path).get("properties", {}).items() if "default" in v}


def default(path: str):
    """The default of one key, e.g. default("corpus.k") -> 6 (KeyError if the schema gives none)."""
    parent, _, key = path.rpartition(".")
    return defaults(parent)[key]


def check(value, path: str, where: str, prefix: str = "key") -> None:
    """Validate `value` against the schema of `path`; the first error -> one line
    "{where}: {prefix} '{key}': {what is wrong}", key relative to `path`."""
    sub = {**node(path), "definitions": schema().get("definitions", {})}
    check_against(sub, value, where, prefix, top=path.rpartition(".")[2])


def check_against(rules: dict, value, where: str, prefix: str = "key", top: str = "(top level)") -> None:
    """The one formatter of schema errors: the first error of `value` against the schema `rules`
    (the least deep, then by key) -> one line "{where}: {prefix} '{key}': {what is wrong}"."""
    errors = sorted(validator_class()(rules).iter_errors(value),
                    key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if errors:
        e = errors[0]
        key = ".".join(str(p) for p in e.absolute_path) or top
        raise GeneMaskError(f"{where}: {prefix} '{key}': {short_message(e)}")


def _strict_integer(checker, x) -> bool:
    """JSON Schema counts 1.0 as an integer; the pipeline does not (a seed 1.0 reaches argparse
    `type=int` hours later): an integer key takes an int, never a float, never a bool."""
    return isinstance(x, int) and not isinstance(x, bool)


def anchored(pattern: str) -> str:
    """A schema `pattern` as Python must search it: a final `$` means the end of the string, as in
    JSON Schema's ECMA-262 regexes (Python's `$` also matches before a trailing newline, so 'abc\\n'
    would pass '^[a-z]+$' and become a path with a line break)."""
    return pattern[:-1] + r"\Z" if pattern.endswith("$") and not pattern.endswith(r"\$") else pattern


def _pattern(validator, pattern, instance, schema):
    import re

    from jsonschema.exceptions import ValidationError

    if validator.is_type(instance, "string") and not re.search(anchored(pattern), instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


@functools.lru_cache(maxsize=1)
def validator_class():
    import jsonschema

    base = jsonschema.Draft202012Validator
    return jsonschema.validators.extend(base, validators={"pattern": _pattern},
                                        type_checker=base.TYPE_CHECKER.redefine("integer", _strict_integer))


def short_message(e) -> str:
    if "propertyNames" in e.schema_path:  # a mapping's key (a name) is wrong, not its value
        return f"name {e.instance!r} is not allowed ({e.message.replace(repr(e.instance) + ' ', '')})"
    if e.validator == "additionalProperties":
        return e.message.replace("Additional properties are not allowed", "unknown key(s)")
    return e.message
