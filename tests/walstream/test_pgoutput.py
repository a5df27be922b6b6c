"""The pgoutput decoder against messages captured from PostgreSQL 18 (tests/data/pgoutput).

Column values are fixed by the capture script; OIDs, LSNs, xids and times change with every
capture, so the tests take them from manifest.json, which the server reported separately.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest

from dvm.errors import PgTrickleError
from walstream.pgoutput import (
    UNCHANGED_TOAST,
    Begin,
    Commit,
    Delete,
    Insert,
    LogicalMessage,
    Message,
    Origin,
    PgOutputError,
    Relation,
    RelationColumn,
    Truncate,
    TypeMessage,
    Update,
    decode,
)
from walstream.replication import parse_lsn

DATA = Path(__file__).resolve().parents[1] / "data" / "pgoutput"
MANIFEST: dict[str, Any] = json.loads((DATA / "manifest.json").read_text())
OIDS: dict[str, int] = MANIFEST["oids"]
SCENARIOS = sorted(MANIFEST["scenarios"])

INT4, INT8, TEXT, NUMERIC, VARCHAR = 23, 20, 25, 1700, 1043
TIMESTAMPTZ, BOOL, BYTEA, JSONB, INT4_ARRAY = 1184, 16, 17, 3802, 1007

MESSAGE_CLASSES: dict[str, type] = {
    "B": Begin,
    "C": Commit,
    "O": Origin,
    "R": Relation,
    "Y": TypeMessage,
    "I": Insert,
    "U": Update,
    "D": Delete,
    "T": Truncate,
    "M": LogicalMessage,
}


def payloads(scenario: str) -> list[bytes]:
    """The messages of ``<scenario>.bin``: each a 4-byte big-endian length, then the bytes."""
    data = (DATA / f"{scenario}.bin").read_bytes()
    result = []
    offset = 0
    while offset < len(data):
        (length,) = struct.unpack_from(">I", data, offset)
        result.append(data[offset + 4 : offset + 4 + length])
        offset += 4 + length
    return result


def messages(scenario: str) -> list[Message]:
    return [decode(payload) for payload in payloads(scenario)]


def lsns(scenario: str) -> list[int]:
    """The LSN the server reported with each message of the scenario."""
    return [parse_lsn(text) for text in MANIFEST["scenarios"][scenario]["lsns"]]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_capture_decodes_to_the_message_types_the_server_sent(scenario: str) -> None:
    kinds = MANIFEST["scenarios"][scenario]["kinds"]
    assert [type(message) for message in messages(scenario)] == [
        MESSAGE_CLASSES[kind] for kind in kinds
    ]


def test_begin_and_commit_frame_the_transaction_with_its_commit_lsn_time_and_xid() -> None:
    decoded = messages("insert_kinds")
    begin, commit = decoded[0], decoded[-1]
    facts = MANIFEST["scenarios"]["insert_kinds"]
    assert isinstance(begin, Begin) and isinstance(commit, Commit)
    assert begin.xid == facts["xids"][0]
    assert begin.final_lsn == commit.commit_lsn
    assert commit.end_lsn == lsns("insert_kinds")[-1]  # the end of the commit record
    assert commit.commit_lsn < commit.end_lsn
    assert commit.flags == 0
    assert begin.commit_time == commit.commit_time
    earliest, latest = facts["clock_window"]
    assert earliest <= commit.commit_time <= latest


def test_type_message_names_a_user_defined_column_type() -> None:
    assert messages("insert_kinds")[1] == TypeMessage(MANIFEST["mood_oid"], "public", "mood")


def test_relation_lists_columns_with_types_modifiers_and_the_key() -> None:
    assert messages("insert_kinds")[2] == Relation(
        oid=OIDS["kinds"],
        namespace="public",
        name="kinds",
        replica_identity="d",
        columns=(
            RelationColumn(True, "id", INT4, -1),
            RelationColumn(False, "big", INT8, -1),
            RelationColumn(False, "name", TEXT, -1),
            RelationColumn(False, "price", NUMERIC, (10 << 16 | 2) + 4),  # numeric(10, 2)
            RelationColumn(False, "code", VARCHAR, 20 + 4),  # varchar(20)
            RelationColumn(False, "at", TIMESTAMPTZ, -1),
            RelationColumn(False, "flag", BOOL, -1),
            RelationColumn(False, "raw", BYTEA, -1),
            RelationColumn(False, "doc", JSONB, -1),
            RelationColumn(False, "tags", INT4_ARRAY, -1),
            RelationColumn(False, "feeling", MANIFEST["mood_oid"], -1),
        ),
    )


def test_relation_with_replica_identity_full_marks_every_column_as_key() -> None:
    assert messages("full_identity")[1] == Relation(
        OIDS["full_rows"],
        "public",
        "full_rows",
        "f",
        (RelationColumn(True, "id", INT4, -1), RelationColumn(True, "note", TEXT, -1)),
    )


def test_relation_name_arrives_unquoted_in_utf8() -> None:
    relation = messages("insert_quoted_name")[1]
    assert isinstance(relation, Relation)
    assert (relation.oid, relation.name) == (MANIFEST["quoted_table_oid"], 'Ünïcode "quoted" table')


def test_insert_carries_every_value_as_postgres_text() -> None:
    assert messages("insert_kinds")[3] == Insert(
        OIDS["kinds"],
        (
            "1",
            "9007199254740993",
            "plain",
            "12.50",
            "AB-1",
            "2024-06-01 12:34:56.789+00",  # in the decoding session's time zone
            "t",
            "\\x00ff",
            '{"a": [1, null]}',
            "{1,2,NULL}",
            "happy",
        ),
    )


def test_insert_sends_sql_null_as_none() -> None:
    assert messages("insert_kinds")[4] == Insert(OIDS["kinds"], ("2",) + (None,) * 10)


def test_insert_keeps_utf8_text_and_tells_the_empty_string_from_null() -> None:
    insert = messages("insert_kinds")[5]
    assert isinstance(insert, Insert)
    assert insert.new[:5] == ("3", None, "héllo wörld ✓ 日本語 🐘", None, "")


def test_update_with_replica_identity_full_carries_the_whole_old_row() -> None:
    assert messages("full_identity")[2] == Update(
        OIDS["full_rows"], old=("1", "before"), key=None, new=("1", "after")
    )


def test_delete_with_replica_identity_full_carries_the_whole_old_row() -> None:
    assert messages("full_identity")[3] == Delete(OIDS["full_rows"], old=("2", None), key=None)


def test_update_that_keeps_the_key_carries_no_old_tuple() -> None:
    assert messages("default_identity")[2] == Update(
        OIDS["keyed"], old=None, key=None, new=("1", "changed")
    )


def test_update_of_the_key_carries_the_old_key_with_other_columns_null() -> None:
    assert messages("default_identity")[3] == Update(
        OIDS["keyed"], old=None, key=("2", None), new=("10", "two")
    )


def test_delete_with_default_identity_carries_only_the_key() -> None:
    assert messages("default_identity")[4] == Delete(OIDS["keyed"], old=None, key=("3", None))


def test_unchanged_toast_value_is_left_out_of_the_new_tuple() -> None:
    assert messages("unchanged_toast")[2] == Update(
        OIDS["docs"], old=None, key=None, new=("1", UNCHANGED_TOAST, "2")
    )


def test_unchanged_toast_value_is_in_the_old_row_with_replica_identity_full() -> None:
    update = messages("unchanged_toast")[4]
    assert isinstance(update, Update) and update.old is not None
    assert update.relation_oid == OIDS["docs_full"]
    assert update.new == ("1", UNCHANGED_TOAST, "2")
    body = update.old[1]
    assert isinstance(body, str) and len(body) == MANIFEST["toast_body_length"]
    assert (update.old[0], update.old[2]) == ("1", "1")


def test_truncate_lists_its_tables_and_options() -> None:
    truncates = [m for m in messages("truncate") if isinstance(m, Truncate)]
    assert truncates == [
        Truncate((OIDS["parent"], OIDS["child"]), cascade=True, restart_identity=True),
        Truncate((OIDS["keyed"],), cascade=False, restart_identity=False),
    ]


def test_transactional_logical_message_arrives_inside_its_transaction() -> None:
    begin, message, commit = messages("message_transactional")
    assert isinstance(begin, Begin) and isinstance(commit, Commit)
    assert message == LogicalMessage(
        transactional=True, lsn=lsns("message_transactional")[1], prefix="pgtrickle", content=b"x"
    )


def test_nontransactional_logical_message_arrives_alone_with_binary_content() -> None:
    assert messages("message_nontransactional") == [
        LogicalMessage(
            transactional=False,
            lsn=lsns("message_nontransactional")[0],
            prefix="pgtrickle",
            content=b"\x00\xff\n",
        )
    ]


def test_origin_follows_begin_with_the_origin_commit_lsn_and_name() -> None:
    assert messages("origin")[1] == Origin(parse_lsn(MANIFEST["origin_lsn"]), MANIFEST["origin"])


# malformed input


def test_every_truncated_capture_is_rejected() -> None:
    for scenario in SCENARIOS:
        for payload in payloads(scenario):
            for end in range(len(payload)):
                with pytest.raises(PgOutputError):
                    decode(payload[:end])


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_trailing_bytes_are_rejected(scenario: str) -> None:
    for payload in payloads(scenario):
        with pytest.raises(PgOutputError, match="malformed") as raised:
            decode(payload + b"\x00")
        assert raised.value.detail is not None and f"offset {len(payload)}" in raised.value.detail


def test_unknown_message_type_is_rejected_naming_the_type_byte() -> None:
    with pytest.raises(PgOutputError, match="unknown pgoutput message type") as raised:
        decode(b"Zabc")
    assert raised.value.detail is not None and "b'Z'" in raised.value.detail
    assert isinstance(raised.value, PgTrickleError)


def test_binary_column_value_is_rejected_as_not_protocol_1_text() -> None:
    payload = b"I" + struct.pack(">I", 1) + b"N" + struct.pack(">H", 1) + b"b\x00\x00\x00\x01x"
    with pytest.raises(PgOutputError, match="'I' message") as raised:
        decode(payload)
    assert (
        raised.value.detail is not None and "binary column value at offset 8" in raised.value.detail
    )


def test_unknown_column_value_kind_is_rejected() -> None:
    payload = b"I" + struct.pack(">I", 1) + b"N" + struct.pack(">H", 1) + b"x"
    with pytest.raises(PgOutputError, match="malformed"):
        decode(payload)


def test_insert_without_a_new_tuple_is_rejected() -> None:
    payload = b"I" + struct.pack(">I", 1) + b"K" + struct.pack(">H", 0)
    with pytest.raises(PgOutputError, match="malformed"):
        decode(payload)


def test_invalid_utf8_text_is_rejected() -> None:
    payload = b"I" + struct.pack(">I", 1) + b"N" + struct.pack(">H", 1) + b"t\x00\x00\x00\x01\xff"
    with pytest.raises(PgOutputError, match="malformed"):
        decode(payload)


def test_empty_payload_is_rejected() -> None:
    with pytest.raises(PgOutputError, match="empty"):
        decode(b"")
