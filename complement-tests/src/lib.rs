//! The black-box harness: starts the real `homeserver` binary on a free
//! loopback port with a temporary data directory, waits until `/versions`
//! answers, talks HTTPS to it trusting the certificate it generated, and
//! stops it on drop.

pub mod js;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use tempfile::TempDir;

static BIN: OnceLock<PathBuf> = OnceLock::new();

/// Uses an already built binary (e.g. the release build for benchmarks)
/// instead of building one. Must be called before any server starts.
pub fn use_binary(path: PathBuf) {
    let _ = BIN.set(path);
}

/// Builds the `homeserver` binary once per test process (a no-op when it is
/// up to date) and returns its path.
pub fn homeserver_binary() -> &'static Path {
    BIN.get_or_init(|| match std::env::var("HEARTH_BIN") {
        Ok(p) => PathBuf::from(p),
        Err(_) => workspace_binary("hearth-homeserver", "--bin", "homeserver"),
    })
}

static CHAT_BIN: OnceLock<PathBuf> = OnceLock::new();

/// The `chat` command-line client, built on first use.
pub fn chat_binary() -> &'static Path {
    CHAT_BIN.get_or_init(|| workspace_binary("hearth-client-sdk", "--bin", "chat"))
}

static ECHO_BOT: OnceLock<PathBuf> = OnceLock::new();

/// The client SDK's echo bot example, built on first use.
pub fn echo_bot_binary() -> &'static Path {
    ECHO_BOT.get_or_init(|| workspace_binary("hearth-client-sdk", "--example", "echo_bot"))
}

/// Builds a binary (`kind` is `--bin` or `--example`) of a workspace
/// package (a no-op when it is up to date) and returns its path, as cargo
/// reports it.
fn workspace_binary(package: &str, kind: &str, bin: &str) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["build", "-p", package, kind, bin, "--message-format=json-render-diagnostics"])
        .stderr(Stdio::inherit())
        .output()
        .expect("run cargo build");
    assert!(out.status.success(), "building the {bin} binary failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["executable"].as_str().map(PathBuf::from))
        .find(|p| p.file_name().is_some_and(|n| n == bin))
        .unwrap_or_else(|| panic!("cargo reported no {bin} executable"))
}

#[derive(Debug, Clone)]
pub struct Account {
    pub user_id: String,
    pub access_token: String,
    pub device_id: String,
}

/// A running homeserver process.
pub struct Server {
    child: Option<Child>,
    pub dir: TempDir,
    env: Vec<(String, String)>,
    pub url: String,
    pub http: reqwest::Client,
    pub http_url: Option<String>,
    start_count: usize,
}

/// Options used by every test server unless a test overrides them: ports
/// chosen by the OS, generous rate limits, default everything else.
const BASE_ENV: &[(&str, &str)] = &[
    ("HEARTH_LISTEN__HTTPS", "127.0.0.1:0"),
    ("HEARTH_ADMIN__BIND", "127.0.0.1:0"),
    ("HEARTH_RATE_LIMITS__LOGIN_PER_SECOND", "1000"),
    ("HEARTH_RATE_LIMITS__LOGIN_BURST", "1000"),
    ("HEARTH_RATE_LIMITS__REGISTRATION_PER_SECOND", "1000"),
    ("HEARTH_RATE_LIMITS__REGISTRATION_BURST", "1000"),
    ("HEARTH_LOGGING__LEVEL", "info"),
];

impl Server {
    /// Starts a server with the test defaults.
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// Starts a server with extra `HEARTH_*` environment overrides.
    pub async fn start_with(env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut all: Vec<(String, String)> = BASE_ENV.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        all.push(("HEARTH_DATA_DIR".into(), dir.path().join("data").display().to_string()));
        for (k, v) in env {
            all.retain(|(key, _)| key != k);
            all.push((k.to_string(), v.to_string()));
        }
        let mut server = Self {
            child: None,
            dir,
            env: all,
            url: String::new(),
            http: reqwest::Client::new(),
            http_url: None,
            start_count: 0,
        };
        server.spawn().await;
        server
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join(format!("server-{}.log", self.start_count))
    }

    /// The command line for this server's binary with its environment.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(homeserver_binary());
        cmd.env_clear();
        if let Ok(path) = std::env::var("PATH") {
            cmd.env("PATH", path);
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        cmd.current_dir(self.dir.path());
        cmd
    }

