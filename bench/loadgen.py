"""A load generator process: ``python -m bench.loadgen``.

The runner starts one or more of these per scenario, so the load's CPU is
separate from the runner's and from the server's.  Control is line-based JSON:
the first stdin line is the job; then the runner sends commands (``go``,
``send``, ``big``, ``quit``) and the process answers with events on stdout
(``ready``, ``result``, ``sent``, ``got``, ``big_done``, ``error``).  EOF on
stdin, or the job's ``max_s``, ends the process.

Signed messages and the latency clock (the choice the issue asks about):
signing costs ~30 µs of client CPU per message here, as much as a third of
what the server spends relaying it, so every hot-path frame is signed,
serialized and masked *before* the timed phase ("pre-signed pool"): its
signature is genuine (PROTOCOL.md: Ed25519 over ``from|to|nanos|content``)
and its ``timestamp`` is the pre-sign instant.  The send time therefore cannot
be inside the signed content; instead the content carries a sequence number
(``b<seq>|...``) and the sender and the receiver of a pair live in the *same*
process, which keeps the send time of each sequence number and takes
``receive - send`` on one monotonic clock.  The pre-sign cost per message is
measured and reported (``presign_us``).  Broadcast arrivals, compared across
processes, use ``time.time_ns()`` (one wall clock on one box).
"""

from __future__ import annotations

import asyncio
import os
import resource
import sys
import time
import traceback

import orjson

from bench import wire


def cpu_seconds() -> float:
    return time.process_time()  # user + system of this process


def emit(event: str, **fields) -> None:
    sys.stdout.write(orjson.dumps({"ev": event, **fields}).decode() + "\n")
    sys.stdout.flush()


