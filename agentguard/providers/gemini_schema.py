"""Tool parameters as Gemini accepts them: the OpenAPI 3.0 subset of its function declarations.

Gemini's function declarations take a `Schema` — "a select subset of an OpenAPI 3.0 schema
object" (https://ai.google.dev/api/caching#Schema) — and its OpenAI-compatible endpoint turns
a tool's `parameters` into one. A key outside that subset is not ignored: the whole request is
a 400 (`Invalid JSON payload received. Unknown name "$schema" at
'tools[0].function_declarations[0].parameters': Cannot find field.`), and so are
`additionalProperties`, `exclusiveMinimum`, `const`, `propertyNames`, `$ref`/`$defs`, `oneOf` …
Claude Code's own tool schemas carry `$schema`, `additionalProperties` and `exclusiveMinimum`
(tests/fixtures/claude-code-2.1.330-requests.json), so a fallback to Gemini would never be
served without this.

What can keep its meaning is rewritten (`type: ["string", "null"]` → `type` + `nullable`,
`const` → a one-value `enum`, `oneOf` → `anyOf`); the rest is removed and named, so the step's
`translation_dropped` event says which constraints the model did not see.
"""

from __future__ import annotations

from typing import Any

# The fields of Gemini's Schema (https://ai.google.dev/api/caching#Schema).
_KEPT = frozenset(
    {
        "type",
        "format",
        "title",
        "description",
        "nullable",
        "enum",
        "maxItems",
        "minItems",
        "properties",
        "required",
        "minProperties",
        "maxProperties",
        "minLength",
        "maxLength",
        "pattern",
        "example",
        "anyOf",
        "propertyOrdering",
        "default",
        "items",
        "minimum",
        "maximum",
    }
)
# The formats the Gemini Developer API takes; any other makes the request fail (Firebase AI
# Logic's Schema reference: for strings "this must be either 'enum' or 'date-time'").
_FORMATS = frozenset({"enum", "date-time", "float", "double", "int32", "int64"})


def clean(schema: Any) -> tuple[Any, list[str]]:
    """`schema` in Gemini's subset, and the JSON-Schema keys that had to go (sorted, once each)."""
    removed: set[str] = set()
    return _clean(schema, removed), sorted(removed)


def _clean(schema: Any, removed: set[str]) -> Any:
    if not isinstance(schema, dict):
        return schema
    schema = _rewritten(schema, removed)
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key not in _KEPT:
            removed.add(key)
        elif key == "properties" and isinstance(value, dict):
            out[key] = {name: _clean(sub, removed) for name, sub in value.items()}
        elif key == "items":
            # tuple validation (a list of schemas) has no Gemini form: the first one stands
            first = value[0] if isinstance(value, list) and value else value
            if isinstance(value, list):
                removed.add("items (a list)")
            out[key] = _clean(first, removed)
        elif key == "anyOf" and isinstance(value, list):
            out[key] = [_clean(sub, removed) for sub in value]
        elif key == "enum" and not all(isinstance(v, str) for v in value or []):
            removed.add("enum (not all strings)")  # Gemini's enum is a list of strings
        elif key == "format" and value not in _FORMATS:
            removed.add(f"format {value}")
        else:
            out[key] = value
    return out


def _rewritten(schema: dict[str, Any], removed: set[str]) -> dict[str, Any]:
    """The JSON-Schema spellings Gemini has another way to say."""
    schema = dict(schema)
    kind = schema.get("type")
    if isinstance(kind, list):
        kinds = [k for k in kind if k != "null"]
        if len(kinds) < len(kind):
            schema["nullable"] = True
        if len(kinds) == 1:
            schema["type"] = kinds[0]
        else:
            del schema["type"]
            if kinds:
                schema["anyOf"] = [{"type": k} for k in kinds]
    if "const" in schema:
        value = schema.pop("const")
        if isinstance(value, str) and "enum" not in schema:
            schema["enum"] = [value]
        else:
            removed.add("const")
    if "oneOf" in schema and "anyOf" not in schema:
        schema["anyOf"] = schema.pop("oneOf")  # any-of is the nearest Gemini has
    return schema
