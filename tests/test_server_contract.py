"""The server's OpenAPI schema as a contract (schemathesis): for inputs generated from the schema, valid
and invalid, no request gets a 5xx, every status code, content type and JSON body is one the schema
declares, and invalid input is rejected with a 4xx.

Bounded and repeatable: 20 valid and 10 invalid examples per operation, derandomized, no example
database; the requests go to the app in-process (ASGI), never over a network. (Schemathesis's pytest
plugin, ``from_fixture``, does not run on this pytest, so the operations are listed here and a test
checks that the list covers the schema.)
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from scenegrep.server import create_app
from server_home import indexed_home

OPERATIONS = [
    ("GET", "/api/search"), ("POST", "/api/search/image"), ("GET", "/api/instances/{iid}"),
    ("GET", "/api/instances/{iid}/points"), ("GET", "/api/instances/{iid}/thumbnail"), ("GET", "/api/scans"),
    ("GET", "/api/scans/{name}/points"), ("GET", "/api/stats"), ("GET", "/healthz"),
]
#: operations without parameters have no invalid input to generate
WITHOUT_PARAMETERS = {("GET", "/api/scans"), ("GET", "/api/stats"), ("GET", "/healthz")}
EXAMPLES = {GenerationMode.POSITIVE: 20, GenerationMode.NEGATIVE: 10}
RUNS = [(m, p, GenerationMode.POSITIVE) for m, p in OPERATIONS] + [
    (m, p, GenerationMode.NEGATIVE) for m, p in OPERATIONS if (m, p) not in WITHOUT_PARAMETERS]
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory, synth_scans, tiny_clip_model):
    app = create_app(indexed_home(tmp_path_factory, synth_scans, tiny_clip_model))
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def test_the_list_covers_every_operation(api_schema):
    found = {(op.method.upper(), op.path) for op in (r.ok() for r in api_schema.get_all_operations())}
    assert found == set(OPERATIONS)


@pytest.mark.parametrize("method,path,mode", RUNS, ids=[f"{m} {p} {g.value}" for m, p, g in RUNS])
def test_api_contract(api_schema, method, path, mode):
    operation = api_schema[path][method]
    checks = CHECKS + ([negative_data_rejection] if mode is GenerationMode.NEGATIVE else [])

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES[mode], derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    def run(case):
        case.call_and_validate(checks=checks)

    run()
