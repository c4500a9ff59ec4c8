//! Headless Chromium driven over WebDriver (W3C, through Debian's
//! `chromedriver`), for tests of the pages a node serves: open a page, run
//! a script in it, click an element, take a screenshot.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use serde_json::{json, Value};

/// The W3C name of an element reference in a WebDriver answer.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Chromium and its driver, where both are installed: `None` otherwise
/// (`apt-get install chromium chromium-driver`).
pub fn available() -> Option<(PathBuf, PathBuf)> {
    let find = |names: &[&str]| {
        names.iter().find_map(|n| {
            Command::new(n)
                .arg("--version")
                .output()
                .ok()
                .filter(|o| o.status.success())
                .and_then(|_| in_path(n))
        })
    };
    Some((
        find(&["chromium", "chromium-browser", "google-chrome"])?,
        find(&["chromedriver"])?,
    ))
}

/// The full path of program `name`, from `PATH`.
fn in_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// One browser session; the driver and the browser end with it.
pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    agent: ureq::Agent,
}

impl Browser {
    /// Start `driver` on a free port and a headless `browser` through it,
    /// with a fresh profile in `profile` and a `width`×`height` window.
    pub fn start(
        browser: &Path,
        driver: &Path,
        profile: &Path,
        width: u32,
        height: u32,
    ) -> Result<Self> {
        let port = crate::free_port();
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("start `{}`", driver.display()))?;
        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(30))
            .build();
        let mut b = Self {
            driver: child,
            base: format!("http://{}", SocketAddr::from(([127, 0, 0, 1], port))),
            session: String::new(),
            agent,
        };
        // The driver answers once it listens.
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(v) = b.call("GET", "/status", None) {
                if v["ready"] == true {
                    break;
                }
            }
            if Instant::now() > deadline {
                bail!("chromedriver did not answer /status within 15 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ]
        .into_iter()
        .map(String::from)
        .chain([
            format!("--user-data-dir={}", profile.display()),
            format!("--window-size={width},{height}"),
        ])
        .collect::<Vec<_>>();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": browser.display().to_string(), "args": args},
        }}});
        let v = b.call("POST", "/session", Some(caps))?;
        b.session = v["sessionId"]
            .as_str()
            .context("a WebDriver session id")?
            .to_string();
        Ok(b)
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        let url = format!("{}{path}", self.base);
        let req = self.agent.request(method, &url);
        let resp = match body {
            Some(b) => req.send_json(b),
            None => req.call(),
        };
        let v: Value = match resp {
            Ok(r) => r.into_json()?,
            Err(ureq::Error::Status(code, r)) => {
                let v: Value = r.into_json().unwrap_or_default();
                bail!(
                    "WebDriver {method} {path}: HTTP {code}: {}",
                    v["value"]["message"]
                );
            }
            Err(e) => bail!("WebDriver {method} {path}: {e}"),
        };
        Ok(v["value"].clone())
    }

    fn in_session(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        self.call(method, &format!("/session/{}{path}", self.session), body)
    }

    pub fn goto(&self, url: &str) -> Result<()> {
        self.in_session("POST", "/url", Some(json!({ "url": url })))?;
        Ok(())
    }

    /// Run `script` (a function body; `return` its answer) in the page.
    pub fn eval(&self, script: &str) -> Result<Value> {
        self.in_session(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
    }

    /// Click the first element matching the CSS `selector`, as a user does.
    ///
    /// A page that re-renders between the find and the click (a live page
    /// redraws its buttons on every poll) leaves a stale reference: the
    /// element is found again, up to 10 times.
    pub fn click(&self, selector: &str) -> Result<()> {
        let mut tries = 0;
        loop {
            tries += 1;
            let el = self.in_session(
                "POST",
                "/element",
                Some(json!({"using": "css selector", "value": selector})),
            )?;
            let id = el[ELEMENT].as_str().context("an element reference")?;
            match self.in_session("POST", &format!("/element/{id}/click"), Some(json!({}))) {
                Ok(_) => return Ok(()),
                Err(e) if tries < 10 && e.to_string().contains("stale element") => {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Accept the page's `confirm` dialog.
    pub fn accept_alert(&self) -> Result<()> {
        self.in_session("POST", "/alert/accept", Some(json!({})))?;
        Ok(())
    }

    /// Evaluate `script` every 100 ms until `cond` holds on its answer or
    /// `within` passes; the answer that satisfied it. On timeout the error
    /// names `what` and shows the last answer.
    pub fn wait_for(
        &self,
        what: &str,
        within: Duration,
        script: &str,
        cond: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        let deadline = Instant::now() + within;
        loop {
            let last = match self.eval(script) {
                Ok(v) if cond(&v) => return Ok(v),
                Ok(v) => v,
                Err(e) => json!(e.to_string()),
            };
            if Instant::now() > deadline {
                bail!("timed out after {within:?} waiting for: {what}; last answer: {last}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A PNG of the window.
    pub fn screenshot(&self) -> Result<Vec<u8>> {
        let v = self.in_session("GET", "/screenshot", None)?;
        let b64 = v.as_str().context("a base64 screenshot")?;
        Ok(base64::engine::general_purpose::STANDARD.decode(b64)?)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.call("DELETE", &format!("/session/{}", self.session), None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
