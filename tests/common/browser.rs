//! A real headless Chromium for tests, driven through chromedriver's W3C
//! WebDriver HTTP API with `ureq` (Debian `chromium` and `chromium-driver`;
//! `scripts/setup.sh` installs them). Declare it from a test with
//! `#[path = "common/browser.rs"] mod browser;`.
//!
//! [`Browser::start`] runs `chromedriver` on a free loopback port in a
//! process group of its own and opens a session (a fresh profile in a
//! temporary directory); dropping the `Browser` deletes the session and
//! kills the group, so no Chromium outlives its test. Screenshots and
//! failure artefacts go to `target/browser-artifacts/`.
#![allow(dead_code)]

use std::io::Read;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The Chromium binary of Debian's `chromium` package.
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// chromedriver (Debian's `chromium-driver`), looked up on `PATH`.
pub const CHROMEDRIVER: &str = "chromedriver";
/// The browser window (the viewport may be smaller: window decorations).
pub const WINDOW: (u32, u32) = (1280, 900);

/// A headless Chromium session.
pub struct Browser {
    /// The test's name, for artefact file names.
    name: String,
    driver: Child,
    /// chromedriver's URL, `http://127.0.0.1:<port>`.
    base: String,
    session: String,
    agent: ureq::Agent,
    log_path: PathBuf,
    _profile: tempfile::TempDir,
}

/// Where screenshots and failure artefacts go: `target/browser-artifacts/`.
pub fn artifacts_dir() -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let dir = tmp.parent().unwrap_or(tmp).join("browser-artifacts");
    std::fs::create_dir_all(&dir).expect("create target/browser-artifacts");
    dir
}

fn missing(what: &str, pkg: &str) -> ! {
    panic!(
        "{what} not found: the browser tests need Debian's `chromium` and `chromium-driver` \
         (here: {pkg}); scripts/setup.sh installs them"
    )
}

/// `name` on `PATH` (or `name` itself when it is a path to a file).
fn which(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        return Path::new(name).is_file().then(|| PathBuf::from(name));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file())
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

