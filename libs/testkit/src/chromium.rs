//! A real headless Chromium for tests, driven over WebDriver: `chromedriver` started on a free
//! loopback port in its own process group (so the browsers it launches go with it), and a small
//! async WebDriver client ([`Browser`]) over reqwest: enough to load pages, find and click
//! elements, run script, read cookies and take screenshots.
//!
//! ```no_run
//! # async fn f() -> anyhow::Result<()> {
//! use loyalty_testkit::chromium::ChromeDriver;
//! if let Err(reason) = ChromeDriver::available() {
//!     println!("SKIPPED: {reason}");
//!     return Ok(());
//! }
//! let driver = ChromeDriver::start()?;
//! let browser = driver.browser().await?;
//! browser.goto("http://127.0.0.1:8080/dashboard").await?;
//! let title = browser.title().await?;
//! browser.close().await?;
//! # let _ = title;
//! # Ok(()) }
//! ```
//!
//! Chromium runs with `--headless=new --no-sandbox` (CI runs as root, where the sandbox cannot
//! start), a fresh profile and a download directory of its own per [`Browser`].

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use serde_json::{json, Value};

/// Environment variables naming the binaries to use.
pub const CHROMIUM_ENV: &str = "LOYALTY_CHROMIUM";
pub const CHROMEDRIVER_ENV: &str = "LOYALTY_CHROMEDRIVER";

/// How long chromedriver may take to say it is ready.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The key of an element reference in WebDriver answers.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

const HOW_TO: &str = "apt-get install -y chromium chromium-driver";

/// The binaries: Chromium and its chromedriver.
#[derive(Clone, Debug)]
pub struct Binaries {
    pub chromium: PathBuf,
    pub chromedriver: PathBuf,
}

