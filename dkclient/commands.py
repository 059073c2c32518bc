"""The ``dk`` commands: each takes the client and the parsed arguments.

The parser is :mod:`dkclient.cli`, which imports this module (never the
other way round).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from argparse import Namespace

from dkclient import __version__, crypto, exits
from dkclient.account import Client, Message, UnknownUser, token_claims
from dkclient.api import ApiError, ClientError, make_ssl_context
from dkclient.keys import Home, Identity, validate_user_id, write_private
from dkclient.pins import KeyChange, KeyChanged, fingerprint
from dkclient.session import Session, SessionClosed

#: Read at most this much of a message from stdin.
MAX_STDIN = 2**20


class UsageError(ClientError):
    exit_code = exits.EXIT_USAGE


class TimedOut(ClientError):
    exit_code = exits.EXIT_TIMEOUT


def err(text: str) -> None:
    sys.stderr.write(f"dk: {text}\n")
    sys.stderr.flush()


def info(text: str) -> None:
    """Progress for people; scripts reading stdout never see it."""
    if sys.stderr.isatty():
        err(text)


def out(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def warn_key_change(change: KeyChange) -> None:
    """Loud, on stderr, whether or not it is a terminal."""
    for line in change.warning_lines():
        err(line)


def make_client(args: Namespace) -> Client:
    env = os.environ
    insecure = args.insecure or env.get("DK_INSECURE", "") in ("1", "true", "yes")
    cacert = args.cacert or env.get("DK_CACERT") or None
    server = args.server or env.get("DK_SERVER") or None
    ssl_context = make_ssl_context(insecure=bool(insecure), cacert=cacert)
    return Client(Home(args.home), server, ssl_context)


def run(args: Namespace) -> int:
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="dk: %(message)s",
    )
    if not args.verbose:
        logging.getLogger("websockets").setLevel(logging.ERROR)
    handler = COMMANDS[args.command]
    try:
        client = make_client(args)
        return handler(client, args) or 0
    except KeyboardInterrupt:
        return exits.EXIT_INTERRUPTED
    except BrokenPipeError:  # dk listen | head -1
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return exits.EXIT_BROKEN_PIPE
    except KeyChanged as e:
        warn_key_change(e.change)
        err(f"error: not sent to {e.change.user_id!r} (their key changed)")
        return e.exit_code
    except ClientError as e:
        err(f"error: {e}")
        return e.exit_code


def _text_arg(words: list[str]) -> str:
    if not words or words == ["-"]:
        if sys.stdin.isatty():
            err("reading the message from stdin; end with Ctrl-D")
        return sys.stdin.read(MAX_STDIN)
    return " ".join(words)


# -- identity --------------------------------------------------------------------


def cmd_init(client: Client, args: Namespace) -> int:
    problem = validate_user_id(args.user_id)
    if problem:
        raise UsageError(f"invalid user id {args.user_id!r}: {problem}")
    home = client.home
    existing: Identity | None = None
    if home.has_identity():
        existing = home.load_identity()
        if existing.user_id != args.user_id and not args.force:
            raise ClientError(
                f"{home.identity_path} already holds the identity of "
                f"{existing.user_id!r}; use another --home, or --force to replace it"
            )
    server = client.server
    created = False
    if existing is not None and existing.user_id == args.user_id:
        ident = existing  # an earlier init that did not finish: same key
        ident.server = server
        if args.username:
            ident.username = args.username
    else:
        if existing is not None:
            backup = home.path / f"identity.json.bak-{int(time.time())}"
            write_private(backup, home.identity_path.read_bytes())
            err(f"previous identity of {existing.user_id!r} kept in {backup}")
        ident = Identity.generate(args.user_id, args.username or args.user_id, server)
        created = True
    home.save_identity(ident)
    home.forget_token()
    client.use_identity(ident)
    try:
        client.register()
        registered = True
    except ApiError as e:
        if e.status == 409 and _same_key_registered(client, ident):
            registered = False
        else:
            if created and e.status in (400, 409):
                home.identity_path.unlink()
            if e.status == 409:
                raise ClientError(
                    f"user id {args.user_id!r} is already taken on {server}"
                ) from None
            raise ClientError(f"registration refused: {e}") from None
    client.login()
    if registered:
        out(f"Registered {ident.user_id!r} on {server}.")
    else:
        out(f"{ident.user_id!r} was already registered on {server} with this key.")
    out(f"Keys: {home.identity_path} (keep this file private; it is your identity)")
    return 0


def _same_key_registered(client: Client, ident: Identity) -> bool:
    try:
        return client.public_key(ident.user_id, refresh=True) == ident.public_key_b64
    except ClientError:
        return False


def cmd_login(client: Client, args: Namespace) -> int:
    token = client.login()
    exp = token_claims(token).get("exp")
    until = ""
    if isinstance(exp, (int, float)):
        until = time.strftime(
            " (token valid until %Y-%m-%d %H:%M %Z)", time.localtime(exp)
        )
    out(f"Logged in as {client.user_id!r} on {client.server}{until}.")
    return 0


def cmd_whoami(client: Client, args: Namespace) -> int:
    ident = client.identity
    out(f"user_id:     {ident.user_id}")
    out(f"username:    {ident.username}")
    out(f"server:      {client.server}")
    out(f"public_key:  {ident.public_key_b64}")
    out(f"fingerprint: {fingerprint(ident.public_key_b64)}")
    out(f"home:        {client.home.path}")
    return 0


def cmd_version(client: Client, args: Namespace) -> int:
    import cryptography
    import nacl
    import websockets

    out(f"dk {__version__}")
    out(f"python {sys.version.split()[0]} ({sys.executable})")
    out(f"websockets {websockets.__version__} ({os.path.dirname(websockets.__file__)})")
    out(f"pynacl {nacl.__version__}")
    out(f"cryptography {cryptography.__version__}")
    return 0


# -- sending ---------------------------------------------------------------------


async def _send(client: Client, make, wait: float) -> list[str]:
    """Open a session, send one frame, and collect refusals for ``wait`` s.

    Other messages that arrive meanwhile (the server hands a new connection
    everything pending) are kept in home for the next ``dk listen``.
    """
    session = Session(client, reconnect=False)
    await session.start()
    refusals: list[str] = []
    try:
        await make(session)
        deadline = time.monotonic() + max(0.0, wait)
        while (left := deadline - time.monotonic()) > 0:
            try:
                message = await session.receive(timeout=left)
            except TimeoutError:
                break
            except SessionClosed:
                break
            if message.kind == "system":
                refusals.append(message.content or "")
            else:
                _keep(client, [message])
    finally:
        await session.close()
        _keep(client, session.drain())
    return refusals


def _keep(client: Client, messages: list[Message]) -> None:
    frames = [m.frame for m in messages if m.kind in ("direct", "broadcast")]
    client.home.spool(frames)


def cmd_send(client: Client, args: Namespace) -> int:
    client.identity  # noqa: B018 - fail early when not initialised
    text = _text_arg(args.text)
    # Unknown recipient or changed key: a clear error before connecting.
    client.recipient_key(args.user)
    refusals = asyncio.run(
        _send(client, lambda s: s.send_direct(args.user, text), args.wait)
    )
    if refusals:
        raise ClientError("the server refused the message: " + "; ".join(refusals))
    info(f"sent to {args.user}")
    return 0


def cmd_broadcast(client: Client, args: Namespace) -> int:
    client.identity  # noqa: B018 - fail early when not initialised
    text = _text_arg(args.text)
    refusals = asyncio.run(_send(client, lambda s: s.broadcast(text), args.wait))
    if refusals:
        raise ClientError("the server refused the broadcast: " + "; ".join(refusals))
    info("broadcast sent")
    return 0


# -- receiving -------------------------------------------------------------------


def _format(message: Message) -> str:
    try:
        ns = crypto.parse_timestamp(message.timestamp)
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ns // 1_000_000_000))
    except crypto.CryptoError:
        when = message.timestamp
    who = message.sender + (" (broadcast)" if message.kind == "broadcast" else "")
    text = message.content if message.content is not None else "<unreadable>"
    flags = []
    if not message.verified:
        flags.append("UNVERIFIED")
    if message.error:
        flags.append(message.error)
    suffix = f"  [{'; '.join(flags)}]" if flags else ""
    return f"{when} {who}: {text}{suffix}"


async def _listen(client: Client, args: Namespace) -> int:
    server = client.server
    shown: list[int] = client.home.load_seen(server)
    shown_set = set(shown)
    count = 0
    warned: set[tuple[str, str]] = set()

    def show(message: Message) -> bool:
        nonlocal count
        change = message.key_change
        if change is not None and (change.user_id, change.current) not in warned:
            warned.add((change.user_id, change.current))  # once per key and run
            warn_key_change(change)
        if message.kind == "system":
            err(f"server: {message.content}")
            return False
        if message.kind == "forward":
            err("ignoring a forward request (dk serve-forward answers them)")
            return False
        if message.id is not None and message.id in shown_set:
            return False
        if args.json:
            out(json.dumps(message.to_json(), ensure_ascii=False))
        else:
            out(_format(message))
        if message.id is not None and message.id > 0:  # only once it was printed
            shown.append(message.id)
            shown_set.add(message.id)
        count += 1
        return args.count is not None and count >= args.count

    client.identity  # noqa: B018 - fail early when not initialised
    client.known_keys.pins(client.pin_scope)  # and on an unreadable known_keys.json
    spooled = client.home.take_spooled()
    try:
        for i, frame in enumerate(spooled):
            try:
                done = show(await asyncio.to_thread(client.open_frame, frame))
            except BaseException:
                client.home.spool(spooled[i:])  # not shown: keep them
                raise
            if done:
                client.home.spool(spooled[i + 1 :])
                return 0
        session = Session(client, seen=shown)
        await session.start()
        info(f"listening as {client.user_id} on {server} (Ctrl-C to stop)")
        try:
            while True:
                try:
                    message = await session.receive(timeout=args.timeout)
                except TimeoutError:
                    if args.count is not None:
                        raise TimedOut(
                            f"{count} of {args.count} messages before "
                            f"{args.timeout:g} s of silence"
                        ) from None
                    return 0
                try:
                    if show(message):
                        return 0
                except BaseException:  # e.g. stdout closed: keep it for next time
                    _keep(client, [message])
                    raise
        finally:
            # Linger so the server's delivery proof for what we showed gets
            # its pong (else it is sent again next time, and skipped as seen).
            await session.close(linger=0.3)
            _keep(client, session.drain())
    finally:
        client.home.save_seen(server, shown)


def cmd_listen(client: Client, args: Namespace) -> int:
    if args.count is not None and args.count < 1:
        raise UsageError("--count must be at least 1")
    return asyncio.run(_listen(client, args))


# -- pinned keys -----------------------------------------------------------------


def cmd_trust(client: Client, args: Namespace) -> int:
    """Pin USER's current key (or --key) deliberately, replacing the old pin."""
    user = args.user
    if user == client.user_id:
        raise UsageError(f"{user!r} is you: your own key is in {client.home.path}")
    server_key = client.public_key(user, refresh=True)  # unknown user: exit 6
    new = server_key
    if args.key is not None:
        new = args.key.strip()
        try:
            raw = crypto.b64d(new)
            if len(raw) != 32:
                raise crypto.CryptoError(f"{len(raw)} bytes, not 32")
            crypto.x25519_public_from(raw)
        except crypto.CryptoError as e:
            raise UsageError(f"--key is not an Ed25519 public key: {e}") from None
    old = client.pinned(user)
    if old is not None and old.public_key == new:
        out(f"{user} is already trusted with {fingerprint(new)}")
        return 0
    out(f"{user} on {client.pin_scope}: {fingerprint(new)}")
    if old is not None:
        pinned = fingerprint(old.public_key)
        out(f"  replaces the pinned {pinned} ({old.how}, {old.pinned_at})")
    if new != server_key:
        err(
            f"note: the server gives another key for {user} "
            f"({fingerprint(server_key)}): their messages stay UNVERIFIED and "
            "dk send refuses until it gives this one"
        )
    if not args.yes:
        if not sys.stdin.isatty():
            raise UsageError("not a terminal to ask on: pass --yes to trust this key")
        sys.stderr.write(
            f"Trust this key for {user}? Compare the fingerprint with them first "
            "(they see it with `dk whoami`). [y/N] "
        )
        sys.stderr.flush()
        if sys.stdin.readline().strip().lower() not in ("y", "yes"):
            err("not trusted; nothing changed")
            return exits.EXIT_ERROR
    client.trust(user, new)
    out(f"trusted: {user} {fingerprint(new)}")
    return 0


