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
//! initial /sync time for users in 50 and 500 rooms, and peak RSS.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use complement_tests::{Account, Server};
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
}
