"""The store's and the admin API's JSON: compact, UTF-8, and whatever orjson refuses through
the standard library."""

from __future__ import annotations

import json

import pytest

from lbcore.runtime import jsontext


def test_compact_utf8_text_that_reads_back_the_same() -> None:
    value = {"metadata": {"name": "p", "annotations": {"note": "café ☕"}}, "n": [1, 2.5, None,
                                                                                  True]}
    text = jsontext.dumps(value)
    assert text == json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    assert jsontext.dumps_bytes(value) == text.encode()
    assert jsontext.loads(text) == value == jsontext.loads(text.encode())
    # text written with escapes (by json.dumps) reads the same
    assert jsontext.loads(json.dumps(value)) == value


def test_what_orjson_refuses_goes_through_the_standard_library() -> None:
    big = {"n": 2**70, 1: "int key"}
    text = jsontext.dumps(big)
    assert text == '{"n":1180591620717411303424,"1":"int key"}'
    assert jsontext.loads(text) == {"n": 2**70, "1": "int key"}


def test_text_that_is_not_json_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        jsontext.loads("{not json")
