"""The soak's client side: one load generator's share of the users under a
steady mixed load (the ``soak`` job of ``bench.loadgen``).

Every user of the job belongs to this process, so a direct message's sender
and recipient are both here and its latency is ``receive - send`` on one
monotonic clock (its send time is kept by sequence number; the signed
content carries only the number).  The users are of two kinds:

- *steady* users connect once and stay (they are the latency probes);
- *churners* log in (challenge + verify over HTTPS), connect, stay a while,
  leave (a clean close or an abort, like a lost network), stay away a while
  and come back, getting what was sent to them meanwhile as backlog.

At fixed rates: direct messages from an online user to a steady user (the
latency sample), to an online churner, or to an offline churner (stored,
delivered on its next connect); broadcasts from an online user; REST reads
(``/active-users``, ``/auth/users/{id}``, ``/auth/check-userid/{id}``,
``/user/descriptions/{id}``) and, with the admin's token, ``/stats`` every
``stats_every_s``.
Messages are signed when sent (a few hundred a second: no pre-signed pool
needed).

On ``sample`` the job answers ``tick`` with what happened since the last
one; on ``stop`` every churner comes back, the job waits for every message
still owed (``drain_s`` at most) and answers ``result`` with the totals:
a message never received is ``undelivered``, one received twice a
``duplicate``.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable

import orjson

from bench import wire

#: What each interval counts (the ``tick`` event's fields, besides latencies).
COUNTERS = (
    "dm_sent",
    "dm_to_offline",
    "dm_received",
    "bc_sent",
    "bc_received",
    "logins",
    "connects",
    "disconnects",
    "aborts",
    "unexpected_closes",
    "rest_reads",
    "rest_errors",
    "errors",
)


class Member:
    __slots__ = ("key", "steady", "token", "uid", "ws")

    def __init__(self, uid: str, token: str, steady: bool) -> None:
        self.uid, self.token, self.steady = uid, token, steady
        self.key = wire.signing_key(uid)
        self.ws: wire.WsClient | None = None


class Soak:
    def __init__(self, job: dict, ctx, emit: Callable[..., None]) -> None:
        self.job, self.ctx, self.emit = job, ctx, emit
        self.port = job["port"]
        self.tag = job["tag"]
        rng_seed = job.get("seed")
        self.rng = random.Random(rng_seed)
        n_steady = max(2, round(len(job["users"]) * job["steady_share"]))
        self.members = [
            Member(uid, token, i < n_steady)
            for i, (uid, token) in enumerate(job["users"])
        ]
        self.steady = [m for m in self.members if m.steady]
        self.churners = [m for m in self.members if not m.steady]
        self.others = job.get("others", [])  # user ids of the other processes
        self.stopping = asyncio.Event()
        self.seq = 0
        #: seq -> (send time ns, recipient is steady)
        self.owed: dict[int, tuple[int, bool]] = {}
        self.counts = dict.fromkeys(COUNTERS, 0)
        self.totals = dict.fromkeys(COUNTERS, 0)
        self.duplicates = 0
        self.dm_lat: list[int] = []
        self.bc_lat: list[int] = []
        self.rest_lat: list[int] = []
        self.error_sample: list[str] = []
        self.http_pool: asyncio.Queue[wire.HttpClient] = asyncio.Queue()
        self.tasks: list[asyncio.Task] = []
        self.rest_conns: dict[str, wire.HttpClient] = {}

    # -- bookkeeping ---------------------------------------------------------

    def count(self, name: str, n: int = 1) -> None:
        self.counts[name] += n
        self.totals[name] += n

    def error(self, what: str, exc: BaseException) -> None:
        self.count("errors")
        if len(self.error_sample) < 10:
            self.error_sample.append(f"{what}: {type(exc).__name__}: {exc}")

    def online(self) -> list[Member]:
        return [m for m in self.members if m.ws is not None]

    def tick(self) -> dict:
        out = {
            **self.counts,
            "dm_lat_us": self.dm_lat,
            "bc_lat_us": self.bc_lat,
            "rest_lat_us": self.rest_lat,
            "online": len(self.online()),
            "owed": len(self.owed),
        }
        self.counts = dict.fromkeys(COUNTERS, 0)
        self.dm_lat, self.bc_lat, self.rest_lat = [], [], []
        return out

    # -- receiving -----------------------------------------------------------

    def on_message(self, member: Member, payload: bytes) -> None:
        try:
            content = orjson.loads(payload).get("content")
        except (orjson.JSONDecodeError, AttributeError):
            return
        if not isinstance(content, str):
            return  # a system frame
        if content.startswith("d|"):
            seq = int(content.split("|", 3)[2])
            sent = self.owed.pop(seq, None)
            if sent is None:
                self.duplicates += 1
                return
            self.count("dm_received")
            if sent[1]:
                self.dm_lat.append((time.perf_counter_ns() - sent[0]) // 1000)
        elif content.startswith("b|"):
            self.count("bc_received")
            if member.steady:
                ns = int(content.split("|", 2)[1])
                self.bc_lat.append((time.time_ns() - ns) // 1000)

    # -- connecting ----------------------------------------------------------

    async def http(self) -> wire.HttpClient:
        return await wire.http_connect(self.port, self.ctx)

    async def login(self, member: Member) -> str:
        http = await self.http_pool.get()
        try:
            token = await wire.login(http, member.uid, member.key)
        except (ConnectionError, OSError, TimeoutError):
            http.close()
            http = await self.http()  # the keep-alive connection went away
            token = await wire.login(http, member.uid, member.key)
        finally:
            self.http_pool.put_nowait(http)
        self.count("logins")
        return token

    async def connect(self, member: Member, fresh_login: bool) -> bool:
        try:
            if fresh_login:
                member.token = await self.login(member)
            ws = await wire.ws_connect(
                self.port,
                wire.dk_path(member.token),
                self.ctx,
                lambda payload, m=member: self.on_message(m, payload),
            )
        except (ConnectionError, OSError, TimeoutError, RuntimeError) as e:
            self.error(f"connect {member.uid}", e)
            return False
        member.ws = ws
        ws.closed.add_done_callback(lambda _f, m=member, w=ws: self.lost(m, w))
        self.count("connects")
        return True

    def lost(self, member: Member, ws: wire.WsClient) -> None:
        """The connection closed; not by us if the member still holds it."""
        if member.ws is ws:
            member.ws = None
            self.count("unexpected_closes")
            if member.steady and not self.stopping.is_set():
                self.spawn(self.reconnect(member))

    async def reconnect(self, member: Member) -> None:
        while member.ws is None:
            if await self.connect(member, fresh_login=True):
                return
            await asyncio.sleep(1.0)

    def disconnect(self, member: Member) -> None:
        ws, member.ws = member.ws, None
        if ws is None:
            return
        if self.rng.random() < self.job["abort_share"]:
            ws.abort()
            self.count("aborts")
        else:
            ws.close()
            self.count("disconnects")

    async def pause(self, seconds: float) -> bool:
        """Sleep; ``True`` if the soak is stopping (the sleep ends early)."""
        try:
            await asyncio.wait_for(self.stopping.wait(), seconds)
        except TimeoutError:
            return False
        return True

    async def churn(self, member: Member) -> None:
        lo, hi = self.job["offline_s"]
        await self.pause(self.rng.uniform(0, hi))  # staggered first connects
        while True:
            if not await self.connect(member, fresh_login=True):
                await asyncio.sleep(1.0)  # also while stopping: it must come back
                continue
            if self.stopping.is_set():
                return  # stays online for the drain
            if await self.pause(self.rng.uniform(*self.job["online_s"])):
                return
            self.disconnect(member)
            await self.pause(self.rng.uniform(lo, hi))

    # -- sending -------------------------------------------------------------

    def send_dm(self) -> None:
        online = self.online()
        if len(online) < 2:
            return
        sender = self.rng.choice(online)
        roll = self.rng.random()
        offline = [m for m in self.churners if m.ws is None]
        if roll < self.job["offline_share"] and offline:
            to = self.rng.choice(offline)
        elif roll < self.job["offline_share"] + self.job["churner_share"]:
            to = self.rng.choice([m for m in online if not m.steady] or online)
        else:
            to = self.rng.choice(self.steady)
        if to is sender:
            return
        self.seq += 1
        content = f"d|{self.tag}|{self.seq}|{self.job['pad']}"
        payload = wire.signed_message(sender.key, sender.uid, to.uid, content)
        self.owed[self.seq] = (time.perf_counter_ns(), to.steady and to.ws is not None)
        sender.ws.send(payload)
        self.count("dm_sent")
        if to.ws is None:
            self.count("dm_to_offline")

    def send_broadcast(self) -> None:
        online = self.online()
        if not online:
            return
        sender = self.rng.choice(online)
        content = f"b|{time.time_ns()}|{self.tag}"
        sender.ws.send(
            wire.signed_message(sender.key, sender.uid, "broadcast", content)
        )
        self.count("bc_sent")

    async def paced(self, per_s: float, action: Callable[[], object]) -> None:
        """Run ``action`` ``per_s`` times a second until stopping; a schedule
        more than a second behind (the box was busy) skips ahead."""
        if per_s <= 0:
            return
        t0 = time.perf_counter()
        done = 0
        behind = max(1.0, per_s)
        while not self.stopping.is_set():
            due = int((time.perf_counter() - t0) * per_s)
            if due - done > behind:
                done = due - int(behind)
            while done < due:
                done += 1
                result = action()
                if asyncio.iscoroutine(result):
                    await result
            await self.pause(min(0.05, 1.0 / per_s))

    async def rest_read(self) -> None:
        everyone = [m.uid for m in self.members] + self.others
        uid = self.rng.choice(everyone)
        choices = [
            ("/active-users", None),
            (f"/auth/users/{uid}", None),
            (f"/auth/check-userid/{uid}", None),
            (f"/user/descriptions/{uid}", None),
        ]
        await self.get(*self.rng.choice(choices))

    async def read_stats(self) -> None:
        """``/stats`` as an admin's dashboard polls it (it counts over whole
        tables: not a read for every second)."""
        auth = {"Authorization": f"Bearer {self.job['admin_token']}"}
        await self.get("/stats", auth, conn="stats")

    async def get(self, path: str, headers=None, conn: str = "rest") -> None:
        """One GET on the keep-alive connection ``conn`` (one request at a
        time each: the REST loop and the /stats poll have their own)."""
        t0 = time.perf_counter_ns()
        for attempt in (1, 2):
            http = self.rest_conns[conn]
            try:
                status, _ = await http.request("GET", path, headers=headers)
                break
            except (ConnectionError, OSError, TimeoutError) as e:
                # The server may close an idle keep-alive connection (the
                # /stats one waits 30 s): a new connection, one more try.
                http.close()
                self.rest_conns[conn] = await self.http()
                if attempt == 2:
                    self.error(f"GET {path.split('/')[1]}", e)
                    return
        self.rest_lat.append((time.perf_counter_ns() - t0) // 1000)
        self.count("rest_reads")
        if status >= 500 or status in (401, 403):
            self.count("rest_errors")
            if len(self.error_sample) < 10:
                self.error_sample.append(f"GET {path}: {status}")

    def spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.append(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.error("task", task.exception())

    # -- the job -------------------------------------------------------------

    async def run(self, ctl) -> None:
        for _ in range(self.job.get("http_conns", 4)):
            self.http_pool.put_nowait(await self.http())
        self.rest_conns = {"rest": await self.http(), "stats": await self.http()}
        sem = asyncio.Semaphore(16)

        async def first(m: Member) -> None:
            async with sem:
                await self.connect(m, fresh_login=False)

        await asyncio.gather(*(first(m) for m in self.steady))
        missing = [m.uid for m in self.steady if m.ws is None]
        if missing:
            self.emit("error", error=f"steady users not connected: {missing[:3]}")
            return
        self.tick()  # the setup's connects are not load
        self.emit("ready", steady=len(self.steady), churners=len(self.churners))
        await ctl.expect("go")
        cpu0 = time.process_time()
        for m in self.churners:
            self.spawn(self.churn(m))
        self.spawn(self.paced(self.job["dm_per_s"], self.send_dm))
        self.spawn(self.paced(self.job["bc_per_s"], self.send_broadcast))
        self.spawn(self.paced(self.job["rest_per_s"], self.rest_read))
        if self.job.get("admin_token") and self.job.get("stats_every_s"):
            self.spawn(self.paced(1.0 / self.job["stats_every_s"], self.read_stats))
        while True:
            msg = await ctl.next()
            if msg.get("cmd") == "sample":
                self.emit("tick", **self.tick(), cpu_s=time.process_time() - cpu0)
            elif msg.get("cmd") in ("stop", "quit"):
                break
        await self.finish(cpu0)

    async def finish(self, cpu0: float) -> None:
        self.stopping.set()
        deadline = time.monotonic() + self.job.get("drain_s", 30.0)
        # Every churner comes back (its own task connects it: its backlog
        # arrives), and whatever is still owed has until the deadline.
        while time.monotonic() < deadline:
            if not self.owed and all(m.ws is not None for m in self.members):
                break
            await asyncio.sleep(0.2)
        await asyncio.sleep(self.job.get("settle_s", 1.0))  # late broadcasts
        tick = self.tick()
        self.emit(
            "result",
            **{f"total_{k}": v for k, v in self.totals.items()},
            last_tick=tick,
            undelivered=len(self.owed),
            duplicates=self.duplicates,
            error_sample=self.error_sample,
            cpu_s=time.process_time() - cpu0,
        )
        for task in self.tasks:
            task.cancel()
        for m in self.members:
            ws, m.ws = m.ws, None
            if ws is not None:
                ws.close()
        while not self.http_pool.empty():
            self.http_pool.get_nowait().close()
        for http in self.rest_conns.values():
            http.close()
        await asyncio.sleep(0.2)
        self.emit("closed")