fn find(env: &str, names: &[&str]) -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os(env) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!(
                "{} not found: {env}={} is not a file ({HOW_TO}, or unset {env})",
                names[0],
                p.display()
            ))
        };
    }
    let dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    for name in names {
        for d in dirs
            .iter()
            .map(PathBuf::as_path)
            .chain([Path::new("/usr/bin")])
        {
            let p = d.join(name);
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    Err(format!("{} not found: {HOW_TO}", names[0]))
}

/// A running `chromedriver` owned by a test; killed (with its browsers) when dropped.
pub struct ChromeDriver {
    binaries: Binaries,
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    http: reqwest::Client,
}

impl ChromeDriver {
    /// Chromium and chromedriver: `$LOYALTY_CHROMIUM` / `$LOYALTY_CHROMEDRIVER` if set, else on
    /// `PATH`, else in `/usr/bin`. The error says what is missing and how to get it, for a
    /// test to print as its skip reason (a failure under `LOYALTY_REQUIRE_SERVERS=1`).
    pub fn available() -> Result<Binaries, String> {
        Self::find_binaries().map_err(crate::missing)
    }

    fn find_binaries() -> Result<Binaries, String> {
        let chromium = find(
            CHROMIUM_ENV,
            &["chromium", "chromium-browser", "google-chrome"],
        )?;
        let chromedriver = find(CHROMEDRIVER_ENV, &["chromedriver"])?;
        // A browser that cannot even say its version cannot run a page either.
        let runs = Command::new(&chromium)
            .arg("--version")
            .stdin(Stdio::null())
            .output();
        match runs {
            Ok(o) if o.status.success() => {}
            Ok(o) => {
                return Err(format!(
                    "{} --version failed ({}): {}",
                    chromium.display(),
                    o.status,
                    String::from_utf8_lossy(&o.stderr).trim()
                ))
            }
            Err(e) => return Err(format!("{} does not run: {e}", chromium.display())),
        }
        Ok(Binaries {
            chromium,
            chromedriver,
        })
    }

    /// Starts chromedriver on a free loopback port and waits (at most 20 s) until its
    /// `/status` says ready. Retries with another port if the chosen one was taken meanwhile.
    pub fn start() -> anyhow::Result<ChromeDriver> {
        let binaries = Self::available().map_err(anyhow::Error::msg)?;
        let mut last = None;
        for _ in 0..3 {
            let port = crate::ports::free_port().context("finding a free port")?;
            match Self::start_on(binaries.clone(), port) {
                Ok(d) => return Ok(d),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow!("chromedriver did not start")))
    }

    fn start_on(binaries: Binaries, port: u16) -> anyhow::Result<ChromeDriver> {
        use std::os::unix::process::CommandExt;
        let dir = tempfile::Builder::new()
            .prefix("loyalty-chromium-")
            .tempdir()
            .context("creating the browser's directory")?;
        let log = dir.path().join("chromedriver.log");
        let child = Command::new(&binaries.chromedriver)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group: dropping the driver kills the browsers it started too.
            .process_group(0)
            .spawn()
            .with_context(|| format!("running {}", binaries.chromedriver.display()))?;
        let mut d = ChromeDriver {
            binaries,
            port,
            dir,
            child: Some(child),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()?,
        };
        if let Err(e) = d.wait_ready() {
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(10).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            d.stop();
            bail!(
                "chromedriver on port {port}: {e:#}; its log ends with:\n{}",
                tail.join("\n")
            );
        }
        Ok(d)
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait().context("waiting for chromedriver")? {
                    bail!("exited during startup ({status})");
                }
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("not listening within {START_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The directory of the driver's log and of its browsers' profiles and downloads.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A new headless browser (a WebDriver session) with a fresh profile and its own download
    /// directory, at 1280 × 1000.
    pub async fn browser(&self) -> anyhow::Result<Browser> {
        let n = std::fs::read_dir(self.dir.path())?.count();
        let profile = self.dir.path().join(format!("profile-{n}"));
        let downloads = self.dir.path().join(format!("downloads-{n}"));
        std::fs::create_dir_all(&downloads)?;
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": self.binaries.chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--no-first-run", "--no-default-browser-check", "--disable-extensions",
                    "--disable-background-networking", "--disable-sync",
                    "--disable-component-update", "--lang=en-US", "--window-size=1280,1000",
                    format!("--user-data-dir={}", profile.display()),
                ],
                "prefs": {
                    "download.default_directory": downloads,
                    "download.prompt_for_download": false,
                    "download.directory_upgrade": true,
                    "safebrowsing.enabled": false,
                },
            },
        }}});
        let r = self
            .http
            .post(format!("{}/session", self.url()))
            .json(&caps)
            .send()
            .await
            .context("POST /session to chromedriver")?;
        let v = answer(r).await.context("starting a browser")?;
        let id = v["sessionId"]
            .as_str()
            .ok_or_else(|| anyhow!("no sessionId in {v}"))?
            .to_owned();
        Ok(Browser {
            http: self.http.clone(),
            base: format!("{}/session/{id}", self.url()),
            downloads,
        })
    }

    /// Kills chromedriver and every browser it started (SIGKILL to its process group).
    pub fn stop(&mut self) {
        if let Some(c) = self.child.as_ref() {
            // SAFETY: kill(2) on our child's own process group.
            unsafe {
                libc::kill(-(c.id() as i32), libc::SIGKILL);
            }
        }
        crate::ports::kill(&mut self.child);
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        self.stop();
    }
}

impl std::fmt::Debug for ChromeDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChromeDriver")
            .field("binaries", &self.binaries)
            .field("port", &self.port)
            .field("dir", &self.dir.path())
            .finish()
    }
}

/// The `value` of a WebDriver answer, or its error.
async fn answer(r: reqwest::Response) -> anyhow::Result<Value> {
    let status = r.status();
    let v: Value = r.json().await.context("a WebDriver answer is JSON")?;
    if !status.is_success() {
        bail!(
            "WebDriver {status}: {} {}",
            v["value"]["error"].as_str().unwrap_or("?"),
            v["value"]["message"]
                .as_str()
                .unwrap_or("")
                .lines()
                .next()
                .unwrap_or("")
        );
    }
    Ok(v["value"].clone())
}

