//! The WebSocket relay (spec/ws-relay.md) on the async-std runtime, driven by a
//! real browser: headless Chromium runs `conformance/clients/browser_page.html`,
//! whose script uses the browser's own `new WebSocket(url, [secret])` as the seed
//! shows, steered over DevTools by `conformance/clients/browser_ws.py`.
//!
//! Needs Chromium at `/usr/bin/chromium` or `$FERRY_CHROMIUM` (`.ci/run` installs
//! Debian's `chromium`); without it these tests fail, they do not skip.

use std::io::Read;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use ferry_conformance::clients::{python, script};
use ferry_conformance::served::AsyncStd;
use ferry_core::ws_relay::Config;

/// How long one run of `browser_ws.py` may take (its own deadlines add up to less).
const TIMEOUT: Duration = Duration::from_secs(60);
/// How long it gets to clean up after SIGTERM before it is killed.
const GRACE: Duration = Duration::from_secs(5);

fn start(config: Config) -> AsyncStd {
    AsyncStd::start(move |listener, stop| {
        ferry_async_std::ws_relay::serve_until(listener, config, stop)
    })
}

/// `$FERRY_CHROMIUM`, else `/usr/bin/chromium`; panics when it is not there.
fn chromium() -> PathBuf {
    let path = std::env::var_os("FERRY_CHROMIUM")
        .map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
    assert!(
        path.is_file(),
        "no Chromium at {}: these tests need a real browser. Install it \
         (`apt-get install -y --no-install-recommends chromium`, as .ci/run does) \
         or set FERRY_CHROMIUM to its path",
        path.display()
    );
    path
}

/// A port free on 127.0.0.1 just now (for the page, whose origin the relay must know).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// One browser at a time: two Chromiums starting together on a small, loaded
/// machine are what makes a run slow.
static ONE_BROWSER: Mutex<()> = Mutex::new(());

/// Run `browser_ws.py relay args…`; panics with its output unless it passes
/// within [`TIMEOUT`] (killed when it does not).
fn browser_ws(relay: &str, args: &[&str]) {
    let chromium = chromium();
    let _one = ONE_BROWSER
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut child = Command::new(python())
        .arg(script("browser_ws.py"))
        .arg(relay)
        .arg("--chromium")
        .arg(&chromium)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start python");
    let drain = |mut pipe: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut text = Vec::new();
            let _ = pipe.read_to_end(&mut text);
            String::from_utf8_lossy(&text).into_owned()
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("stdout")));
    let stderr = drain(Box::new(child.stderr.take().expect("stderr")));
    let started = Instant::now();
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > TIMEOUT {
            timed_out = true;
            // SIGTERM first: the script then kills Chromium and removes its profile.
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let grace = Instant::now();
            while child.try_wait().expect("wait").is_none() && grace.elapsed() < GRACE {
                thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            break child.wait().expect("wait");
        }
        thread::sleep(Duration::from_millis(20));
    };
    let stdout = stdout.join().expect("stdout reader");
    let stderr = stderr.join().expect("stderr reader");
    // Shown with `--nocapture`: the page's result and the script's timings.
    eprintln!("{stdout}{stderr}");
    assert!(
        status.success(),
        "browser_ws.py {relay} {args:?} failed ({status}{}):\n{stdout}{stderr}",
        if timed_out {
            format!(", timed out after {TIMEOUT:?}")
        } else {
            String::new()
        }
    );
}

/// WS-1, WS-2, WS-6, WS-7, WS-8 from a browser page, with an open relay.
#[test]
fn browser_websocket_peers_in_open_rooms() {
    let relay = start(Config::default());
    browser_ws(&format!("ws://{}", relay.addr()), &[]);
}

/// WS-3, WS-4 from a browser page: the secret offered as the seed shows
/// (`new WebSocket(url, [secret])`) and echoed, the page's origin allowed, a wrong
/// or missing secret and another origin refused.
#[test]
fn ws3_ws4_browser_websocket_with_secret_and_allowed_origin() {
    let page_port = free_port();
    let relay = start(Config {
        admin_secret: Some("br0wser-s3cret".to_owned()),
        allowed_origins: Some(vec![format!("http://127.0.0.1:{page_port}")]),
        ..Config::default()
    });
    browser_ws(
        &format!("ws://{}", relay.addr()),
        &[
            "--secret",
            "br0wser-s3cret",
            "--page-port",
            &page_port.to_string(),
            "--origin-check",
        ],
    );
}
