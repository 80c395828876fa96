"""A schema fuzz of `geosteer serve`: requests drawn from its own /openapi.json, every answer checked against it.

For each operation the schema lists (GET /health, POST /search, GET
/image/{image_id}), hypothesis draws path and query parameters and JSON
bodies from the parameter and body schemas, and mutates them: values of
any JSON type, lone surrogates and any other code point in strings,
missing and unknown fields, raw bytes. Each answer must be

- never a 5xx, and a status the schema documents for the operation;
- JSON of strict UTF-8 that validates against the schema documented for
  that status (`validate`: the JSON Schema subset FastAPI writes), or, for
  a thumbnail, a PNG.

Hypothesis runs directly (schemathesis would bring a dozen packages for
what one page of strategies does here), derandomized and bounded in
examples, against the ASGI app through fastapi's TestClient (the same app
`geosteer serve` runs; the server's own limits are test_serve_hostile.py's).
About 20 s on a 2-core machine.
"""

from __future__ import annotations

import json
import re
import time
import urllib.parse
from typing import Any

import pytest

pytest.importorskip("fastapi", reason="geosteer serve needs the serve extra: pip install 'geosteer[serve]'")
pytest.importorskip("httpx", reason="fastapi's TestClient needs httpx (the serve extra)")
hypothesis = pytest.importorskip("hypothesis", reason="the fuzz needs hypothesis (the dev extra)")

from fastapi.testclient import TestClient  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from geosteer.commands import serve  # noqa: E402
from test_serve import build_geoshapes_index  # noqa: E402

EXAMPLES = 250  # per test; each is one request (a search: ~20-60 ms eager on 2 cores)
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large])
#: Every code point, lone surrogates (U+D800-U+DFFF, which JSON's \ud800 escapes make) drawn often on purpose
#: (hypothesis leaves them out by default and draws them rarely when allowed), plus plain words' letters.
ANY_CHAR = st.one_of(st.characters(codec=None, exclude_categories=()),
                     st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF, exclude_categories=()),
                     st.sampled_from("a red star blue circle "))
ANY_TEXT = st.text(ANY_CHAR, max_size=40)
#: Any JSON value; floats include NaN and +-inf, which json.dumps writes as the bare tokens NaN / Infinity that
#: Python's JSON parser (and so the service) accepts.
ANY_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2 ** 70), 2 ** 70) | st.floats() | ANY_TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(ANY_TEXT, inner, max_size=4),
    max_leaves=8,
)


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    from geosteer.encoders import load_clip

    encoder = load_clip("demo")
    index, _ = build_geoshapes_index(tmp_path_factory.mktemp("fuzz"), encoder, num_queries=2)
    app = serve.create_app(index, encoder, k_max=5, warm_up=False)
    with TestClient(app, base_url="http://localhost", raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="module")
def schema(client) -> dict:
    r = client.get("/openapi.json")
    assert r.status_code == 200
    return r.json()


# ------------------------------------------------------------ JSON Schema: values from it, checks against it


def resolve(schema: dict, root: dict) -> dict:
    while "$ref" in schema:
        node: Any = root
        for part in schema["$ref"].removeprefix("#/").split("/"):
            node = node[part]
        schema = node
    return schema


def from_schema(schema: dict, root: dict) -> st.SearchStrategy:
    """Values valid under `schema` (the subset FastAPI writes for request models and parameters)."""
    schema = resolve(schema, root)
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if "const" in schema:
        return st.just(schema["const"])
    if "anyOf" in schema:
        return st.one_of([from_schema(s, root) for s in schema["anyOf"]])
    kind = schema.get("type")
    if kind == "string":
        lo = schema.get("minLength", 0)
        return st.text(ANY_CHAR, min_size=lo, max_size=max(lo, min(schema.get("maxLength", 60), 60)))
    if kind == "integer":
        return st.integers(schema.get("minimum"), schema.get("maximum"))
    if kind == "number":
        return st.floats(schema.get("minimum"), schema.get("maximum"), allow_nan=False, allow_infinity=False)
    if kind == "boolean":
        return st.booleans()
    if kind == "array":
        return st.lists(from_schema(schema.get("items", {}), root), max_size=4)
    if kind == "object":
        props = schema.get("properties", {})
        required = set(schema.get("required", ()))
        return st.fixed_dictionaries({k: from_schema(v, root) for k, v in props.items() if k in required},
                                     optional={k: from_schema(v, root) for k, v in props.items() if k not in required})
    return ANY_JSON