# -- other REST ----------------------------------------------------------------------


def cmd_users(client: Client, args: Namespace) -> int:
    users = client.active_users()
    if args.json:
        out(json.dumps(users))
        return 0
    for state in ("online", "offline"):
        names = sorted(users[state])
        out(f"{state} ({len(names)}): {', '.join(names) if names else '-'}")
    return 0


def cmd_describe(client: Client, args: Namespace) -> int:
    if args.text:
        if args.user:
            raise UsageError("--user reads descriptions; set only your own")
        client.set_descriptions(list(args.text))
        info(f"descriptions updated ({len(args.text)})")
        return 0
    user = args.user or client.user_id
    try:
        descriptions = client.descriptions(user)
    except ApiError as e:
        if e.status == 404:
            raise UnknownUser(f"no user {user!r} on {client.server}") from None
        raise
    if args.json:
        out(json.dumps(descriptions, ensure_ascii=False))
    else:
        for d in descriptions:
            out(d)
    return 0


def cmd_ask(client: Client, args: Namespace) -> int:
    try:
        out(client.ask_forward(" ".join(args.text)))
    except ApiError as e:
        if e.status == 504:
            raise ClientError("no answer: is `dk serve-forward` running?") from None
        if e.status in (404, 409, 503):
            raise ClientError(f"{e.message} (is `dk serve-forward` running?)") from None
        raise
    return 0


