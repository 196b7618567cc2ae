#!/usr/bin/env python3
"""What happens around the receive path (issue 17), in one run.

  bench/pressure.sh            the run written down in BENCHMARKS.md (~10 min)
  bench/pressure.sh --quick    a short smoke run (100,000 devices)

With 1,000,000 tracked devices (default max_devices) and traffic replayed
at 100,000 datagrams/s by `fleetwire replay` (sendmmsg) from a capture of
`fleetwire sim`:

  1. baseline: the replay alone; kernel drops and CPU per datagram, with the
     journal off and on (its cost);
  2. HTTP pressure: the same replay while 32 clients fetch
     /api/positions.geojson?limit=100000, 16 fetch /api/devices?limit=10000
     and 64 scrape /metrics, as fast as they are answered; kernel drops,
     the slowest /healthz answer (asked every 100 ms), peak resident memory
     and the answers by status;
  3. crashes: 30 SIGKILLs at random moments under traffic; per crash the
     frames the server had accepted (read just before the kill) against
     the frames it restored, and the restart time with 1,000,000 devices.

Loopback only. Writes bench/pressure.json and prints the table for
BENCHMARKS.md.
"""
import argparse
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as R  # noqa: E402


def capture(tmp, devices, frames):
    path = os.path.join(tmp, f"cap-{devices}x{frames}.fwrec")
    R.run_json(["sim", "--target", "127.0.0.1:9", "--devices", str(devices), "--rate", "0", "--frames", str(frames),
                "--record", path, "--json"])
    return path


def replay_async(cap, port, loops, rate):
    return subprocess.Popen(R.SENDER + [R.BIN, "replay", cap, "--target", f"127.0.0.1:{port}", "--loop", str(loops),
                                        "--rate", str(rate), "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)


def finish(p):
    out, _ = p.communicate(timeout=600)
    return json.loads(out)


def serve(extra, journal=True):
    args = ["--journal-interval", "1s" if journal else "0s"] + list(extra)
    srv = R.Serve(*args, snapshot=True, pin=False)
    return srv


def fill(srv, devices):
    """Tracks `devices` devices (one position each) before a trial."""
    R.run_json(["bench", "flood", "--target", f"127.0.0.1:{srv.udp}", "--ids", str(devices), "--rate", "250000"])
    deadline = time.time() + 60
    while time.time() < deadline and srv.summary()["devices"] < devices * 0.99:
        time.sleep(0.2)


def trial(srv, cap, loops, rate, load=None):
    """Replays the capture at `rate`; with `load`, HTTP clients run meanwhile."""
    received0, drops0, cpu0 = srv.received(), srv.kernel_drops(), srv.cpu()
    stop = threading.Event()
    stats = {"healthz_max_s": 0.0, "healthz_failures": 0, "rss_peak": srv.rss(), "answers": {}}
    lock = threading.Lock()

    def count(kind, status):
        with lock:
            k = stats["answers"].setdefault(kind, {})
            k[status] = k.get(status, 0) + 1

    def client(kind, path):
        while not stop.is_set():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{srv.http}{path}", timeout=60) as r:
                    while r.read(1 << 20):
                        pass
                    count(kind, str(r.status))
            except urllib.error.HTTPError as e:
                count(kind, str(e.code))
                time.sleep(0.05)
            except Exception as e:  # noqa: BLE001 (a refused or reset connection is an answer too)
                count(kind, type(e).__name__)
                time.sleep(0.05)

    def healthz():
        while not stop.is_set():
            t = time.time()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{srv.http}/healthz", timeout=5) as r:
                    r.read()
            except Exception:  # noqa: BLE001
                stats["healthz_failures"] += 1
            stats["healthz_max_s"] = max(stats["healthz_max_s"], time.time() - t)
            time.sleep(0.1)

    def rss():
        while not stop.is_set():
            stats["rss_peak"] = max(stats["rss_peak"], srv.rss())
            time.sleep(0.05)

    threads = [threading.Thread(target=healthz, daemon=True), threading.Thread(target=rss, daemon=True)]
    for kind, path, n in (load or []):
        threads += [threading.Thread(target=client, args=(kind, path), daemon=True) for _ in range(n)]
    for t in threads:
        t.start()
    sender = replay_async(cap, srv.udp, loops, rate)
    r = finish(sender)
    received = srv.wait_idle(quiet=1.0)
    stop.set()
    for t in threads:
        t.join(timeout=70)
    cpu = srv.cpu() - cpu0
    got = received - received0
    stats.update({"sent": r["sent"], "send_rate": r["rate"], "received": got, "loss": r["sent"] - got,
                  "kernel_drops": srv.kernel_drops() - drops0, "cpu_seconds": cpu,
                  "cpu_per_million": cpu / max(got, 1) * 1e6})
    return stats


def accepted_frames(srv):
    s = srv.summary()
    return s["datagrams"]["udp"]["accepted"], sum(s["records"].values())


def crashes(tmp, cap, devices, rate, n):
    """SIGKILLs under traffic: what each crash lost, and the restart time."""
    data = os.path.join(tmp, "crash-data")
    os.makedirs(data, exist_ok=True)
    results = []
    http = R.free_port(R.socket.SOCK_STREAM)
    udp = R.free_port()
    args = [R.BIN, "serve", "--udp-listen", f"127.0.0.1:{udp}", "--http-listen", f"127.0.0.1:{http}",
            "--quic-listen", "off", "--teltonika-listen", "off", "--osmand-listen", "off", "--data-dir", data,
            "--snapshot-interval", "60s"]

    def start(restoring=False):
        t = time.time()
        p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             env=dict(os.environ, RUST_LOG="warn"))
        threading.Thread(target=lambda: [None for _ in p.stderr], daemon=True).start()
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http}/api/summary", timeout=5) as r:
                    return p, time.time() - t, json.loads(r.read())
            except Exception:  # noqa: BLE001
                pass
            if p.poll() is not None:
                raise RuntimeError("serve exited")
            time.sleep(0.02)

    p, _, _ = start()
    R.run_json(["bench", "flood", "--target", f"127.0.0.1:{udp}", "--ids", str(devices), "--rate", "250000"])
    sender = replay_async(cap, udp, 1000, rate)
    rng = random.Random(17)
    for i in range(n):
        time.sleep(rng.uniform(1.0, 4.0))
        with urllib.request.urlopen(f"http://127.0.0.1:{http}/api/summary", timeout=5) as r:
            before = json.loads(r.read())
        p.send_signal(signal.SIGKILL)
        p.wait()
        p, restart_s, after = start()
        rec_before = sum(before["records"].values())
        rec_after = sum(after["records"].values())
        results.append({"restart_s": restart_s, "devices": after["devices"], "records_lost": rec_before - rec_after})
        R.log(f"   crash {i + 1}: {rec_before - rec_after} records lost, restart {restart_s:.2f} s, "
              f"{after['devices']} devices")
    sender.kill()
    p.terminate()
    p.wait()
    corrupt = [f for f in os.listdir(data) if ".corrupt-" in f]
    return {"crashes": results, "corrupt_files": corrupt}