def mutated(schema: dict, root: dict) -> st.SearchStrategy:
    """Valid values, valid objects with one field wrong / missing / unknown, and any JSON at all."""
    valid = from_schema(schema, root)
    schema = resolve(schema, root)
    choices = [valid, valid, ANY_JSON]
    if schema.get("type") == "object":
        props = list(schema.get("properties", {}))
        choices.append(st.tuples(valid, st.sampled_from(props), ANY_JSON).map(lambda t: {**t[0], t[1]: t[2]}))
        choices.append(st.tuples(valid, st.sampled_from(props)).map(lambda t: {k: v for k, v in t[0].items() if k != t[1]}))
        choices.append(st.tuples(valid, ANY_TEXT, ANY_JSON).map(lambda t: {**t[0], t[1]: t[2]}))
    return st.one_of(choices)


_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


def validate(value: Any, schema: dict, root: dict, where: str = "$") -> list[str]:
    """Where `value` breaks `schema` (empty: valid). The JSON Schema subset FastAPI and pydantic write."""
    schema = resolve(schema, root)
    if "anyOf" in schema:
        if all(validate(value, s, root, where) for s in schema["anyOf"]):
            return [f"{where}: {value!r:.80} matches none of anyOf"]
        return []
    errors = []
    kind = schema.get("type")
    if kind == "integer":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind == "number":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif kind in _TYPES:
        ok = isinstance(value, _TYPES[kind])
    else:
        ok = True
    if not ok:
        return [f"{where}: {value!r:.80} is not of type {kind}"]
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{where}: {value!r:.80} not in {schema['enum']}")
    if "const" in schema and value != schema["const"]:
        errors.append(f"{where}: {value!r:.80} != {schema['const']!r}")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        errors += [f"{where}: missing {k!r}" for k in schema.get("required", ()) if k not in value]
        extra = schema.get("additionalProperties", True)
        for k, v in value.items():
            if k in props:
                errors += validate(v, props[k], root, f"{where}.{k}")
            elif extra is False:
                errors.append(f"{where}: unexpected {k!r}")
            elif isinstance(extra, dict):
                errors += validate(v, extra, root, f"{where}.{k}")
    if isinstance(value, list) and "items" in schema:
        for i, v in enumerate(value):
            errors += validate(v, schema["items"], root, f"{where}[{i}]")
    return errors


def test_validate_catches_what_it_should():
    root = {"components": {"schemas": {"P": {"type": "object", "properties": {"x": {"type": "integer"}},
                                              "required": ["x"], "additionalProperties": False}}}}
    ref = {"$ref": "#/components/schemas/P"}
    assert validate({"x": 1}, ref, root) == []
    assert validate({"x": True}, ref, root) and validate({}, ref, root) and validate({"x": 1, "y": 2}, ref, root)
    assert validate([1, "a"], {"type": "array", "items": {"anyOf": [{"type": "integer"}, {"type": "null"}]}}, root)


# ------------------------------------------------------------ the operations


def operations(schema: dict) -> list[tuple[str, str, dict]]:
    return [(path, method, op) for path, ops in schema["paths"].items() for method, op in ops.items()]


def quote(text: str) -> str:
    """Percent-encoding of any str, lone surrogates as their 3 UTF-8-style bytes (what a raw client could send)."""
    return urllib.parse.quote(text.encode("utf-8", "surrogatepass"), safe="")


