"""Decode the logical replication messages of ``pgoutput``, protocol version 1.

Each XLogData payload of the replication stream holds exactly one message; ``decode`` turns it
into one frozen dataclass. The decoder is pure (no I/O, no catalog): column values stay the
text the server's output functions produced, and ``Insert`` and friends name their table only
by the OID that an earlier ``Relation`` message described.

>>> decode(bytes.fromhex("49 00004001 4e 0002 74 00000001 31 6e"))
Insert(relation_oid=16385, new=('1', None))

Protocol reference: https://www.postgresql.org/docs/current/protocol-logicalrep-message-formats.html

Names and values are decoded as UTF-8: the walsender converts them to the replication
connection's client encoding, and ``walstream.replication`` connects with UTF8.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable
from dataclasses import dataclass

from dvm.errors import PgTrickleError


class PgOutputError(PgTrickleError, code="PGT209"):
    """A payload is not a well-formed pgoutput protocol 1 message."""


class UnchangedToast(enum.Enum):
    """The type of ``UNCHANGED_TOAST``; a one-member enum so that mypy narrows ``is`` tests."""

    UNCHANGED_TOAST = "u"

    def __repr__(self) -> str:
        return "UNCHANGED_TOAST"


#: A column of an UPDATE's new tuple whose out-of-line (TOAST) value did not change: the server
#: does not read it back from the TOAST table, so the value is simply not in the stream.
UNCHANGED_TOAST = UnchangedToast.UNCHANGED_TOAST

#: One row: text values, ``None`` for SQL NULL, ``UNCHANGED_TOAST`` for a value not sent.
TupleData = tuple[str | UnchangedToast | None, ...]


@dataclass(frozen=True, slots=True)
class Begin:
    """The start of a transaction; ``final_lsn`` is the LSN of its commit record."""

    final_lsn: int
    commit_time: int  # microseconds since 2000-01-01 00:00 UTC, as sent
    xid: int


@dataclass(frozen=True, slots=True)
class Commit:
    flags: int  # always 0 in protocol 1
    commit_lsn: int
    end_lsn: int  # the end of the commit record: the position to confirm once it is applied
    commit_time: int


@dataclass(frozen=True, slots=True)
class Origin:
    """The replication origin a transaction was replayed from (sent after ``Begin``)."""

    commit_lsn: int  # the commit's LSN on the origin server
    name: str


@dataclass(frozen=True, slots=True)
class RelationColumn:
    is_key: bool  # part of the replica identity (the primary key, or every column with FULL)
    name: str
    type_oid: int
    type_modifier: int  # -1 when the type has none; e.g. varchar(20) sends 24


@dataclass(frozen=True, slots=True)
class Relation:
    """The shape of a table, sent before its first change in a session and after every ALTER."""

    oid: int
    namespace: str  # "" stands for pg_catalog
    name: str
    replica_identity: str  # 'd' default, 'n' nothing, 'f' full, 'i' index
    columns: tuple[RelationColumn, ...]


@dataclass(frozen=True, slots=True)
class TypeMessage:
    """The name of a user-defined type (``Y``), sent before a Relation that uses it."""

    oid: int
    namespace: str
    name: str


@dataclass(frozen=True, slots=True)
class Insert:
    relation_oid: int
    new: TupleData


@dataclass(frozen=True, slots=True)
class Update:
    """``old`` is the whole old row (REPLICA IDENTITY FULL); ``key`` only the identity columns,
    sent when they changed; both are None when the identity did not change."""

    relation_oid: int
    old: TupleData | None
    key: TupleData | None
    new: TupleData


@dataclass(frozen=True, slots=True)
class Delete:
    """Exactly one of ``old`` (REPLICA IDENTITY FULL) and ``key`` is set."""

    relation_oid: int
    old: TupleData | None
    key: TupleData | None


@dataclass(frozen=True, slots=True)
class Truncate:
    relation_oids: tuple[int, ...]
    cascade: bool
    restart_identity: bool


@dataclass(frozen=True, slots=True)
class LogicalMessage:
    """A ``pg_logical_emit_message`` record; non-transactional ones arrive outside any
    Begin/Commit, as soon as they are decoded."""

    transactional: bool
    lsn: int
    prefix: str
    content: bytes


Message = (
    Begin
    | Commit
    | Origin
    | Relation
    | TypeMessage
    | Insert
    | Update
    | Delete
    | Truncate
    | LogicalMessage
)

# Every layout below includes the leading type byte ("x") so that it unpacks from offset 0.
_BEGIN = struct.Struct(">xQqI")
_COMMIT = struct.Struct(">xBQQq")
_ORIGIN_LSN = struct.Struct(">xQ")
_OID_HEAD = struct.Struct(">xI")  # Relation, Type, Insert, Update and Delete start alike
_OID_KIND = struct.Struct(">xIc")  # ... and the three row messages follow with a tuple kind
_TRUNCATE_HEAD = struct.Struct(">xIB")
_MESSAGE_HEAD = struct.Struct(">xBQ")
_U16 = struct.Struct(">H")
_I32 = struct.Struct(">i")
_COLUMN = struct.Struct(">Ii")  # type OID, type modifier
_TRUNCATE_CASCADE = 1
_TRUNCATE_RESTART_IDENTITY = 2

# A frozen dataclass's __init__ assigns each field through object.__setattr__, which costs
# 0.3 µs of the 1.7 µs an Insert of three columns takes to decode. The hot path fills the slots
# through their descriptors instead: same object, no frozen check to get past.
_new_object = object.__new__
_set_insert_oid = Insert.__dict__["relation_oid"].__set__
_set_insert_new = Insert.__dict__["new"].__set__


def decode(payload: bytes) -> Message:
    """Decode one pgoutput message; raise ``PgOutputError`` if it is malformed or unknown.

    >>> decode(bytes.fromhex("42 0000000016B374D8 0002C8F3A7E1B2C0 000002E8"))
    Begin(final_lsn=380859608, commit_time=783898772615872, xid=744)
    """
    if not payload:
        raise PgOutputError("empty pgoutput message")
    kind = payload[0]
    # struct.error, IndexError and ValueError (UnicodeDecodeError among them) all mean that
    # the payload ended early or holds garbage; the try costs nothing when nothing is raised.
    try:
        if kind == 0x49:  # 'I', the most frequent message by far, is decoded inline
            oid, tuple_kind = _OID_KIND.unpack_from(payload)
            if tuple_kind != b"N":
                raise _malformed(payload, f"tuple kind {tuple_kind!r} at offset 5, expected 'N'")
            new, end = _tuple(payload, _OID_KIND.size)
            message: Message = _new_object(Insert)
            _set_insert_oid(message, oid)
            _set_insert_new(message, new)
        else:
            decoder = _DECODERS.get(kind)
            if decoder is None:
                raise PgOutputError(
                    "unknown pgoutput message type",
                    detail=f"type byte {bytes([kind])!r} at offset 0 of a {len(payload)}-byte"
                    " message",
                )
            message, end = decoder(payload)
    except (struct.error, IndexError, ValueError) as error:
        raise _malformed(payload, str(error)) from None
    if end != len(payload):
        raise _malformed(payload, f"it ends at offset {end} of a {len(payload)}-byte payload")
    return message


def _malformed(buf: bytes, detail: str) -> PgOutputError:
    return PgOutputError(
        f"malformed pgoutput {chr(buf[0])!r} message ({len(buf)} bytes)", detail=detail
    )


def _cstring(buf: bytes, offset: int) -> tuple[str, int]:
    end = buf.index(0, offset)  # ValueError when the terminator is missing
    return buf[offset:end].decode(), end + 1


def _tuple(buf: bytes, offset: int) -> tuple[TupleData, int]:
    # The one loop of the hot path, once per column value: byte literals rather than named
    # constants and a preallocated list are each worth a few percent here.
    count = (buf[offset] << 8) | buf[offset + 1]
    offset += 2
    unpack_length = _I32.unpack_from
    values: list[str | UnchangedToast | None] = [None] * count
    for index in range(count):
        kind = buf[offset]
        if kind == 0x74:  # 't': Int32 length, then the text
            start = offset + 5
            offset = start + unpack_length(buf, offset + 1)[0]
            values[index] = buf[start:offset].decode()
        elif kind == 0x6E:  # 'n': NULL
            offset += 1
        elif kind == 0x75:  # 'u': unchanged TOAST value
            values[index] = UNCHANGED_TOAST
            offset += 1
        elif kind == 0x62:  # 'b'
            raise _malformed(
                buf,
                f"binary column value at offset {offset}: protocol 1 without the binary option"
                " sends text",
            )
        else:
            raise _malformed(buf, f"unknown column value kind {bytes([kind])!r} at offset {offset}")
    if offset > len(buf):
        raise _malformed(buf, f"a column value runs to offset {offset}, past the end")
    return tuple(values), offset


def _expect(buf: bytes, offset: int, allowed: bytes) -> None:
    if buf[offset] not in allowed:
        raise _malformed(
            buf, f"tuple kind {buf[offset : offset + 1]!r} at offset {offset}, expected {allowed!r}"
        )


def _begin(buf: bytes) -> tuple[Message, int]:
    return Begin(*_BEGIN.unpack_from(buf)), _BEGIN.size


def _commit(buf: bytes) -> tuple[Message, int]:
    return Commit(*_COMMIT.unpack_from(buf)), _COMMIT.size


def _origin(buf: bytes) -> tuple[Message, int]:
    (lsn,) = _ORIGIN_LSN.unpack_from(buf)
    name, end = _cstring(buf, _ORIGIN_LSN.size)
    return Origin(lsn, name), end


def _relation(buf: bytes) -> tuple[Message, int]:
    (oid,) = _OID_HEAD.unpack_from(buf)
    namespace, offset = _cstring(buf, _OID_HEAD.size)
    name, offset = _cstring(buf, offset)
    identity = chr(buf[offset])
    (count,) = _U16.unpack_from(buf, offset + 1)
    offset += 3
    columns = []
    for _ in range(count):
        flags = buf[offset]
        column, offset = _cstring(buf, offset + 1)
        type_oid, modifier = _COLUMN.unpack_from(buf, offset)
        offset += _COLUMN.size
        columns.append(RelationColumn(bool(flags & 1), column, type_oid, modifier))
    return Relation(oid, namespace, name, identity, tuple(columns)), offset


def _type(buf: bytes) -> tuple[Message, int]:
    (oid,) = _OID_HEAD.unpack_from(buf)
    namespace, offset = _cstring(buf, _OID_HEAD.size)
    name, offset = _cstring(buf, offset)
    return TypeMessage(oid, namespace, name), offset


def _update(buf: bytes) -> tuple[Message, int]:
    # 'O' (old row, REPLICA IDENTITY FULL) or 'K' (changed key) may precede the new row 'N'
    oid, kind = _OID_KIND.unpack_from(buf)
    old = key = None
    offset = _OID_KIND.size
    if kind == b"O":
        old, offset = _tuple(buf, offset)
    elif kind == b"K":
        key, offset = _tuple(buf, offset)
    if kind != b"N":
        _expect(buf, offset, b"N")
        offset += 1
    new, offset = _tuple(buf, offset)
    return Update(oid, old, key, new), offset


def _delete(buf: bytes) -> tuple[Message, int]:
    oid, kind = _OID_KIND.unpack_from(buf)
    if kind == b"O":
        old, offset = _tuple(buf, _OID_KIND.size)
        return Delete(oid, old, None), offset
    _expect(buf, _OID_HEAD.size, b"OK")
    key, offset = _tuple(buf, _OID_KIND.size)
    return Delete(oid, None, key), offset


def _truncate(buf: bytes) -> tuple[Message, int]:
    count, options = _TRUNCATE_HEAD.unpack_from(buf)
    oids = struct.unpack_from(f">{count}I", buf, _TRUNCATE_HEAD.size)
    message = Truncate(
        oids,
        cascade=bool(options & _TRUNCATE_CASCADE),
        restart_identity=bool(options & _TRUNCATE_RESTART_IDENTITY),
    )
    return message, _TRUNCATE_HEAD.size + 4 * count


def _message(buf: bytes) -> tuple[Message, int]:
    flags, lsn = _MESSAGE_HEAD.unpack_from(buf)
    prefix, offset = _cstring(buf, _MESSAGE_HEAD.size)
    (length,) = _I32.unpack_from(buf, offset)
    start = offset + 4
    content = buf[start : start + length]
    if len(content) != length:
        raise _malformed(buf, f"content of {length} bytes at offset {start} runs past the end")
    return LogicalMessage(bool(flags & 1), lsn, prefix, content), start + length


# Insert ('I') is not here: decode() handles it inline.
_DECODERS: dict[int, Callable[[bytes], tuple[Message, int]]] = {
    ord("B"): _begin,
    ord("C"): _commit,
    ord("O"): _origin,
    ord("R"): _relation,
    ord("Y"): _type,
    ord("U"): _update,
    ord("D"): _delete,
    ord("T"): _truncate,
    ord("M"): _message,
}
