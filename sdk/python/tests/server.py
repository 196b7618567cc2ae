"""Starts the real fleetwire server on loopback for a test.

The binary is $FLEETWIRE_BIN, default <repo>/target/debug/fleetwire. It
runs `serve` with UDP and HTTP on 127.0.0.1 port 0 and QUIC off (or on,
when asked), and the bound addresses are read from its log lines
("listening" with transport="udp" / "http" / "quic" and addr=...).
"""

import json
import os
import re
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request

from conftest import REPO

BIN = os.environ.get("FLEETWIRE_BIN") or os.path.join(REPO, "target", "debug", "fleetwire")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_LISTEN = re.compile(r'transport="?(\w+)"?.*?\baddr=([^\s]+)')


class Server:
    def __init__(self, data_dir, *extra, quic=False):
        self.log = []
        self.data_dir = str(data_dir)
        self.addrs = {}
        self._found = threading.Condition()
        args = [BIN, "serve", "--udp-listen", "127.0.0.1:0",
                "--quic-listen", "127.0.0.1:0" if quic else "off",
                "--http-listen", "127.0.0.1:0", "--teltonika-listen", "off",
                "--osmand-listen", "off", "--data-dir", str(data_dir), *extra]
        # The server reads every FLEETWIRE_<KEY> variable as configuration
        # and refuses unknown keys (FLEETWIRE_BIN, FLEETWIRE_STATE_DIR, ...).
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETWIRE_")}
        env.update(RUST_LOG="info", NO_COLOR="1")
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     env=env, text=True, errors="replace")
        threading.Thread(target=self._read, daemon=True).start()
        want = {"udp", "http"} | ({"quic"} if quic else set())
        deadline = time.monotonic() + 60
        with self._found:
            while not want <= set(self.addrs):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("fleetwire serve did not start:\n" + "".join(self.log))
                self._found.wait(0.1)
        host, port = self.addrs["udp"].rsplit(":", 1)
        self.udp = f"{host}:{port}"
        self.http = "http://" + self.addrs["http"]
        self.quic = self.addrs.get("quic")

    def _read(self):
        for line in self.proc.stderr:
            line = _ANSI.sub("", line)
            self.log.append(line)
            if "listening" in line:
                m = _LISTEN.search(line)
                if m:
                    with self._found:
                        self.addrs.setdefault(m.group(1), m.group(2))
                        self._found.notify_all()

    def get(self, path):
        """The JSON of an HTTP GET (None for a 404)."""
        try:
            with urllib.request.urlopen(self.http + path, timeout=10) as r:
                body = r.read()
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return None
            raise
        return json.loads(body)

    def text(self, path):
        with urllib.request.urlopen(self.http + path, timeout=10) as r:
            return r.read().decode()

    def metric(self, name, **labels):
        """The value of one Prometheus sample of /metrics (0 if absent)."""
        total = 0.0
        for line in self.text("/metrics").splitlines():
            if not line.startswith(name) or line.startswith("#"):
                continue
            m = re.match(r"([a-zA-Z_:][\w:]*)(\{(.*)\})?\s+(\S+)$", line)
            if not m or m.group(1) != name:
                continue
            got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(3) or ""))
            if all(got.get(k) == str(v) for k, v in labels.items()):
                total += float(m.group(4))
        return total

    def wait_for(self, what, check, timeout=30):
        """Polls check() until it returns something true; fails with `what`
        and the last value after `timeout` seconds. (Waits for datagrams to
        be processed; never asserts on how long that took.)"""
        deadline = time.monotonic() + timeout
        while True:
            value = check()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; last: {value!r}")
            time.sleep(0.05)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
