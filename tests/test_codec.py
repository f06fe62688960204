"""The vocabulary codec against the vocabulary: every message class, its fields, its bytes.

These tests do not list message classes by hand: they walk `josefine.messages`, so a class
or a field added there is covered (or the test says what to teach it) without editing here.
"""
from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import tracemalloc
import types
import typing
from pathlib import Path
from typing import Any

import pytest

from josefine import codec, messages
from josefine.chain.block import Block, BlockKind, genesis, make_block
from josefine.codec import (
    CodecError,
    decode_message,
    encode_message,
    read_record,
    unpackb,
    wire_fields,
    write_record,
)
from josefine.messages import LOCAL_MESSAGE_TYPES, WIRE_MESSAGE_TYPES, Status
from josefine.types import BlockId

pytestmark = pytest.mark.timeout(60)

PACKAGE = Path(codec.__file__).parent


def _vocabulary() -> list[type]:
    return [cls for _, cls in inspect.getmembers(messages, inspect.isclass)
            if cls.__module__ == messages.__name__ and dataclasses.is_dataclass(cls)]


def _registered() -> list[type]:
    return list(codec.TAGS.values())


# --------------------------------------------------------------------- sample instances

_G = genesis("test-codec")
_B1 = make_block(_G, 2, BlockKind.NOOP, b"")
_B2 = make_block(_B1, 2, BlockKind.NORMAL, b"\x00payload")


def _sample(tp: Any, n: int) -> Any:
    """A value of declared type `tp` that is never a field default (so a field the encoder
    drops cannot come back equal by luck); `n` makes ints differ between fields."""
    if tp is int:
        return 1000 + n
    if tp is bool:
        return True      # every bool default in the vocabulary is False
    if tp is bytes:
        return b"\x00\xffbytes"
    if tp is str:
        return f"text-\u00e9-{n}"
    if tp is Any:
        return {"nested": [1, b"x", None, "s"], "n": n}
    if tp is BlockId:
        return BlockId(2, 1000 + n)
    if tp is Status:
        return Status.BUSY
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is dict or tp is dict:
        return {"key": [n, b"v"], "m": {"deep": True}}
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        (inner,) = [a for a in args if a is not type(None)]
        return _sample(inner, n)
    if origin is tuple and args == (Block, Ellipsis):
        return (_B1, _B2)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return (_sample(args[0], n), _sample(args[0], n + 1))
    if origin is tuple:
        return tuple(_sample(a, n + i) for i, a in enumerate(args))
    raise AssertionError(f"teach tests/test_codec.py::_sample about {tp!r}")


def full_instance(cls: type) -> Any:
    hints = typing.get_type_hints(cls)
    return cls(**{f.name: _sample(hints[f.name], i)
                  for i, f in enumerate(dataclasses.fields(cls))})


def minimal_instance(cls: type) -> Any:
    hints = typing.get_type_hints(cls)
    return cls(**{f.name: _sample(hints[f.name], i)
                  for i, f in enumerate(dataclasses.fields(cls))
                  if f.default is dataclasses.MISSING
                  and f.default_factory is dataclasses.MISSING})


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def assert_same_shape(got: Any, want: Any, where: str) -> None:
    """Equal is not enough: BlockId(1, 2) == (1, 2) and Status.OK == 0, so compare types too."""
    assert type(got) is type(want), f"{where}: {type(got).__name__} != {type(want).__name__}"
    if isinstance(want, (tuple, list)):
        assert len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            assert_same_shape(g, w, f"{where}[{i}]")
    elif isinstance(want, dict):
        assert got.keys() == want.keys(), where
        for k in want:
            assert_same_shape(got[k], want[k], f"{where}[{k!r}]")
    elif dataclasses.is_dataclass(want):
        for f in dataclasses.fields(want):
            assert_same_shape(getattr(got, f.name), getattr(want, f.name), f"{where}.{f.name}")
    else:
        assert got == want, where


# ---------------------------------------------------------------------------- the tests


def test_every_message_class_is_declared_wire_or_local_and_every_wire_one_has_a_tag():
    vocabulary = _vocabulary()
    assert len(vocabulary) >= len(WIRE_MESSAGE_TYPES) + len(LOCAL_MESSAGE_TYPES) > 20
    for cls in vocabulary:
        kinds = (cls in WIRE_MESSAGE_TYPES) + (cls in LOCAL_MESSAGE_TYPES)
        assert kinds == 1, f"{cls.__name__}: list it in exactly one of WIRE_/LOCAL_MESSAGE_TYPES"
    assert sorted(_registered(), key=str) == sorted(WIRE_MESSAGE_TYPES, key=str)
    assert len(set(codec.TAGS.values())) == len(codec.TAGS)


@pytest.mark.parametrize("cls", _registered(), ids=lambda c: c.__name__)
def test_wire_field_list_is_the_dataclass_field_list(cls):
    names = tuple(f.name for f in dataclasses.fields(cls))
    assert wire_fields(cls) == names
    # ... and what actually goes out (fast paths included) carries exactly those keys.
    tag, body = unpackb(encode_message(full_instance(cls)))
    assert tag == codec.tag_of(cls)
    assert sorted(body) == sorted(names)


