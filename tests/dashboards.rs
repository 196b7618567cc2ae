//! The dashboards, scrape config and alerts against a real Prometheus
//! (Debian package `prometheus`) scraping a running server that simulated
//! fleets feed over UDP and QUIC, with loss, duplicates and corruption, and as
//! Teltonika trackers and OsmAnd phones, with resends and garbage.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

/// Runs a tool and returns (success, stdout + stderr).
fn run(cmd: &mut Command) -> (bool, String) {
    let out =
        cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e} (scripts/setup.sh installs it)"));
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn prom_query(base: &str, q: &str) -> Vec<Value> {
    let mut resp = ureq::get(&format!("{base}/api/v1/query"))
        .query("query", q)
        .call()
        .unwrap_or_else(|e| panic!("query {q}: {e}"));
    let v: Value = serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap();
    assert_eq!(v["status"], "success", "query {q}: {v}");
    match &v["data"]["result"] {
        Value::Array(a) => a.clone(),
        // Scalars and strings are one value.
        other if !other.is_null() => vec![other.clone()],
        _ => Vec::new(),
    }
}

#[test]
fn promtool_checks_are_clean() {
    let dir = repo("dashboards");
    let (ok, out) =
        run(Command::new("promtool").args(["check", "config", "prometheus.yml"]).current_dir(&dir));
    assert!(ok, "promtool check config:\n{out}");
    let (ok, out) =
        run(Command::new("promtool").args(["check", "rules", "alerts.yml"]).current_dir(&dir));
    assert!(ok, "promtool check rules:\n{out}");
    let (ok, out) =
        run(Command::new("promtool").args(["test", "rules", "alerts_test.yml"]).current_dir(&dir));
    assert!(ok, "promtool test rules:\n{out}");
}

#[test]
fn every_alert_has_a_firing_and_a_silent_test_case() {
    let alerts: Vec<String> = std::fs::read_to_string(repo("dashboards/alerts.yml"))
        .unwrap()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert:").map(|n| n.trim().to_string()))
        .collect();
    assert!(alerts.len() >= 5, "{alerts:?}");
    for a in &alerts {
        assert!(
            a.chars().next().is_some_and(|c| c.is_ascii_uppercase()) && !a.contains('_'),
            "{a} is not CamelCase"
        );
    }
    let tests = std::fs::read_to_string(repo("dashboards/alerts_test.yml")).unwrap();
    let mut cases: BTreeMap<String, (bool, bool)> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in tests.lines() {
        let t = line.trim();
        if let Some(n) = t.strip_prefix("alertname:") {
            current = Some(n.trim().to_string());
        } else if let Some(rest) = t.strip_prefix("exp_alerts:") {
            if let Some(n) = current.take() {
                let e = cases.entry(n).or_default();
                if rest.trim() == "[]" {
                    e.1 = true;
                } else {
                    e.0 = true;
                }
            }
        }
    }
    for a in &alerts {
        let (fires, silent) = cases.get(a).copied().unwrap_or_default();
        assert!(fires, "no promtool test case where {a} fires");
        assert!(silent, "no promtool test case where {a} stays silent");
    }
    // Severity label and summary/description annotations on every alert.
    let text = std::fs::read_to_string(repo("dashboards/alerts.yml")).unwrap();
    let blocks: Vec<&str> = text.split("- alert:").skip(1).collect();
    for b in blocks {
        for want in ["severity:", "summary:", "description:"] {
            assert!(b.contains(want), "alert {} lacks {want}", b.lines().next().unwrap_or(""));
        }
    }
}

#[test]
fn dashboard_structure() {
    let (ok, out) = run(Command::new("python3").arg(repo("dashboards/check_dashboards.py")));
    assert!(ok, "check_dashboards.py:\n{out}");
    // The same rules, checked here too.
    let mut uids = Vec::new();
    for f in ["fleetwire-overview.json", "fleetwire-device.json", "fleetwire-ingest.json"] {
        let d: Value = serde_json::from_str(
            &std::fs::read_to_string(repo(&format!("dashboards/{f}"))).unwrap(),
        )
        .unwrap_or_else(|e| panic!("{f}: {e}"));
        uids.push(d["uid"].as_str().unwrap().to_string());
        let mut panels: Vec<Value> = d["panels"].as_array().unwrap().clone();
        let mut i = 0;
        while i < panels.len() {
            if let Some(inner) = panels[i]["panels"].as_array() {
                panels.extend(inner.clone());
            }
            i += 1;
        }
        for p in panels.iter().filter(|p| p["type"] != "row") {
            let title = p["title"].as_str().unwrap_or("?");
            assert_eq!(p["datasource"]["uid"], "${datasource}", "{f}: {title}");
            assert!(
                p["fieldConfig"]["defaults"]["unit"].as_str().is_some_and(|u| !u.is_empty()),
                "{f}: {title} has no unit"
            );
            assert!(
                p["description"].as_str().is_some_and(|u| !u.is_empty()),
                "{f}: {title} has no description"
            );
        }
        assert!(
            !std::fs::read_to_string(repo(&format!("dashboards/{f}")))
                .unwrap()
                .contains("\"uid\": \"prometheus\"")
        );
    }
    let n = uids.len();
    uids.sort();
    uids.dedup();
    assert_eq!(uids.len(), n, "dashboard uids are not unique");
}

