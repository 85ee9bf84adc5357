//! Third-party clients driven by the tests (`conformance/clients/`).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `conformance/clients/<name>`.
pub fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("clients")
        .join(name)
}

/// The Python that has the clients' packages (`conformance/clients/requirements.txt`):
/// `$FERRY_PYTHON`, else the venv `conformance/test.sh` makes, `conformance/.venv`.
pub fn python() -> PathBuf {
    if let Some(python) = std::env::var_os("FERRY_PYTHON") {
        return python.into();
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(
        venv.exists(),
        "no {}: run `bash conformance/test.sh` once (it creates the venv), or set FERRY_PYTHON",
        venv.display()
    );
    venv
}

/// Run `ws_scenarios.py` (Python `websockets`) against `base` (e.g.
/// `ws://127.0.0.1:42102`) with `args`; panics with its output unless it passes.
pub fn ws_scenarios(base: &str, args: &[&str]) {
    let mut child = Command::new(python())
        .arg(script("ws_scenarios.py"))
        .arg(base)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start python");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    assert!(
        out.status.success(),
        "ws_scenarios.py {base} {args:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