/// JavaScript's truthiness of a returned value.
pub fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0 && !f.is_nan()),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session (Debian's
    /// binaries). Panics, naming `scripts/setup.sh`, when either is missing.
    pub fn start(name: &str) -> Browser {
        Browser::start_with(name, CHROMIUM, CHROMEDRIVER)
    }

    /// Like [`start`](Self::start), with given binaries.
    pub fn start_with(name: &str, chromium: &str, chromedriver: &str) -> Browser {
        if !Path::new(chromium).is_file() {
            missing(&format!("Chromium ({chromium})"), "chromium");
        }
        let Some(driver_bin) = which(chromedriver) else {
            missing(&format!("chromedriver ({chromedriver} on PATH)"), "chromium-driver")
        };
        let profile = tempfile::tempdir().expect("tempdir for the Chromium profile");
        let log_path = profile.path().join("chromedriver.log");
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .proxy(None)
            .timeout_global(Some(Duration::from_secs(120)))
            .build()
            .into();
        // A port picked this way can be taken before chromedriver binds it:
        // try a few.
        let mut last_err = String::new();
        for _ in 0..3 {
            let port = free_port();
            let mut driver = Command::new(&driver_bin)
                .arg(format!("--port={port}"))
                .arg(format!("--log-path={}", log_path.display()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {}: {e}", driver_bin.display()));
            let base = format!("http://127.0.0.1:{port}");
            match wait_ready(&agent, &base, &mut driver) {
                Ok(()) => {
                    let mut b = Browser {
                        name: name.to_string(),
                        driver,
                        base,
                        session: String::new(),
                        agent,
                        log_path,
                        _profile: profile,
                    };
                    b.session = b.new_session(chromium);
                    return b;
                }
                Err(e) => {
                    last_err = e;
                    kill_group(&mut driver);
                }
            }
        }
        panic!("chromedriver did not start: {last_err}\n{}", tail_of(&log_path));
    }

    fn new_session(&self, chromium: &str) -> String {
        let (w, h) = WINDOW;
        let profile = self._profile.path().join("profile");
        let args = [
            "--headless=new".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            format!("--window-size={w},{h}"),
            format!("--user-data-dir={}", profile.display()),
        ];
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:loggingPrefs": {"browser": "ALL"},
            "goog:chromeOptions": {"binary": chromium, "args": args},
        }}});
        let v = self
            .call("POST", "/session", Some(caps))
            .unwrap_or_else(|e| panic!("new WebDriver session: {e}\n{}", tail_of(&self.log_path)));
        v["sessionId"].as_str().unwrap_or_else(|| panic!("no sessionId in {v}")).to_string()
    }

    /// One WebDriver command: its `value`, or the WebDriver error.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let url = format!("{}{}", self.base, path);
        let r = match (method, body) {
            ("GET", _) => self.agent.get(&url).call(),
            ("DELETE", _) => self
                .agent
                .delete(&url)
                .config()
                .timeout_global(Some(Duration::from_secs(10)))
                .build()
                .call(),
            (_, body) => self.agent.post(&url).send_json(body.unwrap_or_else(|| json!({}))),
        };
        let mut r = r.map_err(|e| format!("{method} {path}: {e}"))?;
        let status = r.status().as_u16();
        let text = r
            .body_mut()
            .with_config()
            .limit(256 << 20)
            .read_to_string()
            .map_err(|e| format!("{method} {path}: reading the answer: {e}"))?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| format!("{method} {path}: HTTP {status}, not JSON ({e}): {text}"))?;
        if status >= 400 || v["value"].get("error").is_some_and(|e| e.is_string()) {
            return Err(format!(
                "{method} {path}: HTTP {status}: {}: {}",
                v["value"]["error"].as_str().unwrap_or("?"),
                v["value"]["message"].as_str().unwrap_or(&text)
            ));
        }
        Ok(v["value"].clone())
    }

    fn session_call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        self.call(method, &format!("/session/{}{}", self.session, path), body)
    }

    /// Navigates to `url` and waits for the page to load.
    pub fn open(&self, url: &str) {
        self.session_call("POST", "/url", Some(json!({ "url": url })))
            .unwrap_or_else(|e| panic!("open {url}: {e}"));
    }

    /// Runs `js` as the body of a function in the page (so it says
    /// `return ...` to give a value) and returns its value, or the error it
    /// threw.
    pub fn try_eval(&self, js: &str) -> Result<Value, String> {
        self.session_call("POST", "/execute/sync", Some(json!({"script": js, "args": []})))
    }

    /// [`try_eval`](Self::try_eval), panicking (with the browser's console)
    /// when the script throws.
    pub fn eval(&self, js: &str) -> Value {
        self.try_eval(js).unwrap_or_else(|e| {
            panic!(
                "script failed: {e}\nscript: {js}\nbrowser console:\n{}",
                self.console().join("\n")
            )
        })
    }

    /// Polls `js` (as in [`eval`](Self::eval)) every 100 ms until it
    /// returns a truthy value, and returns that value. After `secs` it
    /// saves a screenshot and panics with the last value or error and the
    /// browser's console.
    pub fn wait_for(&self, js: &str, secs: u64) -> Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut last;
        loop {
            last = match self.try_eval(js) {
                Ok(v) if truthy(&v) => return v,
                Ok(v) => format!("returned {v}"),
                Err(e) => format!("threw {e}"),
            };
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let shot = artifacts_dir().join(format!("{}-timeout.png", self.name));
        let saved = match self.try_screenshot(&shot) {
            Ok(_) => format!("screenshot: {}", shot.display()),
            Err(e) => format!("no screenshot: {e}"),
        };
        panic!(
            "timed out after {secs} s waiting for `{js}`; it last {last}\n{saved}\nbrowser console:\n{}",
            self.console().join("\n")
        );
    }

    fn try_screenshot(&self, path: &Path) -> Result<Vec<u8>, String> {
        let v = self.session_call("GET", "/screenshot", None)?;
        let b64 = v.as_str().ok_or_else(|| format!("screenshot is not a string: {v}"))?;
        let png = base64_decode(b64)?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        std::fs::write(path, &png).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(png)
    }

    /// Saves a PNG screenshot of the viewport at `path` and returns it.
    pub fn screenshot(&self, path: &Path) -> Vec<u8> {
        self.try_screenshot(path).unwrap_or_else(|e| panic!("screenshot: {e}"))
    }

    /// The browser console's entries since the last call (level, source,
    /// message).
    pub fn console(&self) -> Vec<String> {
        match self.session_call("POST", "/se/log", Some(json!({"type": "browser"}))) {
            Ok(Value::Array(entries)) => entries
                .iter()
                .map(|e| {
                    format!(
                        "{} {}: {}",
                        e["level"].as_str().unwrap_or("?"),
                        e["source"].as_str().unwrap_or("?"),
                        e["message"].as_str().unwrap_or("?")
                    )
                })
                .collect(),
            Ok(v) => vec![format!("(console log: {v})")],
            Err(e) => vec![format!("(no console log: {e})")],
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.call("DELETE", &format!("/session/{}", self.session), None);
        }
        kill_group(&mut self.driver);
    }
}