    async fn spawn(&mut self) {
        self.start_count += 1;
        let listening = self.data_dir().join("listening.json");
        let _ = std::fs::remove_file(&listening);
        let log = std::fs::File::create(self.log_path()).expect("log file");
        let child = self.command().stdout(log.try_clone().expect("log")).stderr(log).spawn().expect("start homeserver");
        self.child = Some(child);

        let deadline = Instant::now() + Duration::from_secs(60);
        let info: Value = loop {
            if let Ok(text) = std::fs::read_to_string(&listening)
                && let Ok(v) = serde_json::from_str(&text)
            {
                break v;
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("homeserver exited with {status} during start-up:\n{}", self.log());
            }
            assert!(Instant::now() < deadline, "homeserver did not start:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(25)).await;
        };
        let https = info["https"].as_str().expect("https address");
        self.url = format!("https://{https}");
        self.http_url = info["http"].as_str().map(|a| format!("http://{a}"));
        self.http = reqwest::Client::builder()
            .tls_certs_only([self.certificate()])
            .timeout(Duration::from_secs(60))
            .build()
            .expect("client");
        // Wait until /versions answers over HTTPS.
        loop {
            if let Ok(r) = self.http.get(format!("{}/_matrix/client/versions", self.url)).send().await
                && r.status().is_success()
            {
                break;
            }
            assert!(Instant::now() < deadline, "/versions never answered:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The certificate the server generated, to be trusted by clients.
    pub fn certificate(&self) -> reqwest::Certificate {
        reqwest::Certificate::from_pem(&self.certificate_pem()).expect("PEM certificate")
    }

    pub fn certificate_pem(&self) -> Vec<u8> {
        let configured = self.env.iter().find(|(k, _)| k == "HEARTH_TLS__CERTIFICATE").map(|(_, v)| PathBuf::from(v));
        std::fs::read(configured.unwrap_or_else(|| self.data_dir().join("tls/cert.pem"))).expect("certificate file")
    }

    /// Everything the current process has logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The process ID of the running server.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Kills the process without warning (SIGKILL) and starts it again on the same data.
    pub async fn kill_and_restart(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.spawn().await;
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub async fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("server did not stop after SIGTERM");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts the server again after [`Server::terminate`].
    pub async fn start_again(&mut self) {
        assert!(self.child.is_none(), "server still running");
        self.spawn().await;
    }

    /// Sends a request; returns the status and the JSON body (Null if none).
    pub async fn request(&self, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.http.request(method, format!("{}{}", self.url, path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request sent");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        self.request("GET", path, token, None).await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
        self.request("POST", path, token, Some(body)).await
    }

    pub async fn put(&self, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
        self.request("PUT", path, token, Some(body)).await
    }

    /// Registers through the whole UIA dance (dummy stage) and returns the account.
    pub async fn register(&self, username: &str, password: &str) -> Account {
        let (status, first) =
            self.post("/_matrix/client/v3/register", None, json!({ "username": username, "password": password })).await;
        assert_eq!(status, 401, "first register call must ask for UIA: {first}");
        let session = first["session"].as_str().expect("session").to_owned();
        let (status, body) = self
            .post(
                "/_matrix/client/v3/register",
                None,
                json!({
                    "username": username,
                    "password": password,
                    "auth": { "type": "m.login.dummy", "session": session },
                }),
            )
            .await;
        assert_eq!(status, 200, "register failed: {body}");
        Account {
            user_id: body["user_id"].as_str().expect("user_id").to_owned(),
            access_token: body["access_token"].as_str().expect("access_token").to_owned(),
            device_id: body["device_id"].as_str().expect("device_id").to_owned(),
        }
    }

    /// Password login with an `m.id.user` identifier.
    pub async fn login(&self, user: &str, password: &str) -> (u16, Value) {
        self.post(
            "/_matrix/client/v3/login",
            None,
            json!({
                "type": "m.login.password",
                "identifier": { "type": "m.id.user", "user": user },
                "password": password,
            }),
        )
        .await
    }

    /// Creates a room; panics unless the server answers 200.
    pub async fn create_room(&self, who: &Account, body: Value) -> String {
        let (status, resp) = self.post("/_matrix/client/v3/createRoom", Some(&who.access_token), body).await;
        assert_eq!(status, 200, "createRoom: {resp}");
        resp["room_id"].as_str().expect("room_id").to_owned()
    }

    /// Sends an `m.text` message with the given transaction ID.
    pub async fn send_text(&self, who: &Account, room: &str, txn: &str, body: &str) -> (u16, Value) {
        self.put(
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}"),
            Some(&who.access_token),
            json!({ "msgtype": "m.text", "body": body }),
        )
        .await
    }

    /// Password login asking for a refresh token.
    pub async fn login_refreshing(&self, user: &str, password: &str) -> (u16, Value) {
        self.post(
            "/_matrix/client/v3/login",
            None,
            json!({
                "type": "m.login.password",
                "identifier": { "type": "m.id.user", "user": user },
                "password": password,
                "refresh_token": true,
            }),
        )
        .await
    }

    /// The audit log's events so far.
    pub fn audit_events(&self) -> Vec<Value> {
        std::fs::read_to_string(self.data_dir().join("audit.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Runs `homeserver admin <args>` against this server's configuration.
    pub fn admin(&self, args: &[&str], stdin: Option<&str>) -> Output {
        use std::io::Write;
        let mut cmd = self.command();
        cmd.arg("admin").args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("run admin command");
        if let Some(input) = stdin {
            child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("write stdin");
        }
        drop(child.stdin.take());
        child.wait_with_output().expect("admin command output")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// UIA `auth` object for the password stage.
pub fn password_auth(user_id: &str, password: &str, session: Option<&str>) -> Value {
    let mut auth = json!({
        "type": "m.login.password",
        "identifier": { "type": "m.id.user", "user": user_id },
        "password": password,
    });
    if let Some(s) = session {
        auth["session"] = json!(s);
    }
    auth
}

/// A mail server on loopback that accepts every message and keeps it, for
/// the e-mail verification tests. It speaks the few SMTP commands a client
/// sends when the server offers no extensions (no TLS, no login): HELO or
/// EHLO, MAIL, RCPT, DATA, RSET, NOOP, QUIT. A relay's job (delivery) is
/// not its job, so no SMTP server crate is needed.
pub struct SmtpSink {
    pub port: u16,
    messages: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl SmtpSink {
    pub async fn start() -> Self {
        Self::start_on(0).await
    }

    /// A sink on a given loopback port (0: any free one).
    pub async fn start_on(port: u16) -> Self {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.expect("bind the SMTP sink");
        let port = listener.local_addr().unwrap().port();
        let messages = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let store = messages.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(Self::session(stream, store.clone()));
            }
        });
        Self { port, messages }
    }

    async fn session(stream: tokio::net::TcpStream, store: std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        let _ = write.write_all(b"220 sink ESMTP\r\n").await;
        let mut data: Option<Vec<String>> = None;
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(body) = data.as_mut() {
                if line == "." {
                    store.lock().unwrap().push(decode_quoted_printable(&body.join("\n")));
                    data = None;
                    let _ = write.write_all(b"250 OK queued\r\n").await;
                } else {
                    body.push(line.strip_prefix('.').map(str::to_owned).unwrap_or(line));
                }
                continue;
            }
            let verb = line.split_whitespace().next().unwrap_or_default().to_ascii_uppercase();
            let reply: &[u8] = match verb.as_str() {
                "EHLO" | "HELO" => b"250 sink\r\n",
                "MAIL" | "RCPT" | "RSET" | "NOOP" => b"250 OK\r\n",
                "DATA" => {
                    data = Some(Vec::new());
                    b"354 End data with <CR><LF>.<CR><LF>\r\n"
                }
                "QUIT" => {
                    let _ = write.write_all(b"221 Bye\r\n").await;
                    return;
                }
                _ => b"502 Command not implemented\r\n",
            };
            if write.write_all(reply).await.is_err() {
                return;
            }
        }
    }

    /// The `HEARTH_SMTP__*` settings that send a server's e-mail here.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("HEARTH_SMTP__HOST", "127.0.0.1".to_owned()),
            ("HEARTH_SMTP__PORT", self.port.to_string()),
            ("HEARTH_SMTP__SECURITY", "none".to_owned()),
            ("HEARTH_SMTP__FROM", "Hearth <noreply@hearth.test>".to_owned()),
        ]
    }

    /// Every message received so far (headers and body).
    pub fn messages(&self) -> Vec<String> {
        self.messages.lock().unwrap().clone()
    }

    /// The 8-digit code and the link of the last message sent to `address`.
    pub fn last_code_for(&self, address: &str) -> (String, String) {
        let messages = self.messages();
        let message = messages
            .iter()
            .rev()
            .find(|m| m.lines().any(|l| l.to_ascii_lowercase().starts_with("to:") && l.contains(address)))
            .unwrap_or_else(|| panic!("no e-mail to {address} among {messages:?}"));
        let code = message
            .split("code for ")
            .nth(1)
            .and_then(|rest| rest.split(" is ").nth(1))
            .map(|rest| rest.chars().take_while(char::is_ascii_digit).collect::<String>())
            .unwrap_or_else(|| panic!("no code in {message}"));
        let link = message
            .lines()
            .find(|l| l.starts_with("https://"))
            .unwrap_or_else(|| panic!("no link in {message}"))
            .to_owned();
        (code, link)
    }
}

/// A message with its quoted-printable body decoded (RFC 2045: `=XX` bytes,
/// `=` at a line end joins lines), as a mail reader shows it.
fn decode_quoted_printable(message: &str) -> String {
    let Some((headers, body)) = message.split_once("\n\n") else { return message.to_owned() };
    if !headers.to_ascii_lowercase().contains("content-transfer-encoding: quoted-printable") {
        return message.to_owned();
    }
    let joined = body.replace("=\n", "");
    let bytes = joined.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'=', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    format!("{headers}\n\n{}", String::from_utf8_lossy(&out))
}