def restore_memory(tmp, devices, readings):
    """Peak resident memory while `devices` devices with `readings` named
    readings each are tracked and snapshotted, restored after a stop, and
    scraped (one, then 8 concurrent scrapes)."""
    data = os.path.join(tmp, "restore-data")
    os.makedirs(data, exist_ok=True)
    http = R.free_port(R.socket.SOCK_STREAM)
    udp = R.free_port()
    args = [R.BIN, "serve", "--udp-listen", f"127.0.0.1:{udp}", "--http-listen", f"127.0.0.1:{http}",
            "--quic-listen", "off", "--teltonika-listen", "off", "--osmand-listen", "off", "--data-dir", data,
            "--snapshot-interval", "5s"]
    def hwm(pid):
        """The process's peak resident memory so far (VmHWM: exact, not sampled)."""
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        return 0

    def get(path):
        with urllib.request.urlopen(f"http://127.0.0.1:{http}{path}", timeout=120) as r:
            return r.read()

    def start(restoring=False):
        t = time.time()
        p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             env=dict(os.environ, RUST_LOG="warn"))
        threading.Thread(target=lambda: [None for _ in p.stderr], daemon=True).start()
        while True:
            try:
                summary = json.loads(get("/api/summary"))
                if summary["devices"] > 0 or not restoring:
                    return p, time.time() - t, summary
            except Exception:  # noqa: BLE001
                pass
            if p.poll() is not None:
                raise RuntimeError("serve exited")
            time.sleep(0.02)

    out = {"devices": devices, "readings": readings}
    p, _, _ = start()
    R.run_json(["bench", "flood", "--target", f"127.0.0.1:{udp}", "--ids", str(devices), "--rate", "100000",
                "--readings", str(readings)])
    time.sleep(12)  # two snapshots
    out["tracking_peak"] = hwm(p.pid)
    p.terminate()
    out["exit"] = p.wait(120)
    p, restart_s, summary = start(restoring=True)
    out["restore_s"] = restart_s
    out["restored_devices"] = summary["devices"]
    time.sleep(1)
    out["restore_peak"] = hwm(p.pid)
    out["metrics_bytes"] = len(get("/metrics"))
    scrapes = [threading.Thread(target=get, args=("/metrics",)) for _ in range(8)]
    for t in scrapes:
        t.start()
    for t in scrapes:
        t.join()
    time.sleep(6)  # and a snapshot of the restored state
    out["after_scrapes_peak"] = hwm(p.pid)
    p.terminate()
    p.wait(120)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--sections", default="journal,http,memory,crashes",
                    help="comma-separated: journal, http, memory, crashes (default all)")
    a = ap.parse_args()
    sections = set(a.sections.split(","))
    devices = 100_000 if a.quick else 1_000_000
    rate = 100_000
    seconds = 8 if a.quick else 30
    tmp = R.tempfile.mkdtemp(prefix="fw-pressure-")
    out = {"machine": R.machine(), "quick": a.quick, "devices": devices, "rate": rate,
           "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    R.log(f"== capture: {devices} devices")
    frames = max(1, seconds * rate // devices)
    cap = capture(tmp, devices, frames)
    loops = max(1, seconds * rate // (devices * frames))

    runs = {False: [], True: []}
    if "journal" in sections:
        R.log("== 1. baseline, journal off and on, alternating")
    for _ in range((1 if a.quick else 3) if "journal" in sections else 0):
        for journal in (False, True):
            srv = serve([], journal=journal)
            try:
                fill(srv, devices)
                t = trial(srv, cap, loops, rate)
                runs[journal].append(t)
                R.log(f"   journal {journal}: drops {t['kernel_drops']}, {t['cpu_per_million']:.2f} CPU-s/M, "
                      f"rss peak {t['rss_peak'] / 2**20:.0f} MiB")
            finally:
                srv.stop()
    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    if "journal" in sections:
        out["baseline_journal_off"] = runs[False]
        out["baseline_journal_on"] = runs[True]
        out["journal_cpu_ratio"] = (med([t["cpu_per_million"] for t in runs[True]])
                                    / max(med([t["cpu_per_million"] for t in runs[False]]), 1e-9))
        R.log(f"   journal CPU ratio (medians) {out['journal_cpu_ratio']:.3f}")

    if "http" in sections:
        http_pressure(out, devices, cap, loops, rate)
    if "memory" in sections:
        memory(out, tmp, devices)
    if "crashes" in sections:
        crash_section(out, tmp, devices, rate, a.quick)
    with open(os.path.join(R.ROOT, "bench", "pressure.json"), "w") as f:
        json.dump(out, f, indent=2)
    R.shutil.rmtree(tmp, ignore_errors=True)


def http_pressure(out, devices, cap, loops, rate):
    R.log("== 2. HTTP pressure")
    srv = serve([])
    try:
        fill(srv, devices)
        load = [("geojson", "/api/positions.geojson?limit=100000", 32),
                ("devices", "/api/devices?limit=10000", 16),
                ("metrics", "/metrics", 64)]
        t = trial(srv, cap, loops, rate, load)
        out["http_pressure"] = t
        R.log(f"   drops {t['kernel_drops']}, healthz max {t['healthz_max_s']:.3f} s, rss peak "
              f"{t['rss_peak'] / 2**20:.0f} MiB, answers {t['answers']}")
    finally:
        srv.stop()


def memory(out, tmp, devices):
    R.log("== 3. memory: tracking, restoring and scraping devices with readings")
    out["restore_memory"] = restore_memory(tmp, devices, 32)
    m = out["restore_memory"]
    R.log(f"   {m['restored_devices']} devices restored in {m['restore_s']:.2f} s; peaks: tracking "
          f"{m['tracking_peak'] / 2**20:.0f} MiB, restore {m['restore_peak'] / 2**20:.0f} MiB, with scrapes "
          f"{m['after_scrapes_peak'] / 2**20:.0f} MiB (/metrics {m['metrics_bytes'] / 1e6:.1f} MB)")


def crash_section(out, tmp, devices, rate, quick):
    R.log("== 4. crashes")
    n = 5 if quick else 30
    # Enough frames that the traffic never repeats during the crashes (a
    # repeated frame is a duplicate, and duplicates add no records).
    long_cap = capture(tmp, devices, int(n * 5 * rate / devices) + 2)
    out["crashes"] = crashes(tmp, long_cap, devices, rate, n)
    lost = [c["records_lost"] for c in out["crashes"]["crashes"]]
    restart = [c["restart_s"] for c in out["crashes"]["crashes"]]
    out["crash_summary"] = {"records_lost_mean": sum(lost) / len(lost), "records_lost_max": max(lost),
                            "restart_s_mean": sum(restart) / len(restart), "restart_s_max": max(restart)}
    R.log(f"   {out['crash_summary']}")


if __name__ == "__main__":
    main()