/// Waits until chromedriver answers `/status` with `ready`.
fn wait_ready(agent: &ureq::Agent, base: &str, driver: &mut Child) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(Some(st)) = driver.try_wait() {
            return Err(format!("chromedriver exited: {st}"));
        }
        if let Ok(mut r) = agent.get(format!("{base}/status")).call() {
            let ready = r.body_mut().read_json::<Value>().ok().map(|v| v["value"]["ready"] == true);
            if ready == Some(true) {
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err("chromedriver not ready after 20 s".into())
}

/// Kills chromedriver and whatever it started (its process group).
fn kill_group(driver: &mut Child) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", driver.id())])
        .stderr(Stdio::null())
        .status();
    let _ = driver.kill();
    let _ = driver.wait();
}

/// The last lines of a log file, for failure messages.
fn tail_of(path: &Path) -> String {
    let mut s = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.read_to_string(&mut s);
    }
    let lines: Vec<&str> = s.lines().collect();
    format!(
        "chromedriver log ({}):\n{}",
        path.display(),
        lines[lines.len().saturating_sub(30)..].join("\n")
    )
}

/// Standard base64 (RFC 4648, with padding) to bytes.
pub fn base64_decode(s: &str) -> Result<Vec<u8>, String> {
    fn val(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let bytes: Vec<u8> = s.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    if bytes.len() % 4 != 0 {
        return Err(format!("base64 length {} is not a multiple of 4", bytes.len()));
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for (i, chunk) in bytes.chunks(4).enumerate() {
        let last = i == bytes.len() / 4 - 1;
        let pad = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return Err("misplaced base64 padding".into());
        }
        let mut n = 0u32;
        for &c in &chunk[..4 - pad] {
            n = n << 6 | val(c).ok_or_else(|| format!("not base64: {:?}", c as char))?;
        }
        n <<= 6 * pad as u32;
        out.extend_from_slice(&n.to_be_bytes()[1..4 - pad]);
    }
    Ok(out)
}

/// Width and height of a PNG (from its IHDR chunk).
pub fn png_size(png: &[u8]) -> Option<(u32, u32)> {
    if png.len() < 24 || !png.starts_with(b"\x89PNG\r\n\x1a\n") || &png[12..16] != b"IHDR" {
        return None;
    }
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    Some((be(&png[16..20]), be(&png[20..24])))
}
