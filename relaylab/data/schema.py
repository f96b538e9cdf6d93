"""relaylab's JSON Schemas (the `schemas/` folder, installed as `relaylab.schemas`) turned into `Problem`s."""

from __future__ import annotations

import json
from functools import cache
from importlib.resources import files

import jsonschema

from ..errors import Problem


@cache
def load_schema(name: str) -> dict:
    """`name` is e.g. "project" for schemas/project.schema.json."""
    return json.loads(files("relaylab.schemas").joinpath(f"{name}.schema.json").read_text())


def json_key(path, prefix: str = "") -> str:
    """`project.dataset.type`, `attributions[1].name`: where in the document a problem is."""
    key = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in path).replace(".[", "[")
    return f"{prefix}.{key}" if prefix and key else prefix or key


def schema_problems(name: str, document: object, file: str, prefix: str = "") -> list[Problem]:
    """Every way `document` breaks schema `name`, each at its key, in document order."""
    validator = jsonschema.Draft202012Validator(load_schema(name))
    problems = []
    for error in sorted(validator.iter_errors(document), key=lambda e: list(map(str, e.absolute_path))):
        while error.context:  # a oneOf/anyOf failure: report the alternative that came closest, at its own key
            error = jsonschema.exceptions.best_match(error.context)
        problems.append(Problem(file, json_key(error.absolute_path, prefix), expectation(error), short_repr(error.instance)))
    return problems


def expectation(error: jsonschema.ValidationError) -> str:
    if error.validator == "enum":
        return "one of " + ", ".join(map(str, error.validator_value))
    if error.validator == "type":
        return f"a value of type {error.validator_value}"
    if error.validator == "required":
        return error.message.replace(" is a required property", " to be present")
    if error.validator == "additionalProperties":
        return "only known keys: " + error.message
    return error.message


def short_repr(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