# -- forward requests --------------------------------------------------------------


async def run_command(
    cmd: list[str], query: str, as_arg: bool, timeout: float, user_id: str
) -> str:
    """CMD's stdout for one query (an ``error: ...`` text if it fails)."""
    env = dict(os.environ, DK_QUERY=query, DK_USER=user_id)
    stdin = asyncio.subprocess.PIPE
    if len(cmd) == 1 and sys.platform == "win32":
        proc = await asyncio.create_subprocess_shell(
            cmd[0], stdin=stdin, stdout=asyncio.subprocess.PIPE, env=env
        )
    elif len(cmd) == 1:
        shell_args = ["/bin/sh", "-c", cmd[0], "dk-forward"] + (
            [query] if as_arg else []
        )
        proc = await asyncio.create_subprocess_exec(
            *shell_args, stdin=stdin, stdout=asyncio.subprocess.PIPE, env=env
        )
    else:
        argv = cmd + ([query] if as_arg else [])
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=stdin, stdout=asyncio.subprocess.PIPE, env=env
        )
    try:
        stdout, _ = await asyncio.wait_for(proc.communicate(query.encode()), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        err(f"forward command timed out after {timeout:g} s")
        return f"error: command timed out after {timeout:g} s"
    answer = stdout.decode("utf-8", "replace")
    if answer.endswith("\n"):
        answer = answer[:-1]
    if proc.returncode != 0:
        err(f"forward command exited with status {proc.returncode}")
        if not answer:
            return f"error: command failed with exit status {proc.returncode}"
    return answer


async def _serve_forward(client: Client, args: Namespace) -> int:
    answered = 0
    done = asyncio.Event()

    async def handle(request: Message) -> str:
        nonlocal answered
        answer = await run_command(
            args.cmd, request.content or "", args.arg, args.cmd_timeout, client.user_id
        )
        answered += 1
        info(f"answered forward request #{answered} ({len(answer)} characters)")
        if args.count is not None and answered >= args.count:
            asyncio.get_running_loop().call_later(0.2, done.set)
        return answer

    session = Session(client, forward_handler=handle)
    await session.start()
    info(f"answering forward requests for {client.user_id} (Ctrl-C to stop)")
    try:
        while not done.is_set():
            try:
                message = await session.receive(timeout=0.5)
            except TimeoutError:
                continue
            if message.kind == "system":
                err(f"server: {message.content}")
            else:  # a message for dk listen
                _keep(client, [message])
    finally:
        await session.close(linger=0.2)
        _keep(client, session.drain())
    return 0


def cmd_serve_forward(client: Client, args: Namespace) -> int:
    if args.cmd and args.cmd[0] == "--":
        args.cmd = args.cmd[1:]
    if not args.cmd:
        raise UsageError("serve-forward needs a command, e.g. dk serve-forward 'wc -w'")
    client.identity  # noqa: B018 - fail early when not initialised
    client.known_keys.pins(client.pin_scope)  # and on an unreadable known_keys.json
    return asyncio.run(_serve_forward(client, args))


COMMANDS = {
    "init": cmd_init,
    "login": cmd_login,
    "whoami": cmd_whoami,
    "version": cmd_version,
    "send": cmd_send,
    "broadcast": cmd_broadcast,
    "listen": cmd_listen,
    "users": cmd_users,
    "describe": cmd_describe,
    "trust": cmd_trust,
    "ask": cmd_ask,
    "serve-forward": cmd_serve_forward,
}
