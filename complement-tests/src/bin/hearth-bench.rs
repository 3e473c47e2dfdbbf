//! Loopback benchmark of the release `homeserver` binary.
//!
//! Run by hand (not in CI):
//!
//! ```sh
//! cargo build --release -p hearth-homeserver
//! cargo run --release -p complement-tests --bin hearth-bench
//! ```
//!
//! It starts the server on free loopback ports with a temporary data
//! directory and reports registration time, send throughput from 8
//! concurrent clients into one room, send→/sync latency percentiles,
//! initial /sync time for users in 50 and 500 rooms, and peak RSS; then,
//! on a second server that sends e-mail to a loopback SMTP sink, the time
//! of an e-mail code request and of a login with password and TOTP code.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use complement_tests::{Account, Server, SmtpSink, password_auth};
use serde_json::{Value, json};

const V3: &str = "/_matrix/client/v3";

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn create_room(s: &Server, who: &Account, body: Value) -> String {
    let (status, r) = s.post(&format!("{V3}/createRoom"), Some(&who.access_token), body).await;
    assert_eq!(status, 200, "{r}");
    r["room_id"].as_str().unwrap().to_owned()
}

fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::main]
async fn main() {
    let target = std::env::var("HEARTH_BIN").unwrap_or_else(|_| {
        let dir = std::env::var("CARGO_TARGET_DIR")
            .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../target").into());
        format!("{dir}/release/homeserver")
    });
    assert!(std::path::Path::new(&target).exists(), "build the release binary first: {target}");
    complement_tests::use_binary(target.into());
    let s = Server::start().await;
    println!("server binary: {}", complement_tests::homeserver_binary().display());

    // 1. Registration, sequential, including the argon2 hash.
    let n = 20;
    let started = Instant::now();
    let mut users = Vec::new();
    for i in 0..n {
        users.push(s.register(&format!("bench{i}"), "benchmark password").await);
    }
    let per_user = started.elapsed().as_secs_f64() * 1000.0 / n as f64;
    println!("registration: {per_user:.1} ms per user ({n} users, sequential)");

    // 2. Throughput: 8 concurrent senders into one room.
    let room = create_room(&s, &users[0], json!({ "preset": "public_chat" })).await;
    for u in &users[1..8] {
        assert_eq!(s.post(&format!("{V3}/rooms/{room}/join"), Some(&u.access_token), json!({})).await.0, 200);
    }
    let per_sender = 500;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (k, u) in users[..8].iter().enumerate() {
        let client = s.http.clone();
        let url = format!("{}{V3}/rooms/{room}/send/m.room.message", s.url);
        let token = u.access_token.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..per_sender {
                let r = client
                    .put(format!("{url}/t{k}-{i}"))
                    .bearer_auth(&token)
                    .json(&json!({ "msgtype": "m.text", "body": format!("{k}/{i}") }))
                    .send()
                    .await
                    .expect("send");
                assert!(r.status().is_success());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "throughput: {:.0} events/s (8 senders x {per_sender} events, one room, each acknowledged durable)",
        (8 * per_sender) as f64 / secs
    );

    // 3. Latency from send to arrival in another user's long-polling /sync.
    let receiver = users[1].clone();
    let sender = users[0].clone();
    let (_, first) = s.get(&format!("{V3}/sync?timeout=0"), Some(&receiver.access_token)).await;
    let mut since = first["next_batch"].as_str().unwrap().to_owned();
    let mut latencies = Vec::new();
    let s = Arc::new(s);
    for i in 0..300 {
        let poll = {
            let client = s.http.clone();
            let url = format!("{}{V3}/sync?since={since}&timeout=30000", s.url);
            let token = receiver.access_token.clone();
            tokio::spawn(async move {
                client.get(url).bearer_auth(token).send().await.unwrap().json::<Value>().await.unwrap()
            })
        };
        tokio::time::sleep(Duration::from_millis(2)).await;
        let t0 = Instant::now();
        let (status, _) = s
            .put(
                &format!("{V3}/rooms/{room}/send/m.room.message/lat{i}"),
                Some(&sender.access_token),
                json!({ "msgtype": "m.text", "body": "ping" }),
            )
            .await;
        assert_eq!(status, 200);
        let resp = poll.await.unwrap();
        latencies.push(t0.elapsed().as_secs_f64() * 1000.0);
        since = resp["next_batch"].as_str().unwrap().to_owned();
    }
    latencies.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "send→sync latency: p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms ({} samples)",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.95),
        percentile(&latencies, 0.99),
        latencies.len()
    );

    // 4. Initial /sync for users in 50 and 500 rooms.
    for (rooms, who) in [(50, &users[10]), (500, &users[11])] {
        for _ in 0..rooms {
            create_room(&s, who, json!({ "name": "bench room" })).await;
        }
        let mut best = f64::MAX;
        for _ in 0..5 {
            let t0 = Instant::now();
            let (status, body) = s.get(&format!("{V3}/sync?timeout=0"), Some(&who.access_token)).await;
            assert_eq!(status, 200);
            assert_eq!(body["rooms"]["join"].as_object().unwrap().len(), rooms);
            best = best.min(t0.elapsed().as_secs_f64() * 1000.0);
        }
        println!("initial sync, {rooms} rooms: {best:.1} ms (best of 5)");
    }

    if let Some(kib) = peak_rss_kib(s.pid()) {
        println!("peak RSS: {:.0} MiB", kib as f64 / 1024.0);
    }
    auth_figures().await;
}