class Control:
    """Commands from the runner, one JSON object per stdin line."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self.reader = reader

    async def next(self) -> dict:
        line = await self.reader.readline()
        if not line:
            raise SystemExit(0)  # the runner went away
        return orjson.loads(line)

    async def expect(self, cmd: str) -> dict:
        while True:
            msg = await self.next()
            if msg.get("cmd") == "quit":
                raise SystemExit(0)
            if msg.get("cmd") == cmd:
                return msg


async def connect_many(port, ctx, specs, concurrency, make_callbacks=None):
    """Open WebSockets for ``specs`` (``[uid, path]``) with bounded concurrency
    (dkserver listens with Twisted's default backlog of 50)."""
    sem = asyncio.Semaphore(concurrency)
    conns: list = [None] * len(specs)
    failures: list[str] = []

    async def one(i, path):
        on_message, on_batch = make_callbacks(i) if make_callbacks else (None, None)
        async with sem:
            for attempt in range(3):
                try:
                    conns[i] = await wire.ws_connect(
                        port, path, ctx, on_message, on_batch
                    )
                    return
                except (TimeoutError, OSError, ConnectionError) as e:
                    if attempt == 2:
                        failures.append(f"{type(e).__name__}: {e}")
                    else:
                        await asyncio.sleep(0.2)

    await asyncio.gather(*(one(i, spec[1]) for i, spec in enumerate(specs)))
    return conns, failures


# --- users: register + login -------------------------------------------------


async def job_users(job, ctl, ctx) -> None:
    users: list[str] = job["users"]
    nconn = max(1, min(job.get("conns", 16), len(users)))
    https = [await wire.http_connect(job["port"], ctx) for _ in range(nconn)]
    keys = {u: wire.signing_key(u) for u in users}
    tokens: dict[str, str] = {}
    bad: list[str] = []

    async def worker(http, queue, fn):
        while queue:
            uid = queue.pop()
            await fn(http, uid)

    async def reg(http, uid):
        status = await wire.register(http, uid, keys[uid])
        if status not in (201, 409):
            bad.append(f"register {uid}: {status}")

    async def log_in(http, uid):
        tokens[uid] = await wire.login(http, uid, keys[uid])

    t0 = time.perf_counter()
    queue = list(users)
    await asyncio.gather(*(worker(h, queue, reg) for h in https))
    t1 = time.perf_counter()
    queue = list(users)
    await asyncio.gather(*(worker(h, queue, log_in) for h in https))
    t2 = time.perf_counter()
    for h in https:
        h.close()
    with open(job["out"], "wb") as f:
        f.write(orjson.dumps(tokens))
    emit(
        "result",
        users=len(users),
        tokens=len(tokens),
        register_s=t1 - t0,
        login_s=t2 - t1,
        errors=bad[:5],
        nerrors=len(bad),
    )


# --- logins/s ----------------------------------------------------------------


async def job_logins(job, ctl, ctx) -> None:
    users: list[str] = job["users"]
    https = [await wire.http_connect(job["port"], ctx) for _ in users]
    keys = [wire.signing_key(u) for u in users]
    emit("ready")
    await ctl.expect("go")
    duration = job["duration"]
    counts = [0] * len(users)
    cpu0 = cpu_seconds()
    start_ns = time.time_ns()
    deadline = time.perf_counter() + duration

    async def loop(i):
        while time.perf_counter() < deadline:
            await wire.login(https[i], users[i], keys[i])
            counts[i] += 1

    await asyncio.gather(*(loop(i) for i in range(len(users))))
    end_ns = time.time_ns()
    emit(
        "result",
        logins=sum(counts),
        start_ns=start_ns,
        end_ns=end_ns,
        cpu_s=cpu_seconds() - cpu0,
    )
    for h in https:
        h.close()


# --- relay -------------------------------------------------------------------


class Pair:
    """One sender and one receiver connection; both ends in this process."""

    __slots__ = (
        "batch",
        "count",
        "frames",
        "lat",
        "on_done",
        "owed",
        "received",
        "receiver",
        "sender",
        "sent",
        "stray",
        "t_send",
        "window",
    )

    def __init__(
        self, frames: list[bytes], window: int, batch: int, lat: list, on_done
    ) -> None:
        self.frames = frames
        self.count = len(frames)
        self.t_send = [0] * self.count
        self.window = window
        self.batch = batch
        self.sent = 0
        self.owed = 0
        self.received = 0
        self.stray = 0
        self.lat = lat
        self.on_done = on_done
        self.sender: wire.WsClient | None = None
        self.receiver: wire.WsClient | None = None

    def on_message(self, payload: bytes) -> None:
        p = payload.find(b'"content":"b')
        if p < 0:
            self.stray += 1
            return
        seq = int(payload[p + 12 : p + 21])
        self.lat.append(time.perf_counter_ns() - self.t_send[seq])
        self.received += 1
        if self.received == self.count:
            self.on_done()

    def _send(self, sent: int, target: int, now: int) -> None:
        t_send = self.t_send
        for s in range(sent, target):
            t_send[s] = now
        frames = self.frames
        write = self.sender.write
        batch = self.batch
        if batch == 1:
            for s in range(sent, target):
                write(frames[s])
        else:
            for s in range(sent, target, batch):
                write(b"".join(frames[s : min(target, s + batch)]))
        self.sent = target

    def refill(self) -> None:
        """Closed loop: keep ``window`` messages in flight."""
        target = min(self.count, self.received + self.window)
        if target > self.sent and self.sender is not None:
            self._send(self.sent, target, time.perf_counter_ns())

    def pay(self, now: int, cap: int) -> None:
        """Open loop: send what the schedule owes, at most ``cap`` in flight."""
        target = min(self.sent + self.owed, self.count, self.received + cap)
        if target > self.sent:
            self.owed -= target - self.sent
            self._send(self.sent, target, now)


def build_frames(sender: str, receiver: str, count: int, size: int) -> list[bytes]:
    key = wire.signing_key(sender)
    pad = "x" * max(0, size - 11)
    return [
        wire.client_frame(
            wire.signed_message(key, sender, receiver, f"b{seq:09d}|{pad}")
        )
        for seq in range(count)
    ]


async def job_relay(job, ctl, ctx) -> None:
    specs = job["pairs"]  # [sender_uid, sender_path, receiver_uid, receiver_path]
    count, size = job["count"], job["size"]
    rate = job.get("rate") or 0.0  # messages/s per pair; 0 = as fast as possible
    window = job["window"]
    lat: list[int] = []
    done = asyncio.get_running_loop().create_future()
    remaining = [len(specs)]

    def pair_done():
        remaining[0] -= 1
        if remaining[0] == 0 and not done.done():
            done.set_result(None)

    c0 = cpu_seconds()
    t0 = time.perf_counter()
    batch = job.get("batch", 1)
    pairs = [
        Pair(build_frames(s, r, count, size), window, batch, lat, pair_done)
        for s, _, r, _ in specs
    ]
    presign_s = time.perf_counter() - t0
    presign_cpu = cpu_seconds() - c0

    stray_sender = [0]
    stray_sample: list[bytes] = []

    def sender_msg(payload):
        stray_sender[0] += 1
        if len(stray_sample) < 3:
            stray_sample.append(payload[:200])

    def receiver_callbacks(i):
        pair = pairs[i]
        return pair.on_message, (pair.refill if not rate else None)

    # ``receiver_port``: the receivers on another server (a cluster node).
    receivers, fail_r = await connect_many(
        job.get("receiver_port", job["port"]),
        ctx,
        [(r, rp) for _, _, r, rp in specs],
        32,
        receiver_callbacks,
    )
    senders, fail_s = await connect_many(
        job["port"],
        ctx,
        [(s, sp) for s, sp, _, _ in specs],
        32,
        lambda i: (sender_msg, None),
    )
    if fail_r or fail_s:
        emit("error", error=f"connect failed: {(fail_r + fail_s)[:3]}")
        return
    for pair, s, r in zip(pairs, senders, receivers, strict=True):
        pair.sender, pair.receiver = s, r
    emit(
        "ready",
        presign_us=presign_s * 1e6 / max(1, count * len(pairs)),
        presign_cpu_us=presign_cpu * 1e6 / max(1, count * len(pairs)),
    )
    await ctl.expect("go")
    cpu0 = cpu_seconds()
    start_ns = time.time_ns()
    if not rate:
        for pair in pairs:
            pair.refill()
        try:
            await asyncio.wait_for(done, job["max_s"])
        except TimeoutError:
            pass
    else:
        # One global schedule: message k of this process is due at t0 + k/R,
        # from pair k mod n (round-robin), so the offered rate is smooth.
        npairs = len(pairs)
        total = count * npairs
        per_s = rate * npairs
        cap = job.get("max_inflight", 256)
        t0n = time.perf_counter_ns()
        stop_at = t0n + int(job["max_s"] * 1e9)
        k = 0
        lagging: set[Pair] = set()  # pairs at the in-flight cap
        while not done.done():
            now = time.perf_counter_ns()
            if now > stop_at:
                break
            due = min(total, int((now - t0n) * per_s / 1e9) + 1)
            while k < due:
                pair = pairs[k % npairs]
                pair.owed += 1
                k += 1
                pair.pay(now, cap)
                if pair.owed:
                    lagging.add(pair)
            for pair in list(lagging):
                pair.pay(now, cap)
                if not pair.owed:
                    lagging.discard(pair)
            if k >= total and not lagging:
                break
            wait = (t0n + k * 1e9 / per_s - time.perf_counter_ns()) / 1e9
            await asyncio.sleep(max(0.0005, wait))
        if not done.done():
            try:
                await asyncio.wait_for(done, 2.0)
            except TimeoutError:
                pass
    end_ns = time.time_ns()
    cpu = cpu_seconds() - cpu0
    # The end of the timed phase is the last delivery, not the end of waiting.
    emit(
        "result",
        delivered=sum(p.received for p in pairs),
        sent=sum(p.sent for p in pairs),
        expected=count * len(pairs),
        start_ns=start_ns,
        end_ns=end_ns,
        cpu_s=cpu,
        lat_us=[x // 1000 for x in lat],
        stray=sum(p.stray for p in pairs) + stray_sender[0],
        stray_sample=[s.decode("utf-8", "replace") for s in stray_sample],
    )
    await ctl.expect("close")
    for c in senders + receivers:
        c.close()
    emit("closed")


# --- broadcast fan-out ----------------------------------------------------------------


async def job_bcast(job, ctl, ctx) -> None:
    specs = job["conns"]
    rounds = job["rounds"]
    arrivals: list[list[int]] = [[] for _ in range(rounds)]
    got_events: list[asyncio.Event] = [asyncio.Event() for _ in range(rounds)]
    n = len(specs)
    others = [0]

    def on_message(payload: bytes) -> None:
        now = time.time_ns()
        p = payload.find(b'"content":"bc|')
        if p < 0:
            others[0] += 1
            return
        k = int(payload[p + 14 : payload.index(b"|", p + 14)])
        arr = arrivals[k]
        arr.append(now)
        if len(arr) == n:
            got_events[k].set()

    conns, failures = await connect_many(
        job["port"], ctx, specs, 32, lambda i: (on_message, None)
    )
    if failures:
        emit("error", error=f"{len(failures)} connects failed: {failures[:3]}")
        return
    sender = None
    frames = []
    if job.get("sender"):
        uid, path = job["sender"]
        sender = await wire.ws_connect(job["port"], path, ctx)
        key = wire.signing_key(uid)
        frames = [
            wire.client_frame(
                wire.signed_message(key, uid, "broadcast", f"bc|{k}|fan-out")
            )
            for k in range(rounds)
        ]
    emit("ready", conns=n)
    cpu0 = cpu_seconds()

    async def watch(k):
        await got_events[k].wait()
        emit("got", round=k, arrivals=arrivals[k])

    watchers = [asyncio.ensure_future(watch(k)) for k in range(rounds)] if n else []
    while True:
        msg = await ctl.next()
        if msg.get("cmd") == "send" and sender is not None:
            k = msg["round"]
            t = time.time_ns()
            sender.write(frames[k])
            emit("sent", round=k, ns=t)
        elif msg.get("cmd") in ("close", "quit"):
            break
    for w in watchers:
        w.cancel()
    emit(
        "result",
        cpu_s=cpu_seconds() - cpu0,
        others=others[0],
        counts=[len(a) for a in arrivals],
    )
    for c in conns:
        c.close()
    if sender:
        sender.close()


# --- idle connections --------------------------------------------------------


async def job_idle(job, ctl, ctx) -> None:
    specs = job["conns"]
    big_done = asyncio.Event()
    big_got = [0]
    big_want = [0]

    def on_message(payload: bytes) -> None:
        if len(payload) > 65536:
            big_got[0] += 1
            if big_got[0] >= big_want[0]:
                big_done.set()

    c0 = cpu_seconds()
    t0 = time.perf_counter()
    conns, failures = await connect_many(
        job["port"],
        ctx,
        specs,
        job.get("concurrency", 32),
        lambda i: (on_message, None),
    )
    connect_s = time.perf_counter() - t0
    opened = [c for c in conns if c is not None]
    opened_specs = [s for s, c in zip(specs, conns, strict=True) if c is not None]
    emit(
        "ready",
        opened=len(opened),
        failed=len(failures),
        failures=failures[:3],
        connect_s=connect_s,
        cpu_s=cpu_seconds() - c0,
    )
    while True:
        msg = await ctl.next()
        if msg.get("cmd") == "big":
            # Round r uses connections [r*n, (r+1)*n) of this process.
            chosen = list(range(len(opened)))[msg["round"] * msg["n"] :][: msg["n"]]
            k = len(chosen)
            big_want[0] = k
            big_got[0] = 0
            big_done.clear()
            pad = "y" * msg["size"]
            frames = []
            for i in chosen:
                uid = opened_specs[i][0]
                key = wire.signing_key(uid)
                frames.append(
                    wire.client_frame(wire.signed_message(key, uid, uid, "big|" + pad))
                )
            targets = [opened[i] for i in chosen]
            t0 = time.perf_counter()
            for c, f in zip(targets, frames, strict=True):
                c.write(f)
            ok = True
            if k:
                try:
                    await asyncio.wait_for(big_done.wait(), msg.get("timeout", 60))
                except TimeoutError:
                    ok = False
            emit("big_done", n=k, got=big_got[0], ok=ok, s=time.perf_counter() - t0)
        elif msg.get("cmd") in ("close", "quit"):
            break
    for c in opened:
        c.close()
    await asyncio.sleep(0.2)
    emit("closed")


# --- login + connect ---------------------------------------------------------


async def job_connects(job, ctl, ctx) -> None:
    """Registered users log in and open their WebSocket, ``concurrency`` at a
    time, each worker over its own HTTPS keep-alive connection; the sockets
    stay open until ``close``."""
    users: list[str] = job["users"]
    nworkers = max(1, min(job.get("concurrency", 16), len(users)))
    https = [await wire.http_connect(job["port"], ctx) for _ in range(nworkers)]
    keys = {u: wire.signing_key(u) for u in users}
    conns: list = []
    failures: list[str] = []
    emit("ready")
    await ctl.expect("go")
    cpu0 = cpu_seconds()
    start_ns = time.time_ns()
    queue = list(users)

    async def worker(http):
        while queue:
            uid = queue.pop()
            try:
                token = await wire.login(http, uid, keys[uid])
                path = wire.dk_path(token)
                conns.append(await wire.ws_connect(job["port"], path, ctx))
            except (TimeoutError, OSError, ConnectionError, RuntimeError) as e:
                failures.append(f"{uid}: {type(e).__name__}: {e}")

    await asyncio.gather(*(worker(h) for h in https))
    emit(
        "result",
        connected=len(conns),
        failed=len(failures),
        failures=failures[:3],
        start_ns=start_ns,
        end_ns=time.time_ns(),
        cpu_s=cpu_seconds() - cpu0,
    )
    await ctl.expect("close")
    for c in conns:
        c.close()
    for h in https:
        h.close()
    await asyncio.sleep(0.2)
    emit("closed")


async def store_through(port, s_uid, s_path, key, frames, ctx, max_s) -> float:
    """Send ``frames`` as ``s_uid`` and return once all are stored (seconds
    taken): frames of a connection are handled in order, so once a marker
    message to itself comes back, every message before it is stored."""
    marker = asyncio.Event()

    def sender_msg(payload: bytes) -> None:
        if b'"content":"marker"' in payload:
            marker.set()

    t0 = time.perf_counter()
    sender = await wire.ws_connect(port, s_path, ctx, sender_msg)
    for i in range(0, len(frames), 256):
        sender.write(b"".join(frames[i : i + 256]))
        await sender.drain()
    sender.write(wire.client_frame(wire.signed_message(key, s_uid, s_uid, "marker")))
    await asyncio.wait_for(marker.wait(), max_s)
    sender.close()
    return time.perf_counter() - t0


# --- backlog drain -----------------------------------------------------------


async def job_backlog(job, ctl, ctx) -> None:
    (s_uid, s_path), (r_uid, r_path) = job["sender"], job["receiver"]
    count = job["count"]
    key = wire.signing_key(s_uid)
    pad = "z" * max(0, job["size"] - 11)
    frames = [
        wire.client_frame(wire.signed_message(key, s_uid, r_uid, f"b{i:09d}|{pad}"))
        for i in range(count)
    ]
    fill_s = await store_through(
        job["port"], s_uid, s_path, key, frames, ctx, job["max_s"]
    )
    emit("ready", fill_s=fill_s)
    await ctl.expect("go")

    got = [0]
    first = [0]
    all_in = asyncio.Event()

    def receiver_msg(payload: bytes) -> None:
        if b'"content":"b' in payload:
            got[0] += 1
            if got[0] == 1:
                first[0] = time.perf_counter_ns()
            if got[0] >= count:
                all_in.set()

    cpu0 = cpu_seconds()
    start_ns = time.time_ns()
    t_connect = time.perf_counter_ns()
    receiver = await wire.ws_connect(job["port"], r_path, ctx, receiver_msg)
    t_open = time.perf_counter_ns()
    ok = True
    try:
        await asyncio.wait_for(all_in.wait(), job["max_s"])
    except TimeoutError:
        ok = False
    t_end = time.perf_counter_ns()
    emit(
        "result",
        ok=ok,
        received=got[0],
        count=count,
        total_s=(t_end - t_connect) / 1e9,
        after_open_s=(t_end - t_open) / 1e9,
        handshake_s=(t_open - t_connect) / 1e9,
        first_s=(first[0] - t_connect) / 1e9 if first[0] else None,
        start_ns=start_ns,
        cpu_s=cpu_seconds() - cpu0,
    )
    receiver.close()


# --- soak --------------------------------------------------------------------


async def job_soak(job, ctl, ctx) -> None:
    """Steady mixed load for ``python -m bench soak`` (bench/soakload.py)."""
    from bench.soakload import Soak

    await Soak(job, ctx, emit).run(ctl)


# --- public reads ------------------------------------------------------------


async def job_reads(job, ctl, ctx) -> None:
    """Clients that loop on the public reads, each over one keep-alive HTTPS
    connection from a loopback address of its own (``ip``), cycling through
    ``/active-users``, ``/auth/users/<random id>`` and (with the admin token)
    ``/stats`` until ``stop``.  Reports per-path counts by status, bytes, and
    request latency (µs)."""
    clients = job["clients"]
    https = [
        await wire.http_connect(job["port"], ctx, source_ip=c["ip"]) for c in clients
    ]
    admin = {"Authorization": f"Bearer {job['token']}"}
    paths = job["paths"]
    stats: dict[str, dict] = {
        p: {"status": {}, "bytes": 0, "lat_us": []} for p in paths
    }
    emit("ready")
    await ctl.expect("go")
    stopping = asyncio.Event()
    cpu0 = cpu_seconds()
    start_ns = time.time_ns()

    async def loop(i):
        k = i
        while not stopping.is_set():
            path = paths[k % len(paths)]
            k += 1
            url = path
            if path == "/auth/users/{random}":
                url = "/auth/users/x" + os.urandom(8).hex()
            t0 = time.perf_counter_ns()
            status, body = await https[i].request(
                "GET", url, headers=admin if path == "/stats" else None, timeout=120
            )
            s = stats[path]
            s["lat_us"].append((time.perf_counter_ns() - t0) // 1000)
            s["status"][str(status)] = s["status"].get(str(status), 0) + 1
            s["bytes"] += len(body)  # a 429 is asked again at once, as a loop would

    async def stop():
        await ctl.expect("stop")
        stopping.set()

    await asyncio.gather(stop(), *(loop(i) for i in range(len(clients))))
    end_ns = time.time_ns()
    emit(
        "result",
        stats=stats,
        start_ns=start_ns,
        end_ns=end_ns,
        cpu_s=cpu_seconds() - cpu0,
    )
    for h in https:
        h.close()


async def job_storm(job, ctl, ctx) -> None:
    """Reconnect storms for ``python -m bench storm`` (bench/storm.py)."""
    from bench.storm import loadgen_job

    await loadgen_job(job, ctl, ctx)


JOBS = {
    "storm": job_storm,
    "reads": job_reads,
    "users": job_users,
    "logins": job_logins,
    "relay": job_relay,
    "bcast": job_bcast,
    "idle": job_idle,
    "backlog": job_backlog,
    "connects": job_connects,
    "soak": job_soak,
}


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def amain() -> int:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**24)
    await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
    )
    ctl = Control(reader)
    job = await ctl.next()
    ctx = wire.client_context(job.get("cafile"))
    try:
        await asyncio.wait_for(
            JOBS[job["kind"]](job, ctl, ctx), job.get("deadline_s", 900)
        )
    except SystemExit:
        return 0
    except BaseException as e:  # reported to the runner, which fails the scenario
        emit("error", error=f"{type(e).__name__}: {e}", tb=traceback.format_exc())
        return 1
    return 0


def main() -> None:
    raise_nofile()
    try:
        code = asyncio.run(amain())
    except KeyboardInterrupt:
        code = 130
    sys.stdout.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