def requests(schema: dict) -> st.SearchStrategy:
    """(method, url, body bytes or None, the operation) drawn from every operation of the schema."""
    def for_op(path: str, method: str, op: dict) -> st.SearchStrategy:
        params = op.get("parameters", [])
        path_params = {p["name"]: st.one_of(from_schema(p["schema"], schema), ANY_TEXT,
                                            st.integers(-3, 12).map(str))
                       for p in params if p["in"] == "path"}
        query_params = {p["name"]: st.one_of(from_schema(p["schema"], schema), ANY_JSON)
                        for p in params if p["in"] == "query"}
        body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
        bodies = (st.one_of(mutated(body, schema).map(lambda b: json.dumps(b).encode()), st.binary(max_size=64))
                  if body else st.none())

        def build(path_values: dict, query_values: dict, payload: bytes | None) -> tuple:
            url = re.sub(r"\{(\w+)\}", lambda m: quote(str(path_values[m.group(1)])) or "x", path)
            if query_values:
                url += "?" + "&".join(f"{quote(k)}={quote(v if isinstance(v, str) else json.dumps(v))}"
                                      for k, v in query_values.items())
            return method.upper(), url, payload, op

        return st.builds(build, st.fixed_dictionaries(path_params),
                         st.fixed_dictionaries({}, optional=query_params), bodies)

    return st.one_of([for_op(*o) for o in operations(schema)])


def check(response, op: dict, where: str) -> None:
    """Never a 5xx; a documented status; a body that validates against its documented schema."""
    status = response.status_code
    assert status < 500, f"{where}: {status} {response.text[:300]}"
    documented = op["responses"]
    assert str(status) in documented, f"{where}: {status} is not one of {sorted(documented)}: {response.text[:300]}"
    ctype = response.headers.get("content-type", "")
    if ctype.startswith("image/png"):
        assert status == 200 and "image/png" in documented["200"].get("content", {})
        assert response.content.startswith(b"\x89PNG\r\n\x1a\n")
        return
    assert ctype.startswith("application/json"), f"{where}: {ctype}"
    body = json.loads(response.content.decode("utf-8"))  # strict: a lone surrogate would fail here
    spec = documented[str(status)].get("content", {}).get("application/json", {}).get("schema")
    if spec is not None:
        problems = validate(body, spec, SCHEMA_ROOT[0])
        assert not problems, f"{where}: {status} body breaks its schema: {problems[:5]}"


SCHEMA_ROOT: list[dict] = [{}]


def test_every_operation_documents_its_answers(schema):
    ops = {(p, m) for p, m, _ in operations(schema)}
    assert ops == {("/health", "get"), ("/search", "post"), ("/image/{image_id}", "get")}
    for _, _, op in operations(schema):
        assert not any(code.startswith("5") and code != "503" for code in op["responses"])
    assert {"200", "400", "413", "422", "503"} <= set(schema["paths"]["/search"]["post"]["responses"])


def test_fuzz_from_the_schema(client, schema):
    SCHEMA_ROOT[0] = schema
    t0 = time.monotonic()
    seen: dict[int, int] = {}

    @FUZZ
    @given(requests(schema))
    def one(request) -> None:
        method, url, payload, op = request
        r = client.request(method, url, content=payload,
                           headers={"content-type": "application/json"} if payload is not None else None)
        seen[r.status_code] = seen.get(r.status_code, 0) + 1
        check(r, op, f"{method} {url} {payload[:120] if payload else ''!r}")

    one()
    # the draws reached past validation too: answers, 422s and 404s all seen
    assert {200, 404, 422} <= set(seen), seen
    assert time.monotonic() - t0 < 120, "the fuzz must stay bounded in time"


@FUZZ
@given(body=st.dictionaries(st.sampled_from(["query", "k", "method"]), ANY_JSON, min_size=1)
       | st.fixed_dictionaries({"query": st.text(ANY_CHAR, min_size=1, max_size=serve.MAX_QUERY_CHARS)}))
def test_fuzz_search_bodies(client, schema, body):
    """The one body the service reads, harder: every field of any JSON type, queries of any code points."""
    SCHEMA_ROOT[0] = schema
    r = client.post("/search", content=json.dumps(body).encode(), headers={"content-type": "application/json"})
    check(r, schema["paths"]["/search"]["post"], f"POST /search {body!r:.200}")
