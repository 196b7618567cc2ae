#!/usr/bin/env python3
"""fleetwire benchmark suite (run it with bench/run.sh).

Measures, in one run, on loopback, with the project's own binaries:
  1. the kernel's limit: `fleetwire bench sink` (recvmmsg, counts only) fed
     by `fleetwire replay` (sendmmsg) of a recorded capture of valid frames;
  2. `fleetwire serve` fed by the same sender: the highest offered rate it
     takes with zero loss, and its CPU-seconds per million datagrams;
  3. the ratios of 2 to 1, for rate and for CPU per datagram (the sink is
     measured again at the serve's zero-loss rate, so CPU is compared at the
     same offered load);
  4. QUIC DATAGRAM frames per second against UDP (both sent by `sim`);
  5. resident memory per tracked device with 1,000,000 devices, and the
     resident memory after 10,000,000 distinct device ids with the default
     max_devices (1,000,000);
  6. decode and encode nanoseconds per frame (cargo bench);
  7. Teltonika packets against native frames: records/s and CPU per record;
  8. the live stream: delay to a client, cost of clients to the receive path,
     memory of stuck clients.
Writes bench/results.json and bench/last-run.md.
"""
import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "fleetwire")


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# With two cores or more, the sender runs on core 0 and the receiver under
# test on core 1, so that the receiver's CPU use does not slow the sender
# down (they would otherwise share both cores).
PIN = shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2
SENDER = ["taskset", "-c", "0"] if PIN else []
RECEIVER = ["taskset", "-c", "1"] if PIN else []


