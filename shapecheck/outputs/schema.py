"""The JSON Schema of a spec file, generated from the pydantic models (``shapecheck schema``).

Editors use it for completion and inline errors (the ``# yaml-language-server: $schema=…`` line),
and check-jsonschema for CI. It describes the form of a spec: keys, types, enums and ranges.
What needs the layers together (shapes, channel counts, unique names) is for ``shapecheck
check``. A copy ships as shapecheck.schema.json at the top of the repository; a test keeps it
equal to this output."""

from __future__ import annotations

import json
from typing import Any

from ..core.diagnostics import WARNING_CODES
from ..core.layers import KINDS
from ..core.layers.base import anycase

SCHEMA_ID = "https://shapecheck.invalid/shapecheck.schema.json"  # a name, never fetched


def _type_pattern(name: str) -> str:
    """`type` is the torch.nn class name in any case, with or without nn. / torch.nn."""
    return f"^\\s*((torch\\.)?nn\\.)?{anycase(name)}\\s*$"


def _layer_schema(name: str, kind) -> dict:
    schema = kind.model_json_schema()
    schema.pop("title", None)
    props = schema["properties"]
    props["type"] = {"type": "string", "pattern": _type_pattern(name),
                     "description": f"torch.nn.{kind.torch_class or kind.__name__}"}
    for key, value in props.items():
        value.pop("title", None)
        if key == "name":
            props[key] = {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$",
                          "description": "a Python identifier, unique in the spec"}
        elif key != "type":
            props[key] = with_expressions(value)
    props["from"] = FROM  # named inputs (graph.py): not a field of the model
    props["when"] = WHEN
    if kind.is_block:  # a block's fields hold layer lists: the schema recurses
        for key in kind.list_fields:
            props[key] = {**props[key], "items": {"$ref": "#/$defs/layer"}}
        if kind.lists_field:
            field = props[kind.lists_field]
            # a branch may be empty (the identity)
            props[kind.lists_field] = {**field, "items": {"type": "array",
                                                          "items": {"$ref": "#/$defs/layer"}}}
    # A layer is known by its type: `if` the type matches, `then` its fields apply. That gives
    # editors one clear error per layer instead of one per layer kind.
    return {"if": {"type": "object", "properties": {"type": {"pattern": _type_pattern(name)}},
                   "required": ["type"]},
            "then": schema}


