"""MessageStore: batching, pending delivery, broadcasts."""

from __future__ import annotations

import pytest
import pytest_twisted

from dkserver import timestamps
from dkserver.store import NewMessage, StoreError
from dkserver.store.engine import COPY_THRESHOLD, sqlite_chunks
from dkserver.store.messages import mark_delivered_txn
from tests.support.db import recorded_interactions

T0 = 1_800_000_000 * 10**9  # a registration instant, Unix ns


def msg(sender, to, content="hi", *, received_ns=T0 + 10, **kw) -> NewMessage:
    fields = {
        "timestamp": "2027-01-15T08:00:00.000000123+01:00",
        "is_broadcast": to == "broadcast",
        "signature": "c2ln",
        "is_forward_message": False,
    }
    fields.update(kw)
    return NewMessage(
        from_user=sender, to_user=to, content=content, received_ns=received_ns, **fields
    )


async def register(store, *user_ids, at=T0):
    for uid in user_ids:
        await store.users.create(uid, uid.title(), "a2V5", registered_ns=at)


@pytest_twisted.ensureDeferred
async def test_add_many_returns_ids_in_order_and_pending_lists_them(store):
    await register(store, "alice", "bob", "carol")
    ids = await store.messages.add_many(
        [msg("alice", "bob", "1"), msg("carol", "bob", "2"), msg("bob", "alice", "3")]
    )
    assert ids == [1, 2, 3]
    pending = await store.messages.pending_direct("bob")
    assert [(m.id, m.from_user, m.content, m.status) for m in pending] == [
        (1, "alice", "1", "pending"),
        (2, "carol", "2", "pending"),
    ]
    assert [m.id for m in await store.messages.pending_direct("bob", limit=1)] == [1]
    assert await store.messages.add_many([]) == []


@pytest_twisted.ensureDeferred
async def test_mark_delivered_removes_from_pending_only_once(store):
    await register(store, "alice", "bob")
    ids = await store.messages.add_many([msg("alice", "bob", str(i)) for i in range(4)])
    await store.messages.mark_delivered(ids[:2])
    assert [m.id for m in await store.messages.pending_direct("bob")] == ids[2:]
    assert (await store.messages.get(ids[0])).status == "delivered"
    await store.messages.mark_delivered(ids[:3])  # already delivered ids are fine
    assert [m.id for m in await store.messages.pending_direct("bob")] == ids[3:]
    await store.messages.mark_delivered([])