/// The code an authenticator app shows `offset_secs` from now.
fn totp_code(secret: &str, offset_secs: u64) -> String {
    let bytes = totp_rs::Secret::try_from_base32(secret).expect("base32").as_bytes().to_vec();
    let totp = totp_rs::Builder::new().with_secret(bytes).build().expect("totp");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    totp.generate(now + offset_secs).to_string()
}

/// E-mail code requests (delivered over SMTP to a loopback sink before the
/// answer) and logins with password and TOTP code.
async fn auth_figures() {
    let sink = SmtpSink::start().await;
    let env = sink.env();
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let s = Server::start_with(&pairs).await;

    let n = 50;
    let mut samples = Vec::new();
    for i in 0..n {
        let t0 = Instant::now();
        let body =
            json!({ "client_secret": format!("secret{i}"), "email": format!("u{i}@bench.test"), "send_attempt": 1 });
        let (status, r) = s.post(&format!("{V3}/register/email/requestToken"), None, body).await;
        assert_eq!(status, 200, "{r}");
        samples.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    assert_eq!(sink.messages().len(), n);
    samples.sort_by(f64::total_cmp);
    println!(
        "e-mail code request (SMTP to loopback): p50 {:.1} ms, p95 {:.1} ms ({n} requests)",
        percentile(&samples, 0.5),
        percentile(&samples, 0.95)
    );

    // Accounts with TOTP, each logging in once with the next code (a code
    // is accepted once per account). Registration needs a verified
    // address on this server, so each account verifies one first.
    let n = 10;
    let mut accounts = Vec::new();
    for i in 0..n {
        let (user, password, email) = (format!("totp{i}"), "benchmark password", format!("totp{i}@bench.test"));
        let body = json!({ "client_secret": "reg", "email": email, "send_attempt": 1 });
        let (_, r) = s.post(&format!("{V3}/register/email/requestToken"), None, body).await;
        let sid = r["sid"].as_str().unwrap().to_owned();
        let (code, _) = sink.last_code_for(&email);
        s.post("/_hearth/email/submit_token", None, json!({ "sid": sid, "client_secret": "reg", "token": code })).await;
        let (_, first) =
            s.post(&format!("{V3}/register"), None, json!({ "username": user, "password": password })).await;
        let auth = json!({ "type": "m.login.email.identity", "threepid_creds": { "sid": sid, "client_secret": "reg" }, "session": first["session"] });
        let (status, r) = s
            .post(&format!("{V3}/register"), None, json!({ "username": user, "password": password, "auth": auth }))
            .await;
        assert_eq!(status, 200, "{r}");
        let (token, user_id) =
            (r["access_token"].as_str().unwrap().to_owned(), r["user_id"].as_str().unwrap().to_owned());
        let totp = "/_matrix/client/unstable/org.hearth.mfa/totp";
        let (_, uia) = s.post(&format!("{totp}/enrol"), Some(&token), json!({})).await;
        let auth = password_auth(&user_id, password, uia["session"].as_str());
        let (_, enrolment) = s.post(&format!("{totp}/enrol"), Some(&token), json!({ "auth": auth })).await;
        let secret = enrolment["secret"].as_str().unwrap().to_owned();
        let (status, r) =
            s.post(&format!("{totp}/confirm"), Some(&token), json!({ "code": totp_code(&secret, 0) })).await;
        assert_eq!(status, 200, "{r}");
        accounts.push((user, secret));
    }
    let mut samples = Vec::new();
    for (user, secret) in &accounts {
        let body = json!({
            "type": "org.hearth.login.password_totp",
            "identifier": { "type": "m.id.user", "user": user },
            "password": "benchmark password",
            "code": totp_code(secret, 30),
        });
        let t0 = Instant::now();
        let (status, r) = s.post(&format!("{V3}/login"), None, body).await;
        assert_eq!(status, 200, "{r}");
        samples.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    samples.sort_by(f64::total_cmp);
    println!(
        "login with password and TOTP code: p50 {:.1} ms, max {:.1} ms ({n} logins)",
        percentile(&samples, 0.5),
        samples[samples.len() - 1]
    );
}
