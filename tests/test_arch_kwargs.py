"""The one arch_kwargs codec: canonical_kwargs writes the model table's JSON, decode_kwargs reads
it back within the limits of untrusted JSON."""

from __future__ import annotations

import json

import pytest

from modelset.architectures import build_architecture, canonical_kwargs, decode_kwargs
from modelset.architectures._registry import MAX_ARCH_KWARGS_CHARS
from modelset.errors import SchemaError


def test_round_trip_is_canonical() -> None:
    kwargs = {"strides": (2, 2, 2), "num_classes": 5}
    text = canonical_kwargs(kwargs)
    assert text == '{"num_classes":5,"strides":[2,2,2]}'  # sorted keys, lists not tuples, no spaces
    assert decode_kwargs(text) == {"num_classes": 5, "strides": [2, 2, 2]}
    assert canonical_kwargs(decode_kwargs(text)) == canonical_kwargs(text) == text
    assert decode_kwargs(None) == decode_kwargs("") == {}
    given = {"num_classes": 3}
    copied = decode_kwargs(given)
    assert copied == given and copied is not given


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[1, 2]", "must be a JSON object"),
        ("{not json", "not valid JSON"),
        ("[" * 200 + "]" * 200, "nested more than"),
        (json.dumps({"channels": "x" * MAX_ARCH_KWARGS_CHARS}), "more than the limit"),
    ],
)
def test_untrusted_text_is_refused_by_name(text: str, message: str) -> None:
    with pytest.raises(SchemaError, match=rf"^arch_kwargs of m7.*{message}"):
        decode_kwargs(text, "arch_kwargs of m7")
    with pytest.raises(SchemaError, match=message):
        build_architecture("cnn3", text)