IDENTIFIER = {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$"}
FROM = {"description": "the tensors the layer reads: an earlier layer's name, `input` or "
        "`prev`, or a list of them for add, mul and cat",
        "anyOf": [IDENTIFIER, {"type": "array", "items": IDENTIFIER, "minItems": 1}]}

# A string holding `$` is an expression (templates.py, expressions.py): `$width * 4` may stand
# wherever a number may, and `$shortcut` wherever a value may.
EXPRESSION = {"type": "string", "pattern": "\\$", "description": "an expression: $name, "
              "numbers, + - * / // % and parentheses"}
# `when:` on a layer, a use or a group of layers keeps it only where it is true.
WHEN = {"anyOf": [{"type": "boolean"}, EXPRESSION],
        "description": "keep it only where this is true: true, false, or an expression such as "
                       "\"$t != 1\""}
WHEN_GROUP = {
    "type": "object", "required": ["when", "layers"], "additionalProperties": False,
    "properties": {"when": WHEN, "layers": {"type": "array", "items": {"$ref": "#/$defs/layer"}}},
}


def with_expressions(schema: dict) -> dict:
    """``schema``, or an expression in its place (and in its items' places)."""
    if "anyOf" in schema:
        members = [with_expressions(m) for m in schema["anyOf"]]
        inner = [m for m in members if m is not EXPRESSION]
        flat = [x for m in inner for x in (m["anyOf"] if set(m) == {"anyOf"} else [m])]
        rest = {k: v for k, v in schema.items() if k != "anyOf"}
        return {**rest, "anyOf": [x for x in flat if x != EXPRESSION] + [EXPRESSION]}
    if schema.get("type") == "array" and isinstance(schema.get("items"), dict) \
            and "$ref" not in schema["items"]:
        schema = {**schema, "items": with_expressions(schema["items"])}
    if schema.get("type") in ("integer", "number", "boolean", "array") or "enum" in schema:
        return {"anyOf": [schema, EXPRESSION]}
    return schema


# A layer entry that uses a template: its parameters are the template's, so any other key goes.
TEMPLATE_USE = {
    "type": "object",
    "required": ["use"],
    "properties": {
        "use": {"type": "string", "description": "the name of a template under `templates`"},
        "name": {"anyOf": [{"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
                           EXPRESSION]},
        "repeat": {"anyOf": [{"type": "integer", "minimum": 1}, EXPRESSION]},
        "first": {"type": "object", "description": "parameters for the first repetition"},
        "when": WHEN,
    },
}


def _bare_names() -> list[str]:
    """Types with no required field, which a bare string may name (`- relu`)."""
    return [name for name, kind in KINDS.items()
            if not [k for k in kind.model_json_schema().get("required", []) if k != "type"]]


def spec_schema() -> dict[str, Any]:
    from ..core.spec import InputSpec
    from ..core.trainspec import TrainSpec

    names = "|".join(anycase(n) for n in KINDS)
    bare = "|".join(anycase(n) for n in _bare_names())
    objects = {"type": "object", "required": ["type"],
               "properties": {"type": {"type": "string",
                                       "pattern": f"^\\s*((torch\\.)?nn\\.)?({names})\\s*$"}},
               "allOf": [_layer_schema(n, k) for n, k in KINDS.items()]}
    layer = {
        "description": "a layer: a mapping with its torch.nn type and fields, or the bare "
                       "name of a type without required fields",
        # if/then/else rather than anyOf, so that a validator names the field that is wrong
        "if": {"type": "string"},
        "then": {"pattern": f"^\\s*((torch\\.)?nn\\.)?({bare})\\s*$"},
        "else": {"if": {"type": "object", "anyOf": [
                     {"required": ["use"]}, {"required": ["layers"], "not": {"required": ["type"]}}]},
                 "then": {"if": {"required": ["use"]}, "then": TEMPLATE_USE, "else": WHEN_GROUP},
                 "else": objects},
    }
    input_schema = InputSpec.model_json_schema()
    train_schema = TrainSpec.model_json_schema()
    defs = {**train_schema.pop("$defs", {})}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "shapecheck spec",
        "description": "A CNN described layer by layer, for shapecheck "
                       "(plan, check, render, build).",
        "type": "object",
        "required": ["input", "layers"],
        "additionalProperties": False,
        "patternProperties": {"^x-": {"description": "ignored: a place for YAML anchors"}},
        "properties": {
            "name": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
            "description": {"type": "string"},
            "input": _untitled(input_schema),
            "layers": {"$ref": "#/$defs/layers"},
            "train": _untitled(train_schema),
            "templates": {"type": "object", "description": "named layers or layer lists with "
                          "parameters, used by `use:` entries",
                          "additionalProperties": {"type": "object"}},
            "scales": {"type": "object", "description": "named sets of variables for "
                       "expressions; --scale NAME picks one",
                       "additionalProperties": {"type": "object"}},
            "default_scale": {"type": "string"},
            "outputs": {"type": "array", "minItems": 1, "items": IDENTIFIER,
                        "description": "the layers whose tensors the network returns "
                        "(default: the last)"},
            "ignore": {"type": "array", "description": "warning codes the spec accepts: not "
                       "reported, no failure under --strict",
                       "items": {"enum": list(WARNING_CODES)}},
        },
        "$defs": {
            "layers": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/layer"}},
            "layer": layer,
            **{k: _untitled(v) for k, v in defs.items()},
        },
    }


def _untitled(schema: Any) -> Any:
    """The schema without pydantic's generated titles ("Out Channels"), which editors would
    show instead of the key."""
    if isinstance(schema, dict):
        return {k: _untitled(v) for k, v in schema.items() if k != "title"}
    if isinstance(schema, list):
        return [_untitled(v) for v in schema]
    return schema


def schema_text() -> str:
    return json.dumps(spec_schema(), indent=2, ensure_ascii=False) + "\n"