def free_port(kind=socket.SOCK_DGRAM):
    s = socket.socket(socket.AF_INET, kind)
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def proc_cpu(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def run_json(args, prefix=(), **kw):
    out = subprocess.run(list(prefix) + [BIN] + args, capture_output=True, text=True, **kw)
    if out.returncode != 0:
        raise RuntimeError(f"{args[0]} failed: {out.stderr}")
    return json.loads(out.stdout)


class Serve:
    """A `fleetwire serve` process on loopback."""

    def __init__(self, *extra, quic=False, snapshot=False, pin=True, teltonika=False):
        self.dir = tempfile.mkdtemp(prefix="fw-bench-")
        self.http = free_port(socket.SOCK_STREAM)
        self.udp = free_port()
        self.teltonika = free_port() if teltonika else None
        tl = f"127.0.0.1:{self.teltonika}" if teltonika else "off"
        args = [BIN, "serve", "--udp-listen", f"127.0.0.1:{self.udp}", "--http-listen", f"127.0.0.1:{self.http}",
                "--teltonika-listen", tl, "--osmand-listen", "off", "--data-dir", self.dir]
        # Snapshots on (every 5 s) where memory is measured: writing one must
        # fit in the bound too.
        args += ["--snapshot", "true", "--snapshot-interval", "5s"] if snapshot else ["--snapshot", "false"]
        if quic:
            self.quic = free_port()
            args += ["--quic-listen", f"127.0.0.1:{self.quic}"]
        else:
            args += ["--quic-listen", "off"]
        self.p = subprocess.Popen((RECEIVER if pin else []) + args + list(extra), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  text=True, env=dict(os.environ, RUST_LOG="warn"))
        threading.Thread(target=lambda: [None for _ in self.p.stderr], daemon=True).start()
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                self.summary()
                return
            except Exception:
                time.sleep(0.05)
        raise RuntimeError("serve did not start")

    def get(self, path):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http}{path}", timeout=30) as r:
            return r.read().decode()

    def summary(self):
        return json.loads(self.get("/api/summary"))

    def received(self, transport="udp"):
        return self.summary()["datagrams"][transport]["received"]

    def accepted(self, transport="udp"):
        return self.summary()["datagrams"][transport]["accepted"]

    def kernel_drops(self):
        for line in self.get("/metrics").splitlines():
            if line.startswith("fleetwire_udp_receive_buffer_drops_total "):
                return int(float(line.split()[1]))
        return 0

    def cpu(self):
        return proc_cpu(self.p.pid)

    def thread_cpu(self, name):
        """CPU seconds of the server's threads called `name` (e.g. udp-rx-0)."""
        total = 0.0
        for tid in os.listdir(f"/proc/{self.p.pid}/task"):
            try:
                with open(f"/proc/{self.p.pid}/task/{tid}/comm") as f:
                    if f.read().strip() != name:
                        continue
                with open(f"/proc/{self.p.pid}/task/{tid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            except OSError:
                pass
        return total

    def metric(self, name):
        for line in self.get("/metrics").splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def records(self):
        return sum(self.summary()["records"].values())

    def rss(self):
        return proc_rss(self.p.pid)

    def wait_idle(self, transport="udp", quiet=1.0, limit=120):
        """Waits until the received count stops moving."""
        last, since = -1, time.time()
        deadline = time.time() + limit
        while time.time() < deadline:
            n = self.received(transport)
            if n != last:
                last, since = n, time.time()
            elif time.time() - since >= quiet:
                return n
            time.sleep(0.1)
        return last

    def stop(self):
        self.p.terminate()
        try:
            self.p.wait(10)
        except subprocess.TimeoutExpired:
            self.p.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def replay(cap, port, loops, rate):
    out = subprocess.run(SENDER + [BIN, "replay", cap, "--target", f"127.0.0.1:{port}", "--loop", str(loops),
                                   "--rate", str(rate), "--json"], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"replay failed: {out.stderr}")
    return json.loads(out.stdout)


def sink_trial(cap, cap_len, loops, rate):
    port = free_port()
    p = subprocess.Popen(RECEIVER + [BIN, "bench", "sink", "--listen", f"127.0.0.1:{port}", "--idle", "1.5"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    time.sleep(0.3)
    r = replay(cap, port, loops, rate)
    out, _ = p.communicate(timeout=120)
    s = json.loads(out.strip().splitlines()[-1])
    s["sent"] = r["sent"]
    s["send_rate"] = r["rate"]
    s["loss"] = r["sent"] - s["received"]
    s["cpu_per_million"] = s["cpu_seconds"] / max(s["received"], 1) * 1e6
    return s


def serve_trial(cap, loops, rate, *extra):
    srv = Serve(*extra)
    try:
        cpu0 = srv.cpu()
        r = replay(cap, srv.udp, loops, rate)
        received = srv.wait_idle()
        cpu = srv.cpu() - cpu0
        drops = srv.kernel_drops()
        return {"sent": r["sent"], "send_rate": r["rate"], "received": received, "kernel_drops": drops,
                "loss": r["sent"] - received, "cpu_seconds": cpu,
                "cpu_per_million": cpu / max(received, 1) * 1e6,
                "accepted": srv.accepted()}
    finally:
        srv.stop()


def cpu_ns(pid):
    """CPU time of every thread of `pid` so far, ns (schedstat: exact, unlike
    the tick-sampled utime/stime)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError):
            pass
    return total


# Datagrams per burst of the saturated trials: fewer than a 16 MiB receive
# buffer holds (about 30,000 small datagrams), so none is dropped.
BURST = 20_000


def drain(cap, pid, port):
    """The receiver `pid` (listening on `port`) stopped (SIGSTOP) while a
    burst of the capture fills its socket queue, then let go (SIGCONT) until
    its CPU time stops moving: it reads full batches from a full queue, and
    neither the sender's speed nor its own wake-ups enter the figure.
    Returns the CPU ns spent draining and the datagrams sent."""
    rp = subprocess.Popen(SENDER + [BIN, "replay", cap, "--target", f"127.0.0.1:{port}", "--bursts-of", str(BURST)],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    total, sent = 0, 0
    try:
        while True:
            os.kill(pid, signal.SIGSTOP)
            try:
                rp.stdin.write("go\n")
                rp.stdin.flush()
            except BrokenPipeError:
                break  # the sender sent its last burst and ended
            line = rp.stdout.readline()
            if not line:
                break
            sent = int(line.split()[1])
            c0 = cpu_ns(pid)
            os.kill(pid, signal.SIGCONT)
            last, still = c0, 0
            while still < 5:
                time.sleep(0.002)
                c = cpu_ns(pid)
                still = still + 1 if c == last else 0
                last = c
            total += last - c0
    finally:
        os.kill(pid, signal.SIGCONT)
        try:
            rp.stdin.close()
        except BrokenPipeError:
            pass
        rp.wait()
    return total, sent


def sink_drain(cap):
    port = free_port()
    p = subprocess.Popen(RECEIVER + [BIN, "bench", "sink", "--listen", f"127.0.0.1:{port}", "--idle", "1.5"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    time.sleep(0.3)
    ns, sent = drain(cap, p.pid, port)
    out, _ = p.communicate(timeout=120)
    s = json.loads(out.strip().splitlines()[-1])
    return {"sent": sent, "received": s["received"], "kernel_drops": s["kernel_drops"], "loss": sent - s["received"],
            "cpu_seconds": ns / 1e9, "cpu_per_million": ns / 1e3 / max(s["received"], 1)}


def serve_drain(cap):
    srv = Serve()
    try:
        ns, sent = drain(cap, srv.p.pid, srv.udp)
        received = srv.received()
        return {"sent": sent, "received": received, "kernel_drops": srv.kernel_drops(), "loss": sent - received,
                "cpu_seconds": ns / 1e9, "cpu_per_million": ns / 1e3 / max(received, 1)}
    finally:
        srv.stop()


def full_speed(results, tmp, quick):
    """Both receivers on one capture at the sender's full speed (not paced),
    with 20,000 and with 1,000,000 devices, alternating: CPU per datagram
    each receiver spent on what it received."""
    log("== 1b. full speed: bare receiver and serve on the same capture, 20,000 and 1,000,000 devices")
    out = {}
    # With 1,000,000 devices, five frames each: the first creates the
    # device, the others meet a tracked one.
    cases = [(20_000, 10), (100_000, 5)] if quick else [(20_000, 75), (1_000_000, 5)]
    for devices, frames in cases:
        capn = os.path.join(tmp, f"full-{devices}.fwrec")
        c = run_json(["sim", "--target", "127.0.0.1:9", "--devices", str(devices), "--rate", "0",
                      "--frames", str(frames), "--record", capn, "--json"])
        sinks, serves, eager = [], [], []
        for i in range(1 if quick else 3):
            sinks.append(sink_trial(capn, c["sent"], 1, 0))
            serves.append(serve_trial(capn, 1, 0))
            # The same without the pause between reads (udp_linger): every
            # read as soon as a datagram is there, as the bare receiver.
            eager.append(serve_trial(capn, 1, 0, "--udp-linger", "0s"))
            log(f"   {devices} devices, round {i + 1}: sink {sinks[-1]['send_rate']:.0f}/s "
                f"{sinks[-1]['cpu_per_million']:.2f} CPU-s/M (lost {sinks[-1]['loss']}); serve "
                f"{serves[-1]['send_rate']:.0f}/s {serves[-1]['cpu_per_million']:.2f} CPU-s/M "
                f"(lost {serves[-1]['loss']}, kernel drops {serves[-1]['kernel_drops']}); serve, udp_linger 0s "
                f"{eager[-1]['cpu_per_million']:.2f} CPU-s/M (lost {eager[-1]['loss']})")
        # The same recording through decode, policy and engine without
        # sockets (`bench engine`): the user-space part of serve's cost.
        engine = [run_json(["bench", "engine", capn], prefix=RECEIVER)["cpu_ns_per_datagram"]
                  for _ in range(1 if quick else 3)]
        # The same recording drained from a full queue, in bursts (see
        # drain): both receivers read full batches, whatever the sender.
        sat_sinks, sat_serves = [], []
        for i in range(1 if quick else 3):
            sat_sinks.append(sink_drain(capn))
            sat_serves.append(serve_drain(capn))
            log(f"   {devices} devices, saturated round {i + 1}: sink {sat_sinks[-1]['cpu_per_million']:.2f} CPU-s/M "
                f"(lost {sat_sinks[-1]['loss']}); serve {sat_serves[-1]['cpu_per_million']:.2f} CPU-s/M "
                f"(lost {sat_serves[-1]['loss']})")
        os.remove(capn)
        med = lambda xs: sorted(xs)[len(xs) // 2]
        sink_cpu = med([t["cpu_per_million"] for t in sinks])
        serve_cpu = med([t["cpu_per_million"] for t in serves])
        eager_cpu = med([t["cpu_per_million"] for t in eager])
        sat_sink = med([t["cpu_per_million"] for t in sat_sinks])
        sat_serve = med([t["cpu_per_million"] for t in sat_serves])
        out[str(devices)] = {"frames_per_device": frames, "capture_datagrams": c["sent"], "sink": sinks,
                             "serve": serves, "sink_cpu_per_million": sink_cpu,
                             "serve_cpu_per_million": serve_cpu, "ratio": serve_cpu / max(sink_cpu, 1e-9),
                             "no_linger": eager, "no_linger_cpu_per_million": eager_cpu,
                             "no_linger_ratio": eager_cpu / max(sink_cpu, 1e-9),
                             "engine_ns_per_datagram": engine, "engine_ns_median": med(engine),
                             "saturated": {"burst": BURST, "sink": sat_sinks, "serve": sat_serves,
                                           "sink_cpu_per_million": sat_sink, "serve_cpu_per_million": sat_serve,
                                           "ratio": sat_serve / max(sat_sink, 1e-9)}}
        log(f"   {devices} devices: draining a full queue, serve / bare receiver {sat_serve / max(sat_sink, 1e-9):.2f} "
            f"(medians {sat_serve:.2f} / {sat_sink:.2f})")
        log(f"   {devices} devices: decode + policy + engine without sockets {med(engine):.0f} ns per datagram")
        log(f"   {devices} devices: serve / bare receiver CPU per datagram {serve_cpu / max(sink_cpu, 1e-9):.2f} "
            f"(medians {serve_cpu:.2f} / {sink_cpu:.2f}); with udp_linger 0s {eager_cpu / max(sink_cpu, 1e-9):.2f}")
    results["full_speed"] = out


def histogram(metrics_text, name):
    """Cumulative buckets [(le, count)] of an unlabelled histogram."""
    out = []
    for line in metrics_text.splitlines():
        m = re.match(name + r'_bucket\{le="([^"]+)"\} (\S+)$', line)
        if m:
            out.append((float("inf") if m.group(1) == "+Inf" else float(m.group(1)), float(m.group(2))))
    return out


def quantile(buckets, q):
    """histogram_quantile as Prometheus computes it (linear within a bucket)."""
    total = buckets[-1][1] if buckets else 0
    if total == 0:
        return float("nan")
    rank, prev_le, prev_n = q * total, 0.0, 0.0
    for le, n in buckets:
        if n >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * (rank - prev_n) / max(n - prev_n, 1e-12)
        prev_le, prev_n = le, n
    return prev_le


def delays(results, cap, cap_len, zero_loss_rate, trial_s):
    """p50/p99 of fleetwire_ingest_delay_seconds at 50 % and 90 % of the
    highest zero-loss rate, each in a fresh server."""
    log(f"== 1c. ingest delay at 50 % and 90 % of the highest zero-loss rate ({zero_loss_rate:,.0f}/s)")
    out = []
    for share, linger in [(0.5, None), (0.9, None), (0.5, "0s"), (0.9, "0s")]:
        rate = round(zero_loss_rate * share)
        srv = Serve(*(["--udp-linger", linger] if linger else []))
        try:
            r = replay(cap, srv.udp, max(1, int(trial_s * rate / cap_len)), rate)
            received = srv.wait_idle()
            m = srv.get("/metrics")
            b = histogram(m, "fleetwire_ingest_delay_seconds")
            t = {"share": share, "linger": linger or "default", "rate": rate, "send_rate": r["rate"], "sent": r["sent"], "received": received,
                 "kernel_drops": srv.kernel_drops(), "count": b[-1][1] if b else 0,
                 "accepted": srv.accepted(), "p50_s": quantile(b, 0.5), "p99_s": quantile(b, 0.99)}
        finally:
            srv.stop()
        out.append(t)
        log(f"   {share:.0%} ({rate:,}/s), udp_linger {t['linger']}: p50 {t['p50_s'] * 1e6:.0f} us, p99 {t['p99_s'] * 1e6:.0f} us "
            f"({t['count']:,.0f} counted of {t['accepted']:,} accepted, kernel drops {t['kernel_drops']})")
    results["ingest_delay"] = out


def machine():
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except Exception:
        pass
    rmem = open("/proc/sys/net/core/rmem_max").read().strip() if os.path.exists("/proc/sys/net/core/rmem_max") else "?"
    rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip()
    return {"cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(), "rustc": rustc,
            "net.core.rmem_max": rmem, "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="short trials (a smoke run, not for the record)")
    ap.add_argument("--only", choices=["full-speed", "delays"], help="run one section and print its results as JSON")
    ap.add_argument("--zero-loss-rate", type=float, help="with --only delays: the rate that counts as 100 %%")
    a = ap.parse_args()
    if a.only:
        res, tmp = {}, tempfile.mkdtemp(prefix="fw-bench-cap-")
        try:
            if a.only == "full-speed":
                full_speed(res, tmp, a.quick)
            else:
                cap = os.path.join(tmp, "capture.fwrec")
                c = run_json(["sim", "--target", "127.0.0.1:9", "--devices", "1000", "--rate", "0", "--frames", "100",
                              "--record", cap, "--json"])
                delays(res, cap, c["sent"], a.zero_loss_rate or 500_000, 2 if a.quick else 6)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        print(json.dumps(res, indent=2))
        return
    trial_s = 2 if a.quick else 6
    ids_1m = 100_000 if a.quick else 1_000_000
    ids_10m = 300_000 if a.quick else 10_000_000
    results = {"machine": machine(), "quick": a.quick, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
               "pinned": PIN}
    tmp = tempfile.mkdtemp(prefix="fw-bench-cap-")
    cap = os.path.join(tmp, "capture.fwrec")

    log("== capture: 1000 devices x 100 frames of valid traffic")
    c = run_json(["sim", "--target", "127.0.0.1:9", "--devices", "1000", "--rate", "0", "--frames", "100",
                  "--record", cap, "--json"])
    cap_len = c["sent"]
    results["capture"] = {"datagrams": cap_len, "mean_bytes": round(c["bytes"] / cap_len, 1)}

    log("== 1-3. kernel limit (bare sink) and serve, alternating, at the sender's full speed")
    probe = sink_trial(cap, cap_len, 1, 0)
    loops = max(1, int(trial_s * probe["send_rate"] / cap_len))
    rounds = 1 if a.quick else 3
    sinks, serves = [], []
    for i in range(rounds):
        sinks.append(sink_trial(cap, cap_len, loops, 0))
        serves.append(serve_trial(cap, loops, 0))
        log(f"   round {i + 1}: sink {sinks[-1]['send_rate']:.0f}/s lost {sinks[-1]['loss']} "
            f"{sinks[-1]['cpu_per_million']:.2f} CPU-s/M; serve {serves[-1]['send_rate']:.0f}/s lost "
            f"{serves[-1]['loss']} (kernel drops {serves[-1]['kernel_drops']}) {serves[-1]['cpu_per_million']:.2f} CPU-s/M")
    med = lambda xs: sorted(xs)[len(xs) // 2]
    results["sink_trials"] = sinks
    results["serve_trials"] = serves

    # The sender shares the two cores with the receiver, so its full speed
    # depends on how much CPU the receiver takes: full-speed rates alone do
    # not compare receivers. Offer both the same paced rates instead, from
    # 90 % of the slowest full-speed run upwards, until a receiver loses
    # datagrams or the sender cannot deliver the rate asked.
    base = min(t["send_rate"] for t in sinks + serves)
    steps = [0.9, 1.0, 1.1] if a.quick else [0.9, 0.95, 1.0, 1.05, 1.1, 1.2, 1.3, 1.5]
    ladder = {"sink": [], "serve": []}
    best = {}
    for kind in ["sink", "serve"]:
        for f in steps:
            rate = round(base * f)
            n = max(1, int(trial_s * rate / cap_len))
            t = sink_trial(cap, cap_len, n, rate) if kind == "sink" else serve_trial(cap, n, rate)
            t["asked_rate"] = rate
            ladder[kind].append(t)
            log(f"   {kind} asked {rate}/s: sent {t['send_rate']:.0f}/s, lost {t['loss']}, {t['cpu_per_million']:.2f} CPU-s/M")
            if t["loss"] > 0:
                break
            best[kind] = t
            if t["send_rate"] < 0.97 * rate:
                break
    results["ladder"] = ladder
    kernel_rate = best["sink"]["send_rate"] if "sink" in best else med([t["send_rate"] for t in sinks])
    results["kernel_limit_rate"] = kernel_rate
    # CPU per datagram compared at the same offered rate: the first rung.
    same_sink, same_serve = ladder["sink"][0], ladder["serve"][0]
    results["same_rate"] = {"rate": same_sink["asked_rate"], "sink": same_sink, "serve": same_serve}
    results["sink_cpu_per_million"] = same_sink["cpu_per_million"]
    if "serve" in best:
        z = best["serve"]
        results["serve_zero_loss"] = {"rate": z["send_rate"], "cpu_per_million": same_serve["cpu_per_million"],
                                      "sender_bound": z["send_rate"] < 0.97 * z["asked_rate"] or z is ladder["serve"][-1]}
        results["ratio_rate"] = z["send_rate"] / kernel_rate
        results["ratio_cpu_per_datagram"] = same_serve["cpu_per_million"] / max(same_sink["cpu_per_million"], 1e-9)
        # Over all the paced rates both receivers took (less sensitive to the
        # wake-ups that dominate the cost of an idle-ish receiver).
        both = min(len(ladder["sink"]), len(ladder["serve"]))
        results["ratio_cpu_ladder_median"] = (med([t["cpu_per_million"] for t in ladder["serve"][:both]])
                                              / max(med([t["cpu_per_million"] for t in ladder["sink"][:both]]), 1e-9))
        log(f"   rate ratio {results['ratio_rate']:.3f}, CPU ratio {results['ratio_cpu_per_datagram']:.2f}")
        delays(results, cap, cap_len, z["send_rate"], trial_s)

    full_speed(results, tmp, a.quick)

    log("== 3b. cost per datagram against fleet size: 100 devices vs 1,000,000 devices")
    flat = {}
    for devices, frames in ([(100, 400), (100_000, 1)] if a.quick else [(100, 4000), (1_000_000, 1)]):
        capn = os.path.join(tmp, f"cap-{devices}.fwrec")
        c2 = run_json(["sim", "--target", "127.0.0.1:9", "--devices", str(devices), "--rate", "0",
                       "--frames", str(frames), "--record", capn, "--json"])
        # Twice through the capture: the second pass meets devices already tracked.
        t = serve_trial(capn, 2, 150_000)
        t["devices"] = devices
        t["capture_datagrams"] = c2["sent"]
        flat[str(devices)] = t
        os.remove(capn)
        log(f"   {devices} devices: {t['cpu_per_million']:.2f} CPU-s per million, lost {t['loss']}")
    results["flatness"] = flat

    log("== 4. QUIC datagrams vs UDP, both sent by sim (100 devices, as fast as possible), alternating, unpinned")
    frames = 300 if a.quick else 1000
    quic = {"udp": [], "quic": []}
    for _ in range(1 if a.quick else 3):
        for transport in ["udp", "quic"]:
            # Not pinned: QUIC needs the runtime's threads on both cores, as
            # in a deployment; both transports run the same way.
            srv = Serve(quic=True, pin=False)
            try:
                port = srv.quic if transport == "quic" else srv.udp
                args = ["sim", "--target", f"127.0.0.1:{port}", "--transport", transport, "--devices", "100",
                        "--rate", "0", "--frames", str(frames), "--json"]
                if transport == "quic":
                    args += ["--ca", os.path.join(srv.dir, "dev-cert.pem")]
                r = run_json(args)
                srv.wait_idle(transport)
                acc = srv.accepted(transport)
                t = {"sent": r["sent"], "accepted": acc, "elapsed_s": r["elapsed_s"], "rate": acc / r["elapsed_s"]}
                if transport == "quic":
                    m = srv.get("/metrics")
                    t["quinn_buffer_drops"] = float(re.search(
                        r"^fleetwire_quic_datagrams_dropped_total (\S+)", m, re.M).group(1))
                quic[transport].append(t)
            finally:
                srv.stop()
            log(f"   {transport}: {t['rate']:.0f} accepted/s ({t['accepted']} of {t['sent']})")
    quic["udp_rate"] = med([t["rate"] for t in quic["udp"]])
    quic["quic_rate"] = med([t["rate"] for t in quic["quic"]])
    quic["ratio"] = quic["quic_rate"] / quic["udp_rate"]
    quic["ratio_vs_kernel_limit"] = quic["quic_rate"] / kernel_rate
    results["quic_vs_udp"] = quic

    log(f"== 5. memory: {ids_1m} tracked devices")
    srv = Serve("--max-devices", str(max(ids_1m, 1_000_000)), "--engine-shards", "16", snapshot=True)
    try:
        rss0 = srv.rss()
        r = run_json(["bench", "flood", "--target", f"127.0.0.1:{srv.udp}", "--ids", str(ids_1m), "--rate", "250000"])
        srv.wait_idle()
        s = srv.summary()
        rss1 = srv.rss()
        # Stay through a few snapshots and note the peak they cause.
        peak = rss1
        for _ in range(40):
            peak = max(peak, srv.rss())
            time.sleep(0.25)
        snap = os.path.join(srv.dir, "state.snapshot")
        results["memory_1m"] = {"ids_sent": r["sent"], "devices": s["devices"], "rss_before": rss0, "rss_after": rss1,
                                "rss_peak_with_snapshots": peak,
                                "snapshot_bytes": os.path.getsize(snap) if os.path.exists(snap) else 0,
                                "bytes_per_device": (rss1 - rss0) / max(s["devices"], 1),
                                "kernel_drops": srv.kernel_drops()}
        log(f"   {s['devices']} devices: {(rss1 - rss0) / max(s['devices'], 1):.0f} bytes per device")
    finally:
        srv.stop()

    def flood_peak(extra, rate):
        """Peak resident memory of a fresh server (snapshots every 5 s) flooded with ids_10m distinct ids."""
        srv = Serve(snapshot=True)
        try:
            rss0 = srv.rss()
            peak = [rss0]
            stop = threading.Event()

            def watch():
                while not stop.is_set():
                    peak[0] = max(peak[0], srv.rss())
                    time.sleep(0.2)
            w = threading.Thread(target=watch, daemon=True)
            w.start()
            r = run_json(["bench", "flood", "--target", f"127.0.0.1:{srv.udp}", "--ids", str(ids_10m), "--rate", str(rate),
                          "--seed", "7", *extra])
            srv.wait_idle()
            stop.set()
            w.join()
            s = srv.summary()
            res = {"ids_sent": r["sent"], "devices": s["devices"], "evicted": s["evicted"],
                   "readings_dropped": s.get("readings_dropped", 0),
                   "rss_before": rss0, "rss_peak": peak[0], "rss_after": srv.rss()}
            log(f"   {s['devices']} tracked, {s['evicted']} evicted, peak RSS {peak[0] / 2**20:.0f} MiB")
            return res
        finally:
            srv.stop()

    log(f"== 5b. memory: {ids_10m} distinct ids with the default max_devices")
    results["memory_10m"] = flood_peak([], 250_000)
    log(f"== 5c. memory: {ids_10m} distinct ids, each a Monitoring frame with 32 named readings")
    results["memory_10m_readings"] = flood_peak(["--readings", "32"], 120_000)

    log("== 7. Teltonika packets vs native frames: the same simulated fleet, sent by sim as fast as it goes")
    tel = {}
    for proto in ["native", "teltonika"]:
        srv = Serve(teltonika=True)
        try:
            cpu0, rec0 = srv.cpu(), srv.records()
            port = srv.teltonika if proto == "teltonika" else srv.udp
            r = run_json(["sim", "--target", f"127.0.0.1:{port}", "--protocol", proto, "--devices", "1000",
                          "--rate", "0", "--frames", "40" if a.quick else "200", "--json"], env=dict(os.environ))
            srv.wait_idle("teltonika" if proto == "teltonika" else "udp")
            records = srv.records() - rec0
            cpu = srv.cpu() - cpu0
            tel[proto] = {"sent": r["sent"], "records": records, "elapsed_s": r["elapsed_s"],
                          "records_per_s": records / r["elapsed_s"], "cpu_us_per_record": cpu / max(records, 1) * 1e6,
                          "acks": srv.metric("fleetwire_teltonika_acks_total")}
        finally:
            srv.stop()
        log(f"   {proto}: {tel[proto]['records_per_s']:.0f} records/s, {tel[proto]['cpu_us_per_record']:.2f} CPU-us per record")
    results["teltonika"] = tel

    log("== 8. live stream: delay from sendmmsg to a stream client, and what clients cost the receive path")
    stream = []
    rates = [10_000] if a.quick else [10_000, 100_000]
    for rate in rates:
        for clients, stuck in [(0, 0), (1, 0), (90, 10)]:
            srv = Serve(pin=False)
            try:
                cpu0, rx0 = srv.cpu(), srv.thread_cpu("udp-rx-0")
                r = run_json(["bench", "latency", "--udp", f"127.0.0.1:{srv.udp}", "--http", f"127.0.0.1:{srv.http}",
                              "--rate", str(rate), "--seconds", "4" if a.quick else "10", "--clients", str(clients),
                              "--stuck", str(stuck)])
                received = srv.wait_idle()
                t = dict(r, rate=rate, clients=clients, stuck=stuck, received=received,
                         kernel_drops=srv.kernel_drops(),
                         rx_cpu_us_per_datagram=(srv.thread_cpu("udp-rx-0") - rx0) / max(received, 1) * 1e6,
                         cpu_us_per_datagram=(srv.cpu() - cpu0) / max(received, 1) * 1e6,
                         stream_dropped=srv.metric("fleetwire_stream_dropped_total"))
            finally:
                srv.stop()
            stream.append(t)
            log(f"   {rate}/s, {clients} reading + {stuck} stuck: p50 {t['p50_ms']} ms p99 {t['p99_ms']} ms max {t['max_ms']} ms, "
                f"kernel drops {t['kernel_drops']}, receive thread {t['rx_cpu_us_per_datagram']:.2f} CPU-us/datagram")
    results["stream"] = stream
    srv = Serve(pin=False)
    try:
        rss0 = srv.rss()
        peak = [rss0]
        done = threading.Event()

        def watch():
            while not done.is_set():
                peak[0] = max(peak[0], srv.rss())
                time.sleep(0.2)
        w = threading.Thread(target=watch, daemon=True)
        w.start()
        r = run_json(["bench", "latency", "--udp", f"127.0.0.1:{srv.udp}", "--http", f"127.0.0.1:{srv.http}",
                      "--rate", "10000", "--seconds", "5" if a.quick else "20", "--clients", "0", "--stuck", "999"])
        done.set()
        w.join()
        results["stream_stuck"] = {"stuck": 999, "rss_before": rss0, "rss_peak": peak[0], "kernel_drops": srv.kernel_drops(),
                                   "sent": r["sent"]}
        log(f"   999 stuck clients: resident memory {rss0 / 2**20:.0f} -> peak {peak[0] / 2**20:.0f} MiB")
    finally:
        srv.stop()

    log("== 6. codec micro-benchmark")
    out = subprocess.run(["cargo", "bench", "-q", "-p", "fleetwire-proto", "--bench", "codec"], cwd=ROOT,
                         capture_output=True, text=True)
    results["codec_table"] = "\n".join(l for l in out.stdout.splitlines() if l.startswith("|"))

    shutil.rmtree(tmp, ignore_errors=True)
    with open(os.path.join(ROOT, "bench", "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    report = render(results)
    with open(os.path.join(ROOT, "bench", "last-run.md"), "w") as f:
        f.write(report)
    print(report)


def render(r):
    L = []
    m = r["machine"]
    L.append(f"Run {r['date']}{' (quick)' if r['quick'] else ''} on {m['cpu']}, {m['cores']} cores, "
             f"{m['memory_gib']} GiB, Linux {m['kernel']}, {m['rustc']}, net.core.rmem_max={m['net.core.rmem_max']}.")
    L.append("")
    L.append(f"Capture: {r['capture']['datagrams']} valid datagrams, {r['capture']['mean_bytes']} bytes on average. "
             + ("Sender pinned to core 0, receivers to core 1 (taskset)." if r.get("pinned") else "Not pinned."))
    L.append("")
    L.append("| measurement | value |")
    L.append("|---|---:|")
    L.append(f"| kernel limit: highest paced rate the bare recvmmsg receiver took with zero loss | {r['kernel_limit_rate']:,.0f} datagrams/s |")
    sr = r["same_rate"]
    L.append(f"| bare receiver CPU at {sr['rate']:,} datagrams/s | {sr['sink']['cpu_per_million']:.2f} CPU-s per million datagrams (lost {sr['sink']['loss']}) |")
    z = r.get("serve_zero_loss")
    if z:
        L.append(f"| serve: highest paced rate taken with zero loss | {z['rate']:,.0f} datagrams/s |")
        L.append(f"| serve CPU at {sr['rate']:,} datagrams/s | {sr['serve']['cpu_per_million']:.2f} CPU-s per million datagrams (lost {sr['serve']['loss']}) |")
        L.append(f"| **rate ratio serve / kernel limit** | **{r['ratio_rate']:.3f}** (target >= 0.95) |")
        L.append(f"| **CPU per datagram ratio serve / bare receiver, same offered rate** | **{r['ratio_cpu_per_datagram']:.2f}** at the first rate, **{r.get('ratio_cpu_ladder_median', float('nan')):.2f}** median over all paced rates (target <= 2) |")
    else:
        L.append("| serve: highest offered rate with zero loss | none of the trials |")
    for t in r.get("ingest_delay", []):
        L.append(f"| ingest delay (kernel receive timestamp to frame applied) at {t['share']:.0%} of the zero-loss rate ({t['rate']:,}/s), udp_linger {t.get('linger', 'default')} | "
                 f"p50 {t['p50_s'] * 1e6:,.0f} us, p99 {t['p99_s'] * 1e6:,.0f} us ({t['count']:,.0f} datagrams counted of {t['accepted']:,} accepted) |")
    for k, f in r.get("full_speed", {}).items():
        L.append(f"| **CPU per datagram at full speed, serve / bare receiver, {int(k):,} devices** ({f['capture_datagrams']:,} datagrams, median of {len(f['serve'])}) | "
                 f"**{f['ratio']:.2f}** ({f['serve_cpu_per_million']:.2f} / {f['sink_cpu_per_million']:.2f} CPU-s per million; target <= {1.3 if int(k) <= 20000 else 1.5}) |")
        if "engine_ns_median" in f:
            L.append(f"| ... of which decode, policy and engine, the same recording without sockets (`bench engine`, median of {len(f['engine_ns_per_datagram'])}) | "
                     f"{f['engine_ns_median']:.0f} ns per datagram |")
        sat = f.get("saturated")
        if sat:
            L.append(f"| ... the same recording drained from a full queue (bursts of {sat['burst']:,} while the receiver is stopped; median of {len(sat['serve'])}) | "
                     f"{sat['ratio']:.2f} ({sat['serve_cpu_per_million']:.2f} / {sat['sink_cpu_per_million']:.2f} CPU-s per million; lost "
                     f"{sum(t['loss'] for t in sat['serve'])} / {sum(t['loss'] for t in sat['sink'])}) |")
        if "no_linger_ratio" in f:
            L.append(f"| ... at full speed with `udp_linger = \"0s\"` (no pause between reads), serve / bare receiver, same rounds | "
                     f"{f['no_linger_ratio']:.2f} ({f['no_linger_cpu_per_million']:.2f} CPU-s per million) |")
    q = r["quic_vs_udp"]
    L.append(f"| sim over UDP (sendmmsg, 100 devices; server and sim not pinned) | {q['udp_rate']:,.0f} accepted/s (median) |")
    drops = sum(t.get("quinn_buffer_drops", 0) for t in q["quic"])
    L.append(f"| sim over QUIC DATAGRAM (100 connections) | {q['quic_rate']:,.0f} accepted/s (median; quinn buffer drops {drops:.0f}) |")
    L.append(f"| **QUIC / UDP, same sender** | **{q['ratio']:.2f}** (target >= 0.5) |")
    L.append(f"| QUIC / kernel limit | {q['ratio_vs_kernel_limit']:.2f} |")
    fl = r.get("flatness", {})
    for k, t in fl.items():
        L.append(f"| serve CPU with {int(k):,} devices (150,000 datagrams/s offered, {t['sent']:,} datagrams) | {t['cpu_per_million']:.2f} CPU-s per million, lost {t['loss']} |")
    mem = r["memory_1m"]
    L.append(f"| **resident memory per tracked device** ({mem['devices']:,} devices) | **{mem['bytes_per_device']:.0f} bytes** (target <= 512) |")
    L.append(f"| ... peak resident memory while snapshots are written every 5 s | {mem['rss_peak_with_snapshots'] / 2**20:,.0f} MiB (snapshot file {mem['snapshot_bytes'] / 2**20:,.0f} MiB) |")
    m10 = r["memory_10m"]
    L.append(f"| {m10['ids_sent']:,} distinct ids, max_devices 1,000,000: tracked / evicted | {m10['devices']:,} / {m10['evicted']:,} |")
    L.append(f"| ... peak resident memory (snapshots every 5 s) | {m10['rss_peak'] / 2**20:,.0f} MiB |")
    m10r = r.get("memory_10m_readings")
    if m10r:
        L.append(f"| {m10r['ids_sent']:,} distinct ids, each a Monitoring frame with 32 named readings: peak resident memory (default max_reading_memory 128 MiB) | {m10r['rss_peak'] / 2**20:,.0f} MiB ({m10r['readings_dropped']:,} readings dropped at the budget) |")
    L.append("")
    L.append("Paced trials (the same offered rates for both receivers, stepping up):")
    L.append("")
    L.append("| receiver | asked datagrams/s | achieved | sent | received | kernel drops | CPU-s per million |")
    L.append("|---|---:|---:|---:|---:|---:|---:|")
    for kind in ["sink", "serve"]:
        for t in r["ladder"][kind]:
            L.append(f"| {kind} | {t['asked_rate']:,} | {t['send_rate']:,.0f} | {t['sent']:,} | {t['received']:,} | {t['kernel_drops']:,} | {t['cpu_per_million']:.2f} |")
    L.append("")
    L.append("Full-speed trials (sink and serve alternate; each replays the capture for a few seconds):")
    L.append("")
    L.append("| receiver | offered datagrams/s | sent | received | kernel drops | CPU-s per million |")
    L.append("|---|---:|---:|---:|---:|---:|")
    for t in r["sink_trials"]:
        L.append(f"| bare sink | {t['send_rate']:,.0f} | {t['sent']:,} | {t['received']:,} | {t['kernel_drops']:,} | {t['cpu_per_million']:.2f} |")
    for t in r["serve_trials"]:
        L.append(f"| serve | {t['send_rate']:,.0f} | {t['sent']:,} | {t['received']:,} | {t['kernel_drops']:,} | {t['cpu_per_million']:.2f} |")
    tel = r.get("teltonika")
    if tel:
        L.append("")
        L.append("Teltonika packets (one record each) against native frames, the same simulated fleet sent by `sim` as fast as it goes:")
        L.append("")
        L.append("| protocol | datagrams sent | records | records/s | CPU-us per record |")
        L.append("|---|---:|---:|---:|---:|")
        for k, t in tel.items():
            L.append(f"| {k} | {t['sent']:,} | {t['records']:,} | {t['records_per_s']:,.0f} | {t['cpu_us_per_record']:.2f} |")
    st = r.get("stream")
    if st:
        L.append("")
        L.append("Live stream: delay from the sender's sendmmsg to the first SSE client reading the update (1 ms resolution), and the receive thread's CPU:")
        L.append("")
        L.append("| datagrams/s | clients reading | stuck | p50 ms | p99 ms | max ms | kernel drops | receive thread CPU-us/datagram | server CPU-us/datagram | stream dropped |")
        L.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for t in st:
            L.append(f"| {t['rate']:,} | {t['clients']} | {t['stuck']} | {t['p50_ms'] if t['clients'] else '-'} | {t['p99_ms'] if t['clients'] else '-'} | "
                     f"{t['max_ms'] if t['clients'] else '-'} | {t['kernel_drops']} | {t['rx_cpu_us_per_datagram']:.2f} | {t['cpu_us_per_datagram']:.2f} | {t['stream_dropped']:.0f} |")
        s = r.get("stream_stuck")
        if s:
            L.append("")
            L.append(f"{s['stuck']} stuck stream clients (connected, never reading) during 10,000 datagrams/s: resident memory "
                     f"{s['rss_before'] / 2**20:.0f} MiB before, {s['rss_peak'] / 2**20:.0f} MiB at the peak; kernel drops {s['kernel_drops']}.")
    L.append("")
    L.append("Codec (cargo bench -p fleetwire-proto --bench codec):")
    L.append("")
    L.append(r["codec_table"])
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    main()
