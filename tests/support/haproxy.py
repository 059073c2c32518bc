"""A real HAProxy (Debian's package) in front of dkserver nodes, for the tests.

Started from the installed binary in a temporary directory: a TCP frontend on
a free loopback port, the nodes as backends with ``send-proxy`` or
``send-proxy-v2`` and the health check of docs/deployment.md ("Behind a load
balancer"), and an admin socket to read the servers' check states from.  The
process dies with the test process (``setpriv --pdeathsig``), so a killed run
leaves no balancer behind.

``DK_TEST_REQUIRE_HAPROXY`` (set by .ci/run) makes a missing binary a test
failure instead of a skip.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

from tests.reliability.daemon import free_port
from tests.support.waiting import wait_for

ENV_REQUIRE = "DK_TEST_REQUIRE_HAPROXY"


def find_haproxy() -> str | None:
    """``haproxy`` on PATH, or where Debian puts it (``/usr/sbin``)."""
    found = shutil.which("haproxy")
    if found is None and os.access("/usr/sbin/haproxy", os.X_OK):
        found = "/usr/sbin/haproxy"
    return found


def _dying_with_us(argv: list[str]) -> list[str]:
    """``argv`` run so that it is killed when this process dies (util-linux's
    ``setpriv``, essential on Debian; ``preexec_fn`` is unsafe with threads)."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", *argv] if setpriv else argv


class HAProxy:
    """One HAProxy process balancing ``backends`` (ports on 127.0.0.1)."""

    def __init__(
        self, binary: str, directory: Path, backends: list[int], send_proxy: str
    ) -> None:
        assert send_proxy in ("send-proxy", "send-proxy-v2")
        self.binary = binary
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.backends = backends
        self.send_proxy = send_proxy
        self.socket_path = self.dir / "admin.sock"
        self.config_path = self.dir / "haproxy.cfg"
        self.log_path = self.dir / "haproxy.log"
        self.proc: subprocess.Popen | None = None

    def config_text(self) -> str:
        servers = "\n".join(
            f"    server node{i} 127.0.0.1:{port}"
            for i, port in enumerate(self.backends)
        )
        return f"""\
global
    stats socket {self.socket_path} mode 600 level admin

defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h

frontend dkserver_https
    bind 127.0.0.1:{self.port}
    default_backend dkserver

backend dkserver
    # round robin (not leastconn) so the test knows which node gets what
    balance roundrobin
    option httpchk
    http-check send meth GET uri /readyz ver HTTP/1.1 hdr Host localhost
    http-check expect status 200
    default-server {self.send_proxy} check check-ssl verify none check-send-proxy inter 200ms
{servers}
"""  # noqa: E501 (HAProxy's line, as docs/deployment.md shows it)

    async def start(self, timeout: float = 20.0) -> None:
        """Start and wait until every node passes the health check."""
        self.config_path.write_text(self.config_text())
        check = subprocess.run(
            [self.binary, "-c", "-f", str(self.config_path)],
            capture_output=True,
            text=True,
        )
        assert check.returncode == 0, check.stdout + check.stderr
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                _dying_with_us([self.binary, "-db", "-f", str(self.config_path)]),
                cwd=self.dir,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            await wait_for(self._healthy, "haproxy's health checks", timeout, 0.1)
        except AssertionError as e:
            states = self.server_states()
            raise AssertionError(f"{e}: {states}\n{self.log_text()}") from None

    def _healthy(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"haproxy exited with {self.proc.returncode}")
        states = self.server_states() if self.socket_path.exists() else {}
        return len(states) == len(self.backends) and all(
            state == ("UP", "L7OK") for state in states.values()
        )

    def server_states(self) -> dict[str, tuple[str, str]]:
        """``{server: (status, check_status)}`` from the admin socket."""
        try:
            rows = self._command("show stat").splitlines()
        except OSError:
            return {}
        if not rows or not rows[0].startswith("# "):
            return {}
        names = rows[0][2:].split(",")
        states = {}
        for row in rows[1:]:
            fields = dict(zip(names, row.split(","), strict=False))
            if fields.get("pxname") == "dkserver" and fields.get(
                "svname", ""
            ).startswith("node"):
                states[fields["svname"]] = (fields["status"], fields["check_status"])
        return states

    def _command(self, command: str) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(2)
            s.connect(str(self.socket_path))
            s.sendall(command.encode() + b"\n")
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