/// An element of the page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Element(pub String);

impl Element {
    fn json(&self) -> Value {
        json!({ ELEMENT: self.0 })
    }
}

/// One browser (a WebDriver session).
pub struct Browser {
    http: reqwest::Client,
    base: String,
    downloads: PathBuf,
}

impl Browser {
    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        answer(self.http.get(format!("{}{path}", self.base)).send().await?).await
    }

    async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        answer(
            self.http
                .post(format!("{}{path}", self.base))
                .json(&body)
                .send()
                .await?,
        )
        .await
    }

    /// Where this browser saves downloads.
    pub fn downloads(&self) -> &Path {
        &self.downloads
    }

    /// Loads `url` and waits for it (the document's load).
    pub async fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.post("/url", json!({ "url": url })).await.map(drop)
    }

    pub async fn current_url(&self) -> anyhow::Result<String> {
        Ok(self
            .get("/url")
            .await?
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    pub async fn title(&self) -> anyhow::Result<String> {
        Ok(self
            .get("/title")
            .await?
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    /// The first element matching a CSS selector.
    pub async fn find(&self, css: &str) -> anyhow::Result<Element> {
        let v = self
            .post("/element", json!({"using": "css selector", "value": css}))
            .await
            .with_context(|| format!("finding {css}"))?;
        Ok(Element(
            v[ELEMENT]
                .as_str()
                .ok_or_else(|| anyhow!("no element in {v}"))?
                .to_owned(),
        ))
    }

    /// Every element matching a CSS selector.
    pub async fn find_all(&self, css: &str) -> anyhow::Result<Vec<Element>> {
        let v = self
            .post("/elements", json!({"using": "css selector", "value": css}))
            .await?;
        Ok(v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e[ELEMENT].as_str().map(|s| Element(s.to_owned())))
            .collect())
    }

    pub async fn click(&self, e: &Element) -> anyhow::Result<()> {
        self.post(&format!("/element/{}/click", e.0), json!({}))
            .await
            .map(drop)
    }

    /// Types `text` into an element.
    pub async fn send_keys(&self, e: &Element, text: &str) -> anyhow::Result<()> {
        self.post(&format!("/element/{}/value", e.0), json!({ "text": text }))
            .await
            .map(drop)
    }

    /// The element's rendered text.
    pub async fn text(&self, e: &Element) -> anyhow::Result<String> {
        Ok(self
            .get(&format!("/element/{}/text", e.0))
            .await?
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    /// An attribute (or property) of an element.
    pub async fn attr(&self, e: &Element, name: &str) -> anyhow::Result<Option<String>> {
        Ok(self
            .get(&format!("/element/{}/attribute/{name}", e.0))
            .await?
            .as_str()
            .map(str::to_owned))
    }

    /// Runs `script` (a function body; `arguments` holds `args`, elements as [`Element::json`])
    /// and returns what it returns.
    pub async fn execute(&self, script: &str, args: Vec<Value>) -> anyhow::Result<Value> {
        self.post("/execute/sync", json!({ "script": script, "args": args }))
            .await
            .context("running script")
    }

    /// Runs `script` with an element as `arguments[0]`.
    pub async fn execute_on(&self, script: &str, e: &Element) -> anyhow::Result<Value> {
        self.execute(script, vec![e.json()]).await
    }

    /// Polls `script` (a function body returning a value) until it returns something truthy,
    /// for at most `timeout`; returns that value.
    pub async fn wait_for(&self, script: &str, timeout: Duration) -> anyhow::Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.execute(script, vec![]).await?;
            let truthy = match &v {
                Value::Null | Value::Bool(false) => false,
                Value::String(s) => !s.is_empty(),
                Value::Number(n) => n.as_f64() != Some(0.0),
                _ => true,
            };
            if truthy {
                return Ok(v);
            }
            if Instant::now() >= deadline {
                bail!("waited {timeout:?} for `{script}`");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The cookies the browser holds for the current page, HttpOnly ones included.
    pub async fn cookies(&self) -> anyhow::Result<Vec<Value>> {
        Ok(self
            .get("/cookie")
            .await?
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// Sets the window's size (CSS pixels).
    pub async fn resize(&self, width: u32, height: u32) -> anyhow::Result<()> {
        self.post("/window/rect", json!({"width": width, "height": height}))
            .await
            .map(drop)
    }

    /// A PNG of the viewport.
    pub async fn screenshot(&self) -> anyhow::Result<Vec<u8>> {
        let v = self.get("/screenshot").await?;
        let b64 = v.as_str().ok_or_else(|| anyhow!("no screenshot"))?;
        data_encoding::BASE64
            .decode(b64.as_bytes())
            .context("decoding the screenshot")
    }

    /// A PNG of the whole page, beyond the viewport (Chromium's DevTools protocol, through
    /// chromedriver), from the top.
    pub async fn screenshot_full_page(&self) -> anyhow::Result<Vec<u8>> {
        let size = self
            .execute(
                "window.scrollTo(0, 0); const e = document.documentElement; \
                 return [e.scrollWidth, e.scrollHeight]",
                vec![],
            )
            .await?;
        let (w, h) = (
            size[0].as_f64().unwrap_or(1280.0),
            size[1].as_f64().unwrap_or(1000.0),
        );
        let v = self
            .post(
                "/goog/cdp/execute",
                json!({"cmd": "Page.captureScreenshot", "params": {
                    "format": "png", "captureBeyondViewport": true,
                    "clip": {"x": 0, "y": 0, "width": w, "height": h, "scale": 1},
                }}),
            )
            .await
            .context("Page.captureScreenshot")?;
        let b64 = v["data"].as_str().ok_or_else(|| anyhow!("no screenshot"))?;
        data_encoding::BASE64
            .decode(b64.as_bytes())
            .context("decoding the screenshot")
    }

    /// Waits until the download directory holds one finished file; its path.
    pub async fn downloaded(&self, timeout: Duration) -> anyhow::Result<PathBuf> {
        let deadline = Instant::now() + timeout;
        loop {
            let done: Vec<PathBuf> = std::fs::read_dir(&self.downloads)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                    !name.ends_with(".crdownload") && !name.starts_with('.')
                })
                .collect();
            if let Some(p) = done.into_iter().next() {
                return Ok(p);
            }
            if Instant::now() >= deadline {
                bail!(
                    "nothing downloaded to {} within {timeout:?}",
                    self.downloads.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Ends the session (the browser quits).
    pub async fn close(self) -> anyhow::Result<()> {
        answer(self.http.delete(&self.base).send().await?)
            .await
            .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_browser_loads_a_page_and_runs_script() {
        if let Err(reason) = ChromeDriver::available() {
            println!("SKIPPED: {reason}");
            return;
        }
        let mut driver = ChromeDriver::start().unwrap();
        let b = driver.browser().await.unwrap();
        b.goto("data:text/html,<title>t</title><p id=x>hello</p>")
            .await
            .unwrap();
        assert_eq!(b.title().await.unwrap(), "t");
        let p = b.find("#x").await.unwrap();
        assert_eq!(b.text(&p).await.unwrap(), "hello");
        assert_eq!(b.execute("return 1 + 1", vec![]).await.unwrap(), json!(2));
        assert!(b.screenshot().await.unwrap().starts_with(b"\x89PNG"));
        assert!(b
            .screenshot_full_page()
            .await
            .unwrap()
            .starts_with(b"\x89PNG"));
        b.close().await.unwrap();
        driver.stop();
        assert!(!crate::ports::running(&mut driver.child));
    }
}
