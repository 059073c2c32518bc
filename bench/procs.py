"""Child processes of the bench: the servers under test and the load generators.

Every child gets the raised ``RLIMIT_NOFILE`` and ``PR_SET_PDEATHSIG`` (it is
killed if the runner dies), and the runner kills whatever is still running on
exit, error or not (:func:`kill_all`).
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import resource
import signal
import socket
import sys
import time

import orjson

_CHILDREN: list[asyncio.subprocess.Process] = []
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def _child_setup() -> None:  # runs in the forked child before exec
    raise_nofile()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    os.setpgid(0, 0)  # own process group: a ^C to the runner is ours to relay


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """utime + stime of a whole process (all threads), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def children(ppid: int) -> list[int]:
    """The pids whose parent is ``ppid`` (from /proc)."""
    out = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read().rsplit(b")", 1)[1].split()
            if int(stat[1]) == ppid:
                out.append(int(entry.name))
        except (OSError, IndexError, ValueError):
            continue
    return out


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds of ``root`` and its children (a postmaster and its
    backends); processes that are gone meanwhile count nothing."""
    total = 0.0
    for pid in [root, *children(root)]:
        try:
            total += cpu_seconds(pid)
        except (OSError, ValueError, IndexError):
            continue
    return total


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


async def spawn(argv, log_path, env=None, stdin=None, stdout=None):
    log = open(log_path, "ab")
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=stdin,
            stdout=stdout if stdout is not None else log,
            stderr=log,
            env=env,
            preexec_fn=_child_setup,
            limit=2**26,
        )
    finally:
        log.close()
    _CHILDREN.append(proc)
    return proc


async def stop(proc: asyncio.subprocess.Process, grace: float = 10.0) -> None:
    if proc.returncode is None:
        try:
            proc.terminate()
        except ProcessLookupError:
            pass
        try:
            await asyncio.wait_for(proc.wait(), grace)
        except TimeoutError:
            try:
                proc.kill()
            except ProcessLookupError:
                pass
            await proc.wait()
    if proc in _CHILDREN:
        _CHILDREN.remove(proc)


def kill_all() -> None:
    """Last resort (also on error): SIGKILL every child still running, by pid."""
    for proc in list(_CHILDREN):
        if proc.returncode is None:
            try:
                os.kill(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    _CHILDREN.clear()


class ServerProc:
    """dkserver (twistd) or the ceiling relay, started and watched."""

    def __init__(self, name: str, argv: list[str], env: dict, port: int, log: str):
        self.name, self.argv, self.env, self.port, self.log = name, argv, env, port, log
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def start(self, timeout: float = 60.0) -> None:
        self.proc = await spawn(self.argv, self.log, env=self.env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.returncode is not None:
                raise RuntimeError(f"{self.name} exited: {self.tail()}")
            try:
                _, w = await asyncio.open_connection("127.0.0.1", self.port)
                w.close()
                return
            except OSError:
                await asyncio.sleep(0.1)
        raise RuntimeError(f"{self.name} did not listen in {timeout} s: {self.tail()}")

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def rss(self) -> int:
        return rss_kib(self.pid)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def tail(self, n: int = 15) -> str:
        try:
            with open(self.log, "rb") as f:
                lines = f.read().decode("utf-8", "replace").splitlines()
            return "\n".join(lines[-n:])
        except OSError:
            return ""

    async def stop(self) -> None:
        if self.proc is not None:
            await stop(self.proc)


class LoadGenError(RuntimeError):
    pass


class LoadGen:
    """One ``python -m bench.loadgen`` process; JSON lines both ways."""

    def __init__(self, proc, log: str, name: str) -> None:
        self.proc, self.log, self.name = proc, log, name
        self._pending: list[dict] = []

    @classmethod
    async def start(cls, job: dict, log: str, name: str) -> LoadGen:
        proc = await spawn(
            [sys.executable, "-m", "bench.loadgen"],
            log,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        gen = cls(proc, log, name)
        gen.send(job)
        return gen

    def send(self, obj: dict) -> None:
        if self.proc.returncode is None:
            self.proc.stdin.write(orjson.dumps(obj) + b"\n")

    def command(self, cmd: str, **fields) -> None:
        self.send({"cmd": cmd, **fields})

    async def _read(self, timeout: float) -> dict:
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        except TimeoutError:
            raise LoadGenError(f"{self.name}: no event within {timeout} s")
        if not line:
            await self.proc.wait()
            raise LoadGenError(
                f"{self.name} exited ({self.proc.returncode}): {self.tail()}"
            )
        event = orjson.loads(line)
        if event.get("ev") == "error":
            raise LoadGenError(
                f"{self.name}: {event.get('error')}\n{event.get('tb', '')}"
            )
        return event

    async def expect(self, ev: str, timeout: float = 120.0, **match) -> dict:
        """The next event named ``ev`` (other events are kept for later)."""
        for i, event in enumerate(self._pending):
            if event["ev"] == ev and all(event.get(k) == v for k, v in match.items()):
                return self._pending.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            event = await self._read(max(0.01, deadline - time.monotonic()))
            if event["ev"] == ev and all(event.get(k) == v for k, v in match.items()):
                return event
            self._pending.append(event)

    def tail(self, n: int = 20) -> str:
        try:
            with open(self.log, "rb") as f:
                return "\n".join(f.read().decode("utf-8", "replace").splitlines()[-n:])
        except OSError:
            return ""

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    def rss(self) -> int:
        return rss_kib(self.proc.pid)

    async def stop(self) -> None:
        if self.proc.returncode is None:
            try:
                self.command("quit")
                self.proc.stdin.close()
            except (BrokenPipeError, ConnectionResetError, RuntimeError):
                pass
            try:
                await asyncio.wait_for(self.proc.wait(), 5)
            except TimeoutError:
                pass
        await stop(self.proc, grace=3)


async def start_all(jobs: list[dict], log_dir: str, name: str) -> list[LoadGen]:
    gens = []
    for i, job in enumerate(jobs):
        gens.append(
            await LoadGen.start(job, os.path.join(log_dir, f"{name}-{i}.log"), name)
        )
    return gens


async def stop_all(gens: list[LoadGen]) -> None:
    await asyncio.gather(*(g.stop() for g in gens), return_exceptions=True)