@pytest.mark.parametrize("size", [1, 3, 64, 85, 150])
@pytest_twisted.ensureDeferred
async def test_a_batch_of_any_size_is_stored_whole_and_counted_when_delivered(
    store, size
):
    """SQLite writes a batch as multi-row statements of fixed sizes (85 rows:
    64 + 16 + 4 + 1); every row lands with its id, and a delivered mark over
    several statements counts the rows each changed."""
    await register(store, "alice", "bob")
    ids = await store.messages.add_many(
        [msg("alice", "bob", f"m{i}", received_ns=T0 + i) for i in range(size)]
    )
    assert ids == list(range(ids[0], ids[0] + size))
    pending = await store.messages.pending_direct("bob")
    assert [(m.id, m.content) for m in pending] == [
        (mid, f"m{i}") for i, mid in enumerate(ids)
    ]
    already = ids[: size // 3]
    await store.messages.mark_delivered(already)
    changed = await store.pool.runInteraction(mark_delivered_txn, ids, T0 + 10**9)
    assert changed == size - len(already)
    assert await store.messages.pending_direct("bob") == []


@pytest.mark.parametrize("size", [1, 5, 70, 150])
@pytest_twisted.ensureDeferred
async def test_new_rows_skip_taken_keys_and_rows_without_their_parent(
    store, sql, db_path, size
):
    """``insert_new_rows`` (broadcast deliveries, sessions) in batches that
    span several SQLite statements: a taken key, a key repeated within the
    batch and a message id no message has are skipped, nothing else."""
    users = [f"u{i:03d}" for i in range(size)]
    await register(store, "carol", *users)
    bid, other = await store.messages.add_many(
        [msg("carol", "broadcast", "a"), msg("carol", "broadcast", "b")]
    )
    await store.messages.record_broadcast_deliveries([(bid, users[0])])
    rows = [(bid, u) for u in users] + [(bid, users[-1]), (other, users[0])]
    rows += [(other + 1000, u) for u in users[:3]]  # no such message

    def insert(txn):
        txn.engine.insert_new_rows(
            txn,
            "broadcast_deliveries",
            ("message_id", "user_id"),
            rows,
            parent=("message_id", "messages"),
        )

    await store.pool.runInteraction(insert)
    got = sql(
        db_path,
        "SELECT message_id, user_id FROM broadcast_deliveries"
        " ORDER BY message_id, user_id",
    )
    assert got == [(bid, u) for u in users] + [(other, users[0])]
    # The pool's own path, without a parent guard: taken keys only.
    await store.messages.record_broadcast_deliveries([(other, u) for u in users])
    assert sql(
        db_path,
        "SELECT COUNT(*) FROM broadcast_deliveries WHERE message_id = ?",
        (other,),
    ) == [(size,)]


@pytest.mark.parametrize(
    ("count", "per_row", "sizes"),
    [
        (0, 11, []),
        (1, 11, [1]),
        (37, 11, [16, 16, 4, 1]),
        (150, 11, [64, 64, 16, 4, 1, 1]),
        # 64 rows of 20 parameters would pass SQLite's old 999 limit
        (70, 20, [16, 16, 16, 16, 4, 1, 1]),
        (3, 1000, [1, 1, 1]),
    ],
)
def test_sqlite_chunks_cover_every_row_once_in_few_sizes(count, per_row, sizes):
    chunks = sqlite_chunks(count, per_row)
    assert [size for _, size in chunks] == sizes
    covered = [i for start, size in chunks for i in range(start, start + size)]
    assert covered == list(range(count))


@pytest_twisted.ensureDeferred
async def test_timestamp_is_kept_to_the_nanosecond_with_sender_offset(
    store, sql, db_path
):
    await register(store, "alice", "bob")
    text = "2027-01-15T08:00:00.000000123+01:00"
    (mid,) = await store.messages.add_many([msg("alice", "bob", timestamp=text)])
    got = await store.messages.get(mid)
    assert got.timestamp == text
    assert (
        timestamps.parse(got.timestamp).unix_nanos == timestamps.parse(text).unix_nanos
    )
    (zmid,) = await store.messages.add_many(
        [msg("alice", "bob", timestamp="2027-01-15T07:00:00.1Z")]
    )
    assert (await store.messages.get(zmid)).timestamp == "2027-01-15T07:00:00.1Z"
    rows = sql(db_path, "SELECT timestamp, client_timestamp FROM messages ORDER BY id")
    assert rows == [
        ("2027-01-15 08:00:00.000000123+01:00", None),
        ("2027-01-15 07:00:00.1+00:00", None),
    ]


@pytest_twisted.ensureDeferred
async def test_to_wire_omits_false_flags_and_empty_signature(store, sql, db_path):
    await register(store, "alice", "bob")
    a, b = await store.messages.add_many(
        [
            msg("alice", "bob", signature=None),
            msg("alice", "alice", signature="c2ln", is_forward_message=True),
        ]
    )
    first = await store.messages.get(a)
    assert first.signature is None
    assert first.to_wire() == {
        "id": a,
        "from": "alice",
        "to": "bob",
        "timestamp": "2027-01-15T08:00:00.000000123+01:00",
        "content": "hi",
        "status": "pending",
    }
    assert (await store.messages.get(b)).to_wire()["is_forward_message"] is True
    assert "is_broadcast" not in (await store.messages.get(b)).to_wire()
    # like the Go server, a missing signature is stored as ''
    assert sql(db_path, "SELECT signature FROM messages WHERE id = ?", (a,)) == [("",)]
    assert await store.messages.get(999) is None


@pytest.mark.parametrize("size", [2, COPY_THRESHOLD + 4])
@pytest_twisted.ensureDeferred
async def test_unknown_sender_fails_whole_batch(store, size):
    """Either way of inserting a batch on PostgreSQL (multi-row INSERT,
    COPY from COPY_THRESHOLD rows) reports the foreign key as StoreError."""
    await register(store, "alice", "bob")
    batch = [msg("alice", "bob", str(i)) for i in range(size - 1)]
    with pytest.raises(StoreError):
        await store.messages.add_many([*batch, msg("mallory", "bob")])
    assert await store.messages.pending_direct("bob") == []


@pytest_twisted.ensureDeferred
async def test_broadcast_offered_to_others_until_recorded(store):
    await register(store, "alice", "bob", "carol")
    (bid,) = await store.messages.add_many([msg("carol", "broadcast", "all")])
    (b,) = await store.messages.undelivered_broadcasts("bob")
    assert (b.id, b.is_broadcast, b.to_wire()["is_broadcast"]) == (bid, True, True)
    assert await store.messages.undelivered_broadcasts("carol") == []
    assert await store.messages.pending_direct("bob") == []  # not a direct message
    await store.messages.record_broadcast_deliveries([(bid, "bob"), (bid, "bob")])
    await store.messages.record_broadcast_deliveries([(bid, "bob")])  # idempotent
    assert await store.messages.undelivered_broadcasts("bob") == []
    assert [m.id for m in await store.messages.undelivered_broadcasts("alice")] == [bid]
    assert await store.messages.undelivered_broadcasts("nobody") == []


@pytest_twisted.ensureDeferred
async def test_backlog_first_pages_reads_both_kinds_in_one_transaction(store):
    """A connect's first read: direct messages and broadcasts in one trip to
    the database thread; broadcasts only once the direct ones fit a page."""
    await register(store, "alice", "bob", "carol")
    d1, d2, bid, _other = await store.messages.add_many(
        [
            msg("alice", "bob", "1"),
            msg("carol", "bob", "2"),
            msg("carol", "broadcast", "all"),
            msg("bob", "alice", "3"),
        ]
    )
    with recorded_interactions(store.messages._pool) as trips:
        direct, broadcasts = await store.messages.backlog_first_pages("bob", 10)
        assert len(trips) == 1
        assert [m.id for m in direct] == [d1, d2]
        assert [m.id for m in broadcasts] == [bid]
        # A full page of direct messages: their next page comes first.
        direct, broadcasts = await store.messages.backlog_first_pages("bob", 2)
        assert [m.id for m in direct] == [d1, d2] and broadcasts is None
        direct, broadcasts = await store.messages.backlog_first_pages("carol", 10)
        assert direct == [] and broadcasts == []  # carol's own broadcast
    await store.messages.record_broadcast_deliveries([(bid, "bob")])
    assert await store.messages.backlog_first_pages("bob", 10) == (
        await store.messages.pending_direct("bob"),
        [],
    )


@pytest_twisted.ensureDeferred
async def test_broadcasts_before_registration_are_not_offered(store):
    await register(store, "alice")
    _old, at_reg, later = await store.messages.add_many(
        [
            msg("alice", "broadcast", "old", received_ns=T0 + 99),
            msg("alice", "broadcast", "same instant", received_ns=T0 + 100),
            msg("alice", "broadcast", "later", received_ns=T0 + 101),
        ]
    )
    await store.users.create("dave", "Dave", "a2V5", registered_ns=T0 + 100)
    got = await store.messages.undelivered_broadcasts("dave")
    assert [m.id for m in got] == [at_reg, later]
    assert [
        m.id for m in await store.messages.undelivered_broadcasts("dave", limit=1)
    ] == [at_reg]


@pytest_twisted.ensureDeferred
async def test_delivery_of_unknown_message_is_an_error(store):
    await register(store, "alice")
    with pytest.raises(StoreError):
        await store.messages.record_broadcast_deliveries([(12345, "alice")])


@pytest_twisted.ensureDeferred
async def test_nul_character_is_kept_on_sqlite_and_refused_on_postgresql(
    store, backend
):
    name = "nul\0name"
    if backend == "sqlite":
        await store.users.create(name, name, "a2V5", registered_ns=T0)
        assert (await store.users.get(name)).username == name
    else:
        with pytest.raises(StoreError, match="NUL"):
            await store.users.create(name, name, "a2V5", registered_ns=T0)


@pytest_twisted.ensureDeferred
async def test_sql_metacharacters_are_stored_as_data(store):
    evil = "x'); DROP TABLE messages; --"
    quote = "q\"'%_\\?"
    await store.users.create(evil, quote, "a2V5", registered_ns=T0)
    await store.users.create(quote, evil, "a2V5", registered_ns=T0)
    assert sorted(await store.users.all_ids()) == sorted([evil, quote])
    assert (await store.users.get(quote)).username == evil
    ids = await store.messages.add_many([msg(evil, quote, content=evil + quote)])
    (m,) = await store.messages.pending_direct(quote)
    assert (m.id, m.from_user, m.to_user, m.content) == (
        ids[0],
        evil,
        quote,
        evil + quote,
    )
    assert await store.messages.pending_direct("%") == []
    await store.descriptions.set(evil, [evil, quote])
    assert await store.descriptions.get(evil) == [evil, quote]


@pytest_twisted.ensureDeferred
async def test_broadcast_floor_skips_done_broadcasts_but_never_a_pending_one(
    store, db_path, sql
):
    from dkserver.store.messages import NewMessage as NM

    await store.users.create("sender", "S", "k", registered_ns=0)
    await store.users.create("reader", "R", "k", registered_ns=0)

    def broadcast(n: int) -> NM:
        return NM(
            "sender",
            "broadcast",
            f"2026-11-26T00:00:0{n % 10}Z",
            f"b{n}",
            True,
            None,
            False,
            n + 1,
        )

    ids = await store.messages.add_many([broadcast(i) for i in range(5)])
    # The first three were delivered, the fourth not, the fifth was.
    await store.messages.record_broadcast_deliveries(
        [(ids[0], "reader"), (ids[1], "reader"), (ids[2], "reader"), (ids[4], "reader")]
    )
    got = await store.messages.undelivered_broadcasts("reader")
    assert [m.id for m in got] == [ids[3]]
    ((floor,),) = sql(
        db_path, "SELECT broadcast_floor FROM users WHERE user_id = 'reader'"
    )
    assert floor == ids[3] - 1  # not past the one still pending
    await store.messages.record_broadcast_deliveries([(ids[3], "reader")])
    assert await store.messages.undelivered_broadcasts("reader") == []
    ((floor,),) = sql(
        db_path, "SELECT broadcast_floor FROM users WHERE user_id = 'reader'"
    )
    assert floor == ids[4]
    # A new broadcast is above the floor and is offered.
    (new,) = await store.messages.add_many([broadcast(7)])
    assert [m.id for m in await store.messages.undelivered_broadcasts("reader")] == [
        new
    ]


@pytest.mark.parametrize(
    "content",
    ["a\0b", "\0", "\uffff", "\uffff0", "\uffff\0\uffff", "x\uffff\0", "plain"],
)
@pytest_twisted.ensureDeferred
async def test_content_with_nul_or_the_escape_marker_reads_back_exactly(store, content):
    await register(store, "alice")
    await register(store, "bob")
    (mid,) = await store.messages.add_many([msg("alice", "bob", content=content)])
    assert (await store.messages.get(mid)).content == content
    (pending,) = await store.messages.pending_direct("bob")
    assert pending.content == content
