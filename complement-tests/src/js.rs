//! Drives the real `matrix-js-sdk` (with its Rust crypto compiled to
//! WebAssembly) against a test server, through `js/driver.mjs`: a Node.js
//! process that takes one JSON command per line on stdin and answers one JSON
//! line per command on stdout. The commands are documented at the top of
//! `driver.mjs`.
//!
//! The JavaScript dependencies are pinned in `js/package-lock.json`; install
//! them with `npm ci --prefix complement-tests/js` (Node.js 20 or newer);
//! [`JsDriver::start`] runs that itself when they are missing, and tests
//! using it fail, rather than skip, when that is impossible.
//!
//! ```ignore
//! let server = Server::start().await;
//! let mut js = JsDriver::start(&server).await;
//! js.ok("register", json!({ "name": "alice", "user": "alice", "password": "a long password" })).await;
//! ```

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines},
    process::{Child, ChildStdin, ChildStdout, Command},
    time::Instant,
};

use crate::Server;

/// The driver's own default for `timeoutMs`.
const DEFAULT_TIMEOUT_MS: u64 = 30_000;
/// How much longer than a command's `timeoutMs` to wait for its answer: the
/// driver itself gives up 5 s after `timeoutMs`.
const ANSWER_GRACE_MS: u64 = 30_000;
/// How many lines of the driver's log a failed [`JsDriver::ok`] shows.
const LOG_TAIL_LINES: usize = 80;

/// The directory holding `driver.mjs`, `package.json` and `node_modules`.
pub fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("js")
}

/// Installs the pinned npm dependencies (`npm ci`) once, if they are missing,
/// so `cargo test` works on a fresh clone. Panics if that fails.
fn install_dependencies(js: &Path) {
    static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    if installed(js) {
        return;
    }
    let npm = std::env::var_os("HEARTH_NPM").unwrap_or_else(|| OsString::from("npm"));
    let status = std::process::Command::new(&npm)
        .args(["ci", "--no-audit", "--no-fund", "--prefix"])
        .arg(js)
        .status()
        .unwrap_or_else(|e| {
            panic!("could not run `{}` to install the matrix-js-sdk tests' dependencies: {e}", npm.to_string_lossy())
        });
    assert!(
        status.success() && installed(js),
        "`npm ci --prefix {}` failed ({status}); the JavaScript tests need Node.js 20 or newer and npm",
        js.display()
    );
}

/// Whether every package of `package.json` is in `node_modules`.
fn installed(js: &Path) -> bool {
    ["matrix-js-sdk", "@matrix-org/matrix-sdk-crypto-wasm", "playwright-core", "otpauth"]
        .iter()
        .all(|p| js.join("node_modules").join(p).join("package.json").is_file())
}

