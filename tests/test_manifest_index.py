"""The verifier reads manifest.json without a dict per version (decom/archive/manifest_index.py).
It must read exactly what json.loads reads, and refuse exactly what json.loads refuses."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from decom.archive.manifest_index import entries, split_versions

V1 = {"document_id": "d1", "version_id": "v1", "sha256": "a" * 64, "size": 3, "chunks": 1,
      "part": "content/part-000001.parquet"}
V2 = {"document_id": "d2", "version_id": "v2", "missing": True}

READABLE = [
    json.dumps({"format": "decom-archive", "versions": [V1, V2], "counts": {"versions": 2}}),
    json.dumps({"counts": {"versions": 2}, "versions": [V1, V2], "zeta": [1, {"versions": []}]}, indent=2),
    '  {"versions" : [ ] , "a" : 1 }\n',
    '{"versions": [{"document_id": "d\\"versions\\":[", "version_id": "x"}]}',
    '{"versions": [1, 2], "versions": [3]}',            # duplicate key: the last counts, as in json.loads
    '{"versions": [1, 2], "versions": "not a list"}',
    '{"versions": "not a list", "versions": [4]}',
    '{"versions": {"an": "object"}}',
    '{"files": []}',
    '{}',
]


@pytest.mark.parametrize("text", READABLE)
def test_it_reads_what_json_loads_reads(text: str) -> None:
    expected = json.loads(text)
    top, at = split_versions(text)
    if isinstance(expected.get("versions"), list):
        assert at is not None and text[at] == "["
        assert [item for item, _ in entries(text, at)] == expected.pop("versions")
    else:
        assert at is None
    assert top == expected


@pytest.mark.parametrize("text", ['{"versions": [1, 2}', '{"versions": [1 2]}', '{"a": 1} {"b": 2}', '{"a": 1,}',
                                  '{"a" 1}', '{1: 2}', '', '{"versions": ['])
def test_it_refuses_what_json_loads_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        json.loads(text)
    with pytest.raises(ValueError):
        split_versions(text)


@pytest.mark.parametrize("text", ['[{"versions": []}]', '"just a string"', "3"])
def test_json_that_is_not_an_object_is_refused(text: str) -> None:
    json.loads(text)
    with pytest.raises(ValueError):
        split_versions(text)


scalars = st.one_of(st.text(max_size=8), st.integers(-10**20, 10**20), st.booleans(), st.none(),
                    st.floats(allow_nan=False, allow_infinity=True))
objects = st.dictionaries(st.text(max_size=5), st.one_of(scalars, st.lists(scalars, max_size=2)), max_size=4)


@settings(max_examples=300, deadline=None)
@given(items=st.lists(st.one_of(objects, scalars), max_size=6), spaced=st.booleans(), cut=st.integers(0, 10_000),
       junk=st.sampled_from(["", ",", "]", "}", "{", '"', "\\", "\x01", " ", "0", "e", ":"]))
def test_it_matches_json_loads_on_generated_and_damaged_manifests(items: list, spaced: bool, cut: int,
                                                                   junk: str) -> None:
    """Whatever the entries hold, and wherever a character is replaced or inserted, split_versions
    accepts exactly what json.loads accepts and gives the same object (a damaged manifest is a
    finding, never a wrong reading)."""
    text = json.dumps({"a": 1, "versions": items, "z": [2]}, separators=(", ", ": ") if spaced else (",", ":"),
                      ensure_ascii=False)
    at = cut % (len(text) + 1)
    for candidate in (text, text[:at] + junk + text[at + 1:], text[:at] + junk + text[at:]):
        try:
            expected = json.loads(candidate)
        except ValueError:
            with pytest.raises(ValueError):
                split_versions(candidate)
            continue
        if not isinstance(expected, dict):
            continue
        top, start = split_versions(candidate)
        if isinstance(expected.get("versions"), list):
            assert start is not None and [item for item, _ in entries(candidate, start)] == expected.pop("versions")
        assert top == expected
