use complement_tests::Server;

#[tokio::test]
async fn account_locks_after_repeated_failures_and_is_audited() {
    let s = Server::start_with(&[("HEARTH_AUTH__LOCKOUT_THRESHOLD", "3"), ("HEARTH_AUTH__LOCKOUT_SECS", "600")]).await;
    s.register("vic", "correct horse").await;
    for _ in 0..3 {
        let (status, body) = s.login("vic", "wrong horse").await;
        assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")));
    }
    // Locked now: even the right password is refused, with a time to wait.
    let (status, body) = s.login("vic", "correct horse").await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["errcode"], "M_LIMIT_EXCEEDED");
    let wait = body["retry_after_ms"].as_u64().unwrap();
    assert!(wait > 500_000 && wait <= 600_000, "{wait}");

    let events = s.audit_events();
    let failed: Vec<_> =
        events.iter().filter(|e| e["event"] == "login_failed" && e["user"] == "@vic:localhost").collect();
    assert_eq!(failed.len(), 4, "{events:?}");
    assert!(failed.iter().all(|e| e["remote"] == "127.0.0.1" && e["ts"].as_u64().is_some() && e["reason"].is_string()));
    assert_eq!(events.iter().filter(|e| e["event"] == "account_locked").count(), 1, "{events:?}");
    // Other accounts are unaffected.
    s.register("wes", "correct horse").await;
    assert_eq!(s.login("wes", "correct horse").await.0, 200);
}

#[tokio::test]
async fn lockout_survives_a_restart() {
    let mut s = Server::start_with(&[("HEARTH_AUTH__LOCKOUT_THRESHOLD", "2")]).await;
    s.register("xia", "correct horse").await;
    s.login("xia", "nope nope").await;
    s.login("xia", "nope nope").await;
    s.kill_and_restart().await;
    assert_eq!(s.login("xia", "correct horse").await.0, 429);
}

#[tokio::test]
async fn login_rate_limit_per_ip() {
    let s = Server::start_with(&[
        ("HEARTH_RATE_LIMITS__LOGIN_PER_SECOND", "0.001"),
        ("HEARTH_RATE_LIMITS__LOGIN_BURST", "3"),
    ])
    .await;
    s.register("yan", "correct horse").await;
    for _ in 0..3 {
        assert_eq!(s.login("yan", "correct horse").await.0, 200);
    }
    let (status, body) = s.login("yan", "correct horse").await;
    assert_eq!(status, 429);
    assert_eq!(body["errcode"], "M_LIMIT_EXCEEDED");
    assert!(body["retry_after_ms"].as_u64().unwrap() > 0);
    // A user that never logged in is limited too: the bucket is the address's.
    assert_eq!(s.login("other", "whatever").await.0, 429);
}

#[tokio::test]
async fn registration_rate_limit_per_ip() {
    let s = Server::start_with(&[
        ("HEARTH_RATE_LIMITS__REGISTRATION_PER_SECOND", "0.001"),
        ("HEARTH_RATE_LIMITS__REGISTRATION_BURST", "2"),
    ])
    .await;
    let body = serde_json::json!({ "username": "zed", "password": "correct horse" });
    assert_eq!(s.post("/_matrix/client/v3/register", None, body.clone()).await.0, 401);
    assert_eq!(s.post("/_matrix/client/v3/register", None, body.clone()).await.0, 401);
    let (status, resp) = s.post("/_matrix/client/v3/register", None, body).await;
    assert_eq!((status, resp["errcode"].as_str()), (429, Some("M_LIMIT_EXCEEDED")));
}

#[tokio::test]
async fn unknown_tokens_are_audited_and_counted() {
    let s = Server::start().await;
    for _ in 0..2 {
        assert_eq!(s.get("/_matrix/client/v3/account/whoami", Some("hat_forged")).await.0, 401);
    }
    let events: Vec<_> = s.audit_events().into_iter().filter(|e| e["event"] == "unknown_token").collect();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["remote"], "127.0.0.1");
    assert_eq!(events[0]["reason"], "/_matrix/client/v3/account/whoami");
    // The counter is visible to the admin.
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(s.data_dir().join("admin.json")).unwrap()).unwrap();
    let stats: serde_json::Value = reqwest::Client::new()
        .get(format!("{}/_hearth/admin/v1/stats", info["url"].as_str().unwrap()))
        .bearer_auth(info["secret"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["audit"]["unknown_token"], 2, "{stats}");
    // Without the secret the admin API refuses.
    let status = reqwest::Client::new()
        .get(format!("{}/_hearth/admin/v1/stats", info["url"].as_str().unwrap()))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 403);
}

#[tokio::test]
async fn no_password_or_token_reaches_storage_or_logs() {
    let s = Server::start().await;
    let a = s.register("secretive", "Tr0ub4dor&3-unique").await;
    s.login("secretive", "Tr0ub4dor&3-unique").await;
    s.login("secretive", "wrong-Tr0ub4dor-guess").await;
    let mut haystack = s.log().into_bytes();
    for entry in walk(&s.data_dir()) {
        haystack.extend(std::fs::read(entry).unwrap_or_default());
    }
    for needle in ["Tr0ub4dor&3-unique", "wrong-Tr0ub4dor-guess", a.access_token.as_str()] {
        assert!(!contains(&haystack, needle.as_bytes()), "{needle:?} found in storage or logs");
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() { out.extend(walk(&p)) } else { out.push(p) }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn login_rate_limit_per_account_across_addresses() {
    // Through a trusted proxy each request comes from a different address,
    // so only the account's bucket can stop them.
    let s = Server::start_with(&[
        ("HEARTH_LISTEN__HTTP", "127.0.0.1:0"),
        ("HEARTH_LISTEN__HTTP_TRUST_FORWARDED_FOR", "true"),
        ("HEARTH_RATE_LIMITS__LOGIN_PER_SECOND", "0.001"),
        ("HEARTH_RATE_LIMITS__LOGIN_BURST", "3"),
        ("HEARTH_AUTH__LOCKOUT_THRESHOLD", "100"),
    ])
    .await;
    s.register("target", "correct horse").await;
    let url = s.http_url.clone().unwrap();
    let client = reqwest::Client::new();
    let mut statuses = Vec::new();
    for i in 0..5 {
        let resp = client
            .post(format!("{url}/_matrix/client/v3/login"))
            .header("x-forwarded-for", format!("198.51.100.{i}"))
            .json(&serde_json::json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "target" }, "password": "guess" }))
            .send()
            .await
            .unwrap();
        statuses.push(resp.status().as_u16());
    }
    assert_eq!(statuses, vec![403, 403, 403, 429, 429]);
}
