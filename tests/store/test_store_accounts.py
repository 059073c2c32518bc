"""dkserver.store.accounts: status, token cut-offs, invites, the polled
version rows; on both backends."""

from __future__ import annotations

import pytest
import pytest_twisted

from dkserver.store import UserExists
from dkserver.store.accounts import (
    ACCOUNTS_VERSION,
    SECRET_VERSION,
    InviteRefused,
    Revoked,
    UnknownUser,
    ban_txn,
    bump_txn,
    create_invite_txn,
    delete_txn,
    hash_code,
    list_invites_txn,
    revoke_invite_txn,
    revoke_tokens_txn,
    rotate_key_txn,
    unban_txn,
)
from dkserver.store.messages import NewMessage

KEY = "a2V5"


def run(store, func, *args):
    return store.pool.runInteraction(func, *args)


@pytest_twisted.ensureDeferred
async def test_ban_unban_change_status_cut_tokens_and_the_version(store):
    await store.users.create("alice", "Alice", KEY)
    assert await store.accounts.revoked() == []
    before = await store.accounts.versions()
    assert await run(store, ban_txn, "alice", 1000) == "active"
    banned = await store.accounts.versions()
    assert banned[0] != before[0] and banned[1] == before[1]
    assert await store.accounts.revoked() == [Revoked("alice", "banned", 1000)]
    store.users.forget()
    assert (await store.users.get("alice")).status == "banned"
    assert await run(store, unban_txn, "alice") == "banned"
    assert await store.accounts.versions() != banned
    # Tokens from before the ban stay cut off after the unban.
    assert await store.accounts.revoked() == [Revoked("alice", "active", 1000)]


@pytest_twisted.ensureDeferred
async def test_unknown_user_is_refused_by_every_change(store):
    for func, args in (
        (ban_txn, (1,)),
        (unban_txn, ()),
        (delete_txn, (1,)),
        (revoke_tokens_txn, (1,)),
        (rotate_key_txn, (KEY, 1)),
    ):
        with pytest.raises(UnknownUser):
            await run(store, func, "nobody", *args)
    assert await store.accounts.versions() == (None, None)


@pytest_twisted.ensureDeferred
async def test_delete_keeps_a_tombstone_and_removes_what_served_the_user(store):
    await store.users.create("alice", "Alice", KEY)
    await store.users.create("bob", "Bob", KEY)
    await store.descriptions.set("bob", ["d"])
    msg = NewMessage(
        "alice", "bob", "2026-01-01T00:00:00Z", "hi", False, None, False, 1
    )
    await store.messages.add_many([msg])
    back = NewMessage(
        "bob", "alice", "2026-01-01T00:00:00Z", "yo", False, None, False, 2
    )
    await store.messages.add_many([back])
    removed = await run(store, delete_txn, "bob", 5000)
    assert removed["pending_messages"] == 1
    assert removed["user_descriptions"] == 1
    assert await store.accounts.revoked() == [Revoked("bob", "deleted", 5000)]
    # The id stays taken; what bob sent stays, with its sender.
    with pytest.raises(UserExists):
        await store.users.create("bob", "New Bob", KEY)
    pending = await store.messages.pending_direct("alice")
    assert [m.from_user for m in pending] == ["bob"]
    assert await run(store, unban_txn, "bob") == "deleted"
    assert (await store.accounts.revoked())[0].status == "deleted"


@pytest_twisted.ensureDeferred
async def test_revoke_tokens_and_rotate_key(store):
    await store.users.create("alice", "Alice", KEY)
    await run(store, revoke_tokens_txn, "alice", 7000)
    assert await store.accounts.revoked() == [Revoked("alice", "active", 7000)]
    await store.accounts.rotate_key("alice", "bmV3", 8000)
    store.users.forget()
    assert (await store.users.get("alice")).public_key == "bmV3"
    assert await store.accounts.revoked() == [Revoked("alice", "active", 8000)]
    await run(store, ban_txn, "alice", 9000)
    with pytest.raises(UnknownUser):  # only an active user's key rotates
        await store.accounts.rotate_key("alice", KEY, 9500)


@pytest_twisted.ensureDeferred
async def test_secret_version_changes_on_its_own(store):
    await run(store, bump_txn, SECRET_VERSION)
    first = await store.accounts.versions()
    await run(store, bump_txn, SECRET_VERSION)
    second = await store.accounts.versions()
    assert first[0] is None and second[0] is None
    assert first[1] and second[1] and first[1] != second[1]
    assert ACCOUNTS_VERSION != SECRET_VERSION


@pytest_twisted.ensureDeferred
async def test_invite_uses_expiry_and_revocation(store):
    code_id = await run(store, create_invite_txn, "two-uses", 2, 10_000, 1)
    assert code_id == hash_code("two-uses")[:12]
    await run(store, create_invite_txn, "expired", 5, 1_000, 1)
    await run(store, create_invite_txn, "to-revoke", 5, None, 1)

    async def register(user_id, code, ns=5_000 * 1_000_000):
        await store.users.create(user_id, user_id, KEY, registered_ns=ns, invite=code)

    await register("u1", "two-uses")
    await register("u2", "two-uses")
    with pytest.raises(InviteRefused):
        await register("u3", "two-uses")  # used up
    with pytest.raises(InviteRefused):
        await register("u3", "expired")
    with pytest.raises(InviteRefused):
        await register("u3", "no-such-code")
    assert await store.users.get("u3") is None  # nothing registered
    assert await run(store, revoke_invite_txn, hash_code("to-revoke")[:12])
    with pytest.raises(InviteRefused):
        await register("u3", "to-revoke")
    assert not await run(store, revoke_invite_txn, "unknown")
    listed = {i.code_id: i for i in await run(store, list_invites_txn)}
    assert listed[code_id].uses_left == 0
    assert listed[hash_code("to-revoke")[:12]].revoked
    # A refused registration with a taken id does not use up an invite.
    with pytest.raises(UserExists):
        await register("u1", "to-revoke")