@pytest.mark.parametrize("cls", _registered(), ids=lambda c: c.__name__)
def test_every_registered_message_round_trips_with_every_field_set(cls):
    msg = full_instance(cls)
    for f in dataclasses.fields(cls):
        assert getattr(msg, f.name) != _default(f), f"{cls.__name__}.{f.name} sample is default"
    back = decode_message(encode_message(msg))
    assert back == msg
    assert_same_shape(back, msg, cls.__name__)


@pytest.mark.parametrize("cls", _registered(), ids=lambda c: c.__name__)
def test_every_registered_message_round_trips_with_defaults_left_out(cls):
    msg = minimal_instance(cls)
    back = decode_message(encode_message(msg))
    assert_same_shape(back, msg, cls.__name__)


@pytest.mark.parametrize("cls", LOCAL_MESSAGE_TYPES, ids=lambda c: c.__name__)
def test_local_messages_never_encode(cls):
    fields = {f.name: None for f in dataclasses.fields(cls)}
    with pytest.raises(CodecError):
        encode_message(cls(**fields))


def test_a_field_type_the_codec_cannot_check_is_refused():
    with pytest.raises(TypeError, match="cannot check"):
        codec._validator(float)
    with pytest.raises(TypeError, match="cannot check"):
        codec._validator(list[int])


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_chain_and_fsm_do_not_import_the_transport():
    """Storage and state machines sit below the transport: they use josefine.codec."""
    files = sorted((PACKAGE / "chain").glob("*.py")) + sorted((PACKAGE / "fsm").glob("*.py"))
    assert len(files) >= 8
    for path in files:
        bad = {m for m in _imports(path)
               if m.split(".")[:2] in (["josefine", "transport"], ["josefine", "actors"])}
        assert not bad, f"{path.relative_to(PACKAGE.parent)} imports {sorted(bad)}"


def test_only_the_vocabulary_codec_imports_msgpack():
    importers = {str(p.relative_to(PACKAGE.parent)) for p in PACKAGE.rglob("*.py")
                 if "msgpack" in {m.split(".")[0] for m in _imports(p)}}
    assert importers == {"josefine/codec.py"}


# ------------------------------------------------------------------------ stream records


def test_records_follow_each_other_in_one_stream():
    buf = io.BytesIO()
    objs = [["head", 1, 3], ["k", b"\x00v"], {"a": [1, None, 2.5]}, []]
    sizes = [write_record(buf, o) for o in objs]
    assert sum(sizes) == len(buf.getvalue())
    buf.write(b"tail")
    buf.seek(0)
    assert [read_record(buf) for _ in objs] == objs
    assert buf.read() == b"tail"   # each read took exactly its record


def test_a_stream_cut_anywhere_is_malformed():
    buf = io.BytesIO()
    write_record(buf, ["first", 1])
    write_record(buf, ["second", b"x" * 20])
    data = buf.getvalue()
    for cut in range(len(data)):
        inp = io.BytesIO(data[:cut])
        with pytest.raises(CodecError) as exc:
            read_record(inp)
            read_record(inp)
        assert exc.value.reason == "malformed"


@pytest.mark.parametrize("body", [b"\xc1", b"\x91", b"\x90\x90", b"\xd4\x05\x00"])
def test_a_record_body_that_is_not_one_plain_value_is_malformed(body):
    # invalid byte, short array, two values, extension type
    inp = io.BytesIO(len(body).to_bytes(4, "big") + body)
    with pytest.raises(CodecError) as exc:
        read_record(inp)
    assert exc.value.reason == "malformed"


def test_an_oversized_length_is_refused_before_reading_it():
    inp = io.BytesIO((codec.MAX_RECORD_BYTES + 1).to_bytes(4, "big") + b"\x90")
    with pytest.raises(CodecError) as exc:
        read_record(inp)
    assert exc.value.reason == "oversized"
    small = io.BytesIO()
    write_record(small, "x" * 100)
    small.seek(0)
    with pytest.raises(CodecError):
        read_record(small, max_bytes=50)


def test_a_length_that_promises_more_than_the_file_holds_costs_only_the_file(tmp_path):
    """A corrupt prefix must not make the reader allocate what it claims: a buffered file's
    read(n) reserves n bytes before it finds the file shorter."""
    path = tmp_path / "short"
    path.write_bytes((200 * 1024 * 1024).to_bytes(4, "big") + b"\x90" * 10)
    with open(path, "rb") as inp:
        tracemalloc.start()
        try:
            with pytest.raises(CodecError):
                read_record(inp)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peak < 4 * 1024 * 1024


def test_an_unencodable_record_writes_nothing():
    buf = io.BytesIO()
    with pytest.raises(CodecError):
        write_record(buf, {"x": object()})
    assert buf.getvalue() == b""
