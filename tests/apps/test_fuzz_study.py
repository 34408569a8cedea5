"""The study API under random JSON (hypothesis): every answer is JSON, and none is a 500.

Bodies are random JSON documents (huge integers, NaN, lone surrogates, nesting), and documents shaped like the
real requests with random values in each field, so the fuzzing reaches the database code, not only pydantic.
Random Host headers are refused in plain text and change nothing, unless they name the server.
"""

from __future__ import annotations

import json
import sqlite3
import urllib.parse
from contextlib import closing
from pathlib import Path
from typing import Any, Iterator

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fashionsd_x.apps.study.create import create_study
from fashionsd_x.apps.study.db import CHOICES
from tests.apps.test_study_create import make_evaluation

CRITERIA = ("realism", "sketch", "text")
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Integers around SQLite's int64 edges, where binding overflows, as well as anywhere else.
integers = st.integers() | st.integers(2**63 - 3, 2**66) | st.integers(-2**66, -2**63 + 3)
scalars = st.none() | st.booleans() | integers | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=40)
documents = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                         | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=12)
codes = st.sampled_from(["ann", "Ann", "designer-07"]) | st.text(max_size=40) | documents
valid_answers = st.fixed_dictionaries({"code": st.sampled_from(["ann", "Ann"]), "comparison": st.integers(1, 30),
                                       "criterion": st.sampled_from(CRITERIA), "choice": st.sampled_from(CHOICES)})


def _mutated(valid: dict, field: str, value: Any, drop: bool) -> dict:
    """A request that is right but for one field: changed to `value`, or left out."""
    changed = {key: item for key, item in valid.items() if not (drop and key == field)}
    return changed if drop else {**changed, field: value}


# Mostly one field off a real answer (so the database code runs), sometimes any document at all.
answers = (st.builds(_mutated, valid_answers, st.sampled_from(["code", "comparison", "criterion", "choice"]),
                     integers | documents, st.booleans())
           | documents)
sessions = st.fixed_dictionaries({}, optional={"code": codes}) | documents


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("fuzz_study")
    return create_study(make_evaluation(folder), folder / "study.db", per_rater=4).out


@pytest.fixture(scope="module")
def client(study: Path) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    from fashionsd_x.apps.study.server import create_app

    # The server checks the Host header: the test client names 127.0.0.1, where the study is served by default.
    with TestClient(create_app(study), base_url="http://127.0.0.1") as test_client:
        assert test_client.post("/api/session", json={"code": "ann"}).status_code == 200  # a rater to answer as
        yield test_client


def assert_json_answer(response: Any) -> None:
    """Not a 500, and a JSON object: the answer, or {"error": one line}."""
    assert response.status_code < 500, response.text
    assert response.headers["content-type"].startswith("application/json"), response.headers
    reply = response.json()
    assert isinstance(reply, dict)
    if response.status_code >= 400:
        assert list(reply) == ["error"] and "\n" not in reply["error"]


def post(client: Any, path: str, document: Any) -> Any:
    # json.dumps writes NaN and Infinity (not JSON, but what a careless client sends) and escapes lone surrogates.
    return client.post(path, content=json.dumps(document), headers={"Content-Type": "application/json"})


@FUZZ
@given(body=sessions)
def test_session_answers_json(client, body):
    assert_json_answer(post(client, "/api/session", body))


@settings(FUZZ, max_examples=150)
@given(body=answers)
@example(body={"code": "ann", "comparison": 2**63, "criterion": "realism", "choice": "left"})  # found before
@example(body={"code": "ann", "comparison": -2**63 - 1, "criterion": "text", "choice": "tie"})
def test_answers_answer_json(client, body):
    response = post(client, "/api/answers", body)
    assert_json_answer(response)
    if response.status_code == 200:  # stored: the comparison was a JSON integer (true or 1.0 is not one)
        assert type(body["comparison"]) is int, body


@FUZZ
@given(raw=st.binary(max_size=200))
def test_any_bytes_as_a_body(client, raw):
    for path in ("/api/session", "/api/answers"):
        assert_json_answer(client.post(path, content=raw, headers={"Content-Type": "application/json"}))


@FUZZ
@given(image=st.integers() | st.text(min_size=1, max_size=30))
def test_image_ids(client, image):
    response = client.get("/images/" + urllib.parse.quote(str(image), safe=""))
    if response.status_code == 200:
        assert response.headers["content-type"] == "image/png"
    else:
        assert_json_answer(response)


def _raters(study: Path) -> int:
    with closing(sqlite3.connect(study)) as connection:
        return connection.execute("SELECT COUNT(*) FROM raters").fetchone()[0]


@FUZZ
@given(host=st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=60)
       | st.sampled_from(["127.0.0.1", "127.0.0.1:80", "localhost", "[::1]", "LOCALHOST", "127.0.0.1:81"]))
@example(host="127.0.0.1.evil.example")
def test_any_host_header(client, study, host):
    before = _raters(study)
    response = client.post("/api/session", json={"code": "fuzz-host"}, headers={"Host": host})
    allowed = host.lower() in ("127.0.0.1", "127.0.0.1:80", "localhost", "localhost:80", "[::1]", "[::1]:80")
    if allowed:
        assert_json_answer(response)
    else:
        assert response.status_code == 421 and response.headers["content-type"].startswith("text/plain")
        assert response.text.startswith("refused: ") and len(response.text.strip().splitlines()) == 1
        assert _raters(study) == before


def test_every_route_was_fuzzed(client):
    """The fuzzed paths are all the API has (a new route needs its fuzzer)."""
    routes = {route.path for route in client.app.routes}
    assert routes == {"/", "/api/study", "/api/session", "/api/answers", "/images/{image_id}"}
    assert_json_answer(client.get("/api/study"))
