"""Schema validation of one compose file, errors named by file, key path and line."""

from __future__ import annotations

import functools
from typing import Any

import jsonschema
from jsonschema.exceptions import ValidationError, best_match

from shoal.swarmctl.compose.loader import ComposeError, ComposeFile, line_of
from shoal.swarmctl.compose.schema import IGNORED_NETWORK_KEYS, IGNORED_SERVICE_KEYS, SCHEMA

_TYPE_WORDS = {
    "integer": "an integer",
    "number": "a number",
    "string": "a string",
    "boolean": "true or false",
    "object": "a mapping",
    "array": "a list",
    "null": "nothing",
}


@functools.cache
def _validator() -> jsonschema.Draft202012Validator:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    return jsonschema.Draft202012Validator(SCHEMA)


def _describe(err: ValidationError) -> tuple[list[Any], str]:
    """The key path and a sentence for one schema error."""
    path = list(err.absolute_path)
    value = err.instance
    schema: Any = err.schema
    wanted: Any = err.validator_value
    if err.validator == "additionalProperties" and isinstance(value, dict):
        allowed = set(schema.get("properties", {}))
        extra = sorted(k for k in value if k not in allowed and not str(k).startswith("x-"))
        if extra:
            return [*path, extra[0]], f"unknown key {extra[0]!r}"
    if err.validator == "type":
        words = [_TYPE_WORDS.get(w, w) for w in ([wanted] if isinstance(wanted, str) else wanted)]
        return path, f"expected {' or '.join(words)}, got {value!r}"
    if err.validator == "enum":
        options = ", ".join(repr(v) for v in wanted)
        return path, f"{value!r} is not one of {options}"
    if err.validator == "required":
        return path, err.message.replace("is a required property", "is required")
    if err.validator == "pattern":
        return path, f"{value!r} is not valid here"
    if err.validator == "oneOf":
        return path, f"{value!r} has none of the accepted forms"
    return path, err.message


def validate(f: ComposeFile) -> None:
    """Raises ComposeError for the most relevant problem; records warnings on f."""
    errors = list(_validator().iter_errors(f.data))
    if errors:
        err = best_match(errors)
        path, message = _describe(err)
        raise ComposeError(f.path, path, line_of(f.data, path) or 1, message)
    _warn_ignored(f)


def _warn_ignored(f: ComposeFile) -> None:
    seen: set[str] = set()
    for name, svc in (f.data.get("services") or {}).items():
        for key in IGNORED_SERVICE_KEYS:
            if key in svc and key not in seen:
                seen.add(key)
                f.warnings.append(
                    f"{f.path}:{line_of(f.data, ['services', name, key])}: services.{name}.{key}: "
                    "ignored (as docker stack deploy does)"
                )
        deps = svc.get("depends_on")
        plain = isinstance(deps, list) or (
            isinstance(deps, dict)
            and any((d or {}).get("condition") != "service_healthy" for d in deps.values())
        )
        if plain and "depends_on" not in seen:
            seen.add("depends_on")
            f.warnings.append(
                f"{f.path}:{line_of(f.data, ['services', name, 'depends_on'])}: "
                f"services.{name}.depends_on: only `condition: service_healthy` orders the "
                "first deploy; other dependencies are ignored"
            )
    for name, net in (f.data.get("networks") or {}).items():
        for key in IGNORED_NETWORK_KEYS:
            if isinstance(net, dict) and key in net and key not in seen:
                seen.add(key)
                f.warnings.append(
                    f"{f.path}:{line_of(f.data, ['networks', name, key])}: networks.{name}.{key}: "
                    "ignored (every Shoal overlay network is attachable)"
                )