/// Runs one of the Node scripts in `js/` to completion (killed after
/// `timeout`), with the npm dependencies installed first. Returns whether it
/// succeeded, and its stdout and stderr.
pub async fn run_script(script: &str, env: &[(&str, &str)], timeout: Duration) -> (bool, String, String) {
    let js = js_dir();
    install_dependencies(&js);
    let node = std::env::var_os("HEARTH_NODE").unwrap_or_else(|| OsString::from("node"));
    let mut command = Command::new(node);
    command.arg(js.join(script)).current_dir(&js).envs(env.iter().copied()).kill_on_drop(true);
    let output = tokio::time::timeout(timeout, command.output())
        .await
        .unwrap_or_else(|_| panic!("{script} did not finish within {timeout:?}"))
        .unwrap_or_else(|e| panic!("could not run node {script}: {e}"));
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A running `driver.mjs` process. It may hold several matrix-js-sdk clients,
/// each under a name chosen by the test. The process is killed on drop.
pub struct JsDriver {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
    next_id: u64,
    base_url: String,
    /// Holds the trusted certificate and the driver's log (its stderr).
    dir: TempDir,
}

impl JsDriver {
    /// Starts the driver for `server`: Node trusts exactly the server's
    /// certificate (through `NODE_EXTRA_CA_CERTS`), and `login`/`register`
    /// commands without a `baseUrl` use the server's URL.
    ///
    /// Installs the npm dependencies from the lockfile first if they are
    /// missing. Panics if that fails or Node cannot load the sdk. `HEARTH_NODE` overrides the `node` executable.
    pub async fn start(server: &Server) -> JsDriver {
        let js = js_dir();
        install_dependencies(&js);
        let dir = tempfile::tempdir().expect("temp dir for the js driver");
        let cert = dir.path().join("cert.pem");
        std::fs::write(&cert, server.certificate_pem()).expect("write the server certificate for Node");
        let log = std::fs::File::create(dir.path().join("driver.log")).expect("js driver log file");
        let node = std::env::var_os("HEARTH_NODE").unwrap_or_else(|| OsString::from("node"));
        let mut child = Command::new(&node)
            .arg(js.join("driver.mjs"))
            .current_dir(&js)
            .env("NODE_EXTRA_CA_CERTS", &cert)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "could not start `{}` for the matrix-js-sdk tests (Node.js 20 or newer must be installed): {e}",
                    node.to_string_lossy()
                )
            });
        let stdin = child.stdin.take().expect("js driver stdin");
        let stdout = BufReader::new(child.stdout.take().expect("js driver stdout")).lines();
        let mut driver = JsDriver { child, stdin, stdout, next_id: 0, base_url: server.url.clone(), dir };
        // Fails here, with the driver's log, if Node cannot load the sdk or its crypto.
        driver.ok("ping", json!({ "timeoutMs": 60_000 })).await;
        driver
    }

    /// The server's base URL, for the `baseUrl` argument of `login` and `register`.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Sends one command and waits for its answer: the `result` on success,
    /// the driver's error message otherwise. `login` and `register` get
    /// `baseUrl` filled in when `args` has none.
    pub async fn call(&mut self, cmd: &str, mut args: Value) -> Result<Value, String> {
        if matches!(cmd, "login" | "register")
            && let Some(obj) = args.as_object_mut()
            && !obj.contains_key("baseUrl")
        {
            obj.insert("baseUrl".into(), json!(self.base_url));
        }
        let timeout_ms = args.get("timeoutMs").and_then(Value::as_u64).unwrap_or(DEFAULT_TIMEOUT_MS);
        self.next_id += 1;
        let id = self.next_id;
        let mut line = json!({ "id": id, "cmd": cmd, "args": args }).to_string();
        line.push('\n');
        if let Err(e) = self.stdin.write_all(line.as_bytes()).await {
            return Err(format!("could not send {cmd} to the js driver ({}): {e}", self.exit_status()));
        }
        if let Err(e) = self.stdin.flush().await {
            return Err(format!("could not send {cmd} to the js driver ({}): {e}", self.exit_status()));
        }

        let wait_ms = timeout_ms + ANSWER_GRACE_MS;
        let deadline = Instant::now() + Duration::from_millis(wait_ms);
        loop {
            let next = tokio::time::timeout_at(deadline, self.stdout.next_line()).await;
            let text = match next {
                Err(_) => return Err(format!("the js driver did not answer {cmd} within {wait_ms} ms")),
                Ok(Err(e)) => return Err(format!("reading the js driver's answer to {cmd}: {e}")),
                Ok(Ok(None)) => {
                    return Err(format!(
                        "the js driver closed its output before answering {cmd} ({})",
                        self.exit_status()
                    ));
                }
                Ok(Ok(Some(text))) => text,
            };
            let mut answer: Value = serde_json::from_str(&text)
                .map_err(|e| format!("the js driver wrote a line that is not JSON ({e}): {text}"))?;
            if answer["id"].as_u64() != Some(id) {
                // The late answer to an earlier command that was given up on.
                continue;
            }
            return if answer["ok"] == json!(true) {
                Ok(answer["result"].take())
            } else {
                Err(answer["error"].as_str().map(str::to_owned).unwrap_or_else(|| answer.to_string()))
            };
        }
    }

    /// Like [`JsDriver::call`], but panics on failure with the error and the
    /// end of the driver's log.
    pub async fn ok(&mut self, cmd: &str, args: Value) -> Value {
        let shown = args.to_string();
        match self.call(cmd, args).await {
            Ok(result) => result,
            Err(error) => panic!(
                "js driver command {cmd} {shown} failed: {error}\n--- end of the js driver's log ---\n{}",
                self.log_tail(LOG_TAIL_LINES)
            ),
        }
    }

    /// Where the driver's stderr (its log and the sdk's) goes; deleted on drop.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("driver.log")
    }

    /// Everything the driver has logged so far.
    pub fn log(&self) -> String {
        std::fs::read(self.log_path()).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }

    /// The last `lines` lines of the driver's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Stops every client and waits for the process to exit.
    pub async fn shutdown(mut self) {
        let _ = self.call("exit", json!({ "timeoutMs": 5_000 })).await;
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await.is_err() {
            let _ = self.child.start_kill();
        }
    }

    fn exit_status(&mut self) -> String {
        match self.child.try_wait() {
            Ok(Some(status)) => format!("it exited with {status}"),
            Ok(None) => "it is still running".to_owned(),
            Err(e) => format!("its status is unknown: {e}"),
        }
    }
}

impl Drop for JsDriver {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}