#[test]
fn every_panel_query_returns_data_from_a_real_prometheus() {
    let s = Server::in_process(&["--series-ttl", "10m"]);
    let tmp = tempfile::tempdir().unwrap();

    // A fleet over UDP and one over QUIC, running while Prometheus scrapes,
    // with loss, duplicates, reordering and corruption; Teltonika trackers
    // (resends, corrupted packets) and OsmAnd phones (requests without id).
    let udp_target = s.udp.to_string();
    let quic_target = s.quic.unwrap().to_string();
    let teltonika = s.teltonika.expect("Teltonika listener");
    let osmand = s.osmand.expect("OsmAnd listener");
    let (teltonika_target, osmand_target) = (teltonika.to_string(), osmand.to_string());
    let ca = s.data_dir.join("dev-cert.pem");
    let fleet = |args: &[&str]| {
        Killed(
            Command::new(BIN)
                .arg("sim")
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("sim"),
        )
    };
    let _udp = fleet(&[
        "--target",
        &udp_target,
        "--devices",
        "20",
        "--rate",
        "2",
        "--duration",
        "120",
        "--loss",
        "3",
        "--dup",
        "3",
        "--reorder",
        "3",
        "--corrupt",
        "3",
        "--seed",
        "1",
    ]);
    let _quic = fleet(&[
        "--target",
        &quic_target,
        "--transport",
        "quic",
        "--ca",
        ca.to_str().unwrap(),
        "--devices",
        "10",
        "--first-id",
        "101",
        "--rate",
        "2",
        "--duration",
        "120",
        "--loss",
        "3",
        "--dup",
        "3",
        "--corrupt",
        "3",
        "--seed",
        "2",
    ]);
    let _teltonika = fleet(&[
        "--protocol",
        "teltonika",
        "--target",
        &teltonika_target,
        "--devices",
        "20",
        "--rate",
        "2",
        "--duration",
        "120",
        "--dup",
        "3",
        "--corrupt",
        "3",
        "--seed",
        "3",
    ]);
    let _osmand = fleet(&[
        "--protocol",
        "osmand",
        "--target",
        &osmand_target,
        "--devices",
        "10",
        "--first-id",
        "201",
        "--rate",
        "2",
        "--duration",
        "120",
        "--corrupt",
        "3",
        "--seed",
        "4",
    ]);
    // Refusals the sims do not make: Teltonika packets with a bad packet
    // type byte (length 3 matches, type 0x02), OsmAnd requests whose latitude
    // does not parse.
    let garbage = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for _ in 0..3 {
        garbage.send_to(&[0x00, 0x03, 0xca, 0xfe, 0x02], teltonika).unwrap();
        let r = ureq::get(&format!("http://{osmand}/?id=dashboards&lat=north&lon=11.5")).call();
        assert!(matches!(r, Err(ureq::Error::StatusCode(400))), "{r:?}");
    }

    // promtool check metrics on the live endpoint.
    s.wait_until(20, "traffic", |s| {
        ["quic", "teltonika", "osmand"]
            .iter()
            .all(|t| s.metric("fleetwire_datagrams_accepted_total", &[("transport", t)]) > 0.0)
            && s.metric(
                "fleetwire_datagrams_rejected_total",
                &[("transport", "teltonika"), ("reason", "bad_packet_type")],
            ) == 3.0
    });
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(s.metrics().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "promtool check metrics:\n{said}");

    // Prometheus scraping fleetwire every second, with our alert rules.
    let port = free_port();
    let config = tmp.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: fleetwire\n    static_configs:\n      - targets: ['{}']\n",
            repo("dashboards/alerts.yml").display(),
            s.http
        ),
    )
    .unwrap();
    let (ok, out) = run(Command::new("promtool").arg("check").arg("config").arg(&config));
    assert!(ok, "{out}");
    let _prom = Killed(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", tmp.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (Debian package prometheus; scripts/setup.sh installs it)"),
    );
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut ready_at = None;
    while Instant::now() < deadline {
        let up = ureq::get(&format!("{base}/-/ready")).call().is_ok()
            && prom_query(&base, "up{job=\"fleetwire\"} == 1").len() == 1;
        if up && ready_at.is_none() {
            ready_at = Some(Instant::now());
        }
        // Enough scrapes for rate() over the 10 s window used below.
        if ready_at.is_some_and(|t| t.elapsed() > Duration::from_secs(14)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(ready_at.is_some(), "Prometheus never scraped fleetwire");

    // Every panel expression, with template variables substituted.
    let (ok, listing) =
        run(Command::new("python3").arg(repo("dashboards/check_dashboards.py")).args([
            "--list-exprs",
            "--set",
            "device=1",
            "--set",
            "instance=.*",
            "--set",
            "__rate_interval=10s",
        ]));
    assert!(ok, "{listing}");
    const TRANSPORTS: [&str; 4] = ["osmand", "quic", "teltonika", "udp"];
    let transports = |result: &[Value]| -> Vec<String> {
        let mut t: Vec<String> = result
            .iter()
            .filter_map(|r| r["metric"]["transport"].as_str().map(str::to_string))
            .collect();
        t.sort();
        t.dedup();
        t
    };
    let mut checked = 0;
    let mut empty = Vec::new();
    let mut per_transport = 0;
    for line in listing.lines().filter(|l| l.starts_with('{')) {
        let t: Value = serde_json::from_str(line).unwrap();
        let expr = t["expanded"].as_str().unwrap_or_else(|| t["expr"].as_str().unwrap());
        assert!(!expr.contains('$'), "unsubstituted variable in {expr}");
        let result = prom_query(&base, expr);
        if result.is_empty() {
            empty.push(format!("{} / {} / {}: {expr}", t["dashboard"], t["panel"], t["refId"]));
        }
        // A panel split by transport, not selecting some, shows every one.
        let seen = transports(&result);
        if !seen.is_empty() && !expr.contains("transport=") && !expr.contains("reason=") {
            assert_eq!(seen, TRANSPORTS, "{} / {}: {expr}", t["dashboard"], t["panel"]);
            per_transport += 1;
        }
        checked += 1;
    }
    assert!(per_transport >= 4, "only {per_transport} panel queries split by transport");
    assert!(checked >= 30, "only {checked} expressions");
    assert!(
        empty.is_empty(),
        "{} of {checked} panel queries returned no data:\n{}",
        empty.len(),
        empty.join("\n")
    );

    // Devices of both transports and the injected faults are visible.
    assert!(!prom_query(&base, "fleetwire_device_online{device=\"101\"}").is_empty());
    assert!(
        !prom_query(&base, "fleetwire_datagrams_rejected_total{reason=\"bad_checksum\"} > 0")
            .is_empty()
    );
    assert!(!prom_query(&base, "fleetwire_frames_duplicate_total > 0").is_empty());
    // Every transport carries traffic now, and has refusals.
    let moving =
        prom_query(&base, "sum by (transport) (rate(fleetwire_datagrams_accepted_total[10s])) > 0");
    assert_eq!(transports(&moving), TRANSPORTS, "{moving:?}");
    let refused = prom_query(&base, "sum by (transport) (fleetwire_datagrams_rejected_total) > 0");
    assert_eq!(transports(&refused), TRANSPORTS, "{refused:?}");
    assert!(
        !prom_query(
            &base,
            "fleetwire_datagrams_rejected_total{transport=\"teltonika\", reason=\"bad_packet_type\"} == 3"
        )
        .is_empty()
    );
    assert!(
        !prom_query(
            &base,
            "fleetwire_datagrams_rejected_total{transport=\"osmand\", reason=\"bad_value\"} == 3"
        )
        .is_empty()
    );
    // Trackers are acknowledged, and every IMEI and phone id registered
    // once: 20 + 10 (the OsmAnd ids are `sim-<id>`, not numbers).
    assert!(!prom_query(&base, "rate(fleetwire_teltonika_acks_total[10s]) > 0").is_empty());
    assert!(!prom_query(&base, "fleetwire_registered_devices == 30").is_empty());
    assert!(!prom_query(&base, "fleetwire_devices_registered_total == 30").is_empty());
    assert!(!prom_query(&base, "fleetwire_device_online{device=\"4026531840\"}").is_empty());
    // The rules loaded and evaluate.
    let mut resp = ureq::get(&format!("{base}/api/v1/rules")).call().unwrap();
    let rules: Value = serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap();
    let groups = rules["data"]["groups"].as_array().unwrap();
    let n: usize = groups.iter().map(|g| g["rules"].as_array().unwrap().len()).sum();
    assert!(n >= 5, "{rules}");
    for g in groups {
        for r in g["rules"].as_array().unwrap() {
            assert_eq!(r["health"], "ok", "rule {} is unhealthy: {r}", r["name"]);
        }
    }
}
