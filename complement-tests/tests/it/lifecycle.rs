use std::process::Stdio;

use complement_tests::{Server, homeserver_binary};
use sha2::{Digest, Sha256};

#[tokio::test]
async fn acknowledged_registration_survives_a_kill() {
    let mut s = Server::start().await;
    s.register("durable", "correct horse").await;
    // SIGKILL straight after the 200: no graceful flush.
    s.kill_and_restart().await;
    let (status, body) = s.login("durable", "correct horse").await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn sigterm_stops_gracefully_and_data_stays() {
    let mut s = Server::start().await;
    let a = s.register("graceful", "correct horse").await;
    let status = s.terminate().await;
    assert!(status.success(), "exit status {status}");
    assert!(s.log().contains("storage flushed; stopped"), "{}", s.log());
    assert!(!s.data_dir().join("admin.json").exists(), "the admin secret is removed at shutdown");
    s.start_again().await;
    // Sessions persist too.
    let (status, _) = s.get("/_matrix/client/v3/account/whoami", Some(&a.access_token)).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn certificate_and_signing_key_are_generated_once_and_logged() {
    let mut s = Server::start().await;
    let pem = s.certificate_pem();
    let der = {
        let text = String::from_utf8(pem.clone()).unwrap();
        let b64: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
        decode_base64(&b64)
    };
    let fingerprint: String = Sha256::digest(&der).iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":");
    assert!(s.log().contains(&fingerprint), "the log names the certificate's SHA-256 fingerprint");
    let key_line = |log: &str| {
        log.lines()
            .find(|l| l.contains("signing_key="))
            .map(|l| l.split("signing_key=").nth(1).unwrap().split_whitespace().next().unwrap().to_owned())
    };
    let key_before = key_line(&s.log()).expect("signing key logged");
    s.kill_and_restart().await;
    assert_eq!(s.certificate_pem(), pem, "the certificate is reused");
    assert_eq!(key_line(&s.log()), Some(key_before), "the signing key is reused");
    // The TLS key file is private.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(s.data_dir().join("tls/key.pem")).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "key.pem must not be readable by others");
    }
}

fn decode_base64(s: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes().filter(|c| *c != b'=') {
        acc = (acc << 6) | ALPHABET.iter().position(|a| *a == c).expect("base64") as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

#[tokio::test]
async fn plain_http_listener_for_reverse_proxies() {
    let s = Server::start_with(&[
        ("HEARTH_LISTEN__HTTP", "127.0.0.1:0"),
        ("HEARTH_LISTEN__HTTP_TRUST_FORWARDED_FOR", "true"),
    ])
    .await;
    let url = s.http_url.clone().expect("http listener address");
    let resp = reqwest::get(format!("{url}/_matrix/client/versions")).await.unwrap();
    assert_eq!(resp.status(), 200);
    // Behind a proxy the forwarded address is the client's.
    s.register("proxied", "correct horse").await;
    let client = reqwest::Client::new();
    let resp = client
        .post(format!("{url}/_matrix/client/v3/login"))
        // A client-supplied entry comes first; the proxy's own entry is last.
        .header("x-forwarded-for", "10.66.66.66, 203.0.113.9")
        .json(&serde_json::json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "proxied" }, "password": "bad password" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let events = s.audit_events();
    assert!(events.iter().any(|e| e["remote"] == "203.0.113.9"), "{events:?}");
    assert!(!events.iter().any(|e| e["remote"] == "10.66.66.66"), "the client-supplied entry is not trusted");
}

#[test]
fn invalid_configuration_fails_naming_the_option() {
    let dir = tempfile::tempdir().unwrap();
    let run = |envs: &[(&str, &str)]| {
        let mut cmd = std::process::Command::new(homeserver_binary());
        cmd.env_clear()
            .current_dir(dir.path())
            .envs(envs.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd.output().unwrap()
    };
    let out = run(&[("HEARTH_LISTEN__HTTP", "0.0.0.0:8008")]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("listen.http"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = run(&[("HEARTH_REGISTRATION__ENABLED", "perhaps")]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("enabled"));
    let out = run(&[("HEARTH_STORAGE__CACHE_MIB", "0")]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("storage.cache_mib"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "[listen]\nhttps = \"127.0.0.1:0\"\nmystery = 1\n").unwrap();
    let out =
        std::process::Command::new(homeserver_binary()).arg("--config").arg(&config).env_clear().output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("listen.mystery"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!dir.path().join("data").exists(), "nothing is created when the configuration is invalid");
}

#[test]
fn generate_config_prints_the_documented_defaults() {
    let out = std::process::Command::new(homeserver_binary()).arg("generate-config").output().unwrap();
    assert!(out.status.success());
    let expected = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../config/homeserver.toml")).unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), expected);
}

#[tokio::test]
async fn config_file_is_used() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("homeserver.toml");
    std::fs::write(
        &config,
        format!(
            "server_name = \"hearth.test\"\ndata_dir = \"{}\"\n[listen]\nhttps = \"127.0.0.1:0\"\n[admin]\nbind = \"127.0.0.1:0\"\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(homeserver_binary())
        .arg("--config")
        .arg(&config)
        .env_clear()
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let listening = dir.path().join("data/listening.json");
    for _ in 0..600 {
        if listening.exists() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let info: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&listening).unwrap()).unwrap();
    let cert = reqwest::Certificate::from_pem(&std::fs::read(dir.path().join("data/tls/cert.pem")).unwrap()).unwrap();
    let client = reqwest::Client::builder().tls_certs_only([cert]).build().unwrap();
    let port = info["https"].as_str().unwrap().rsplit(':').next().unwrap().to_owned();
    // The certificate names the server name, localhost and 127.0.0.1; reach it as localhost.
    let body: serde_json::Value = client
        .post(format!("https://localhost:{port}/_matrix/client/v3/register"))
        .json(&serde_json::json!({ "username": "tester", "password": "correct horse", "auth": { "type": "m.login.dummy" } }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["user_id"], "@tester:hearth.test");
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test]
async fn configured_certificate_replaces_the_generated_one() {
    // Borrow a certificate from one server and configure it on another.
    let donor = Server::start().await;
    let files = tempfile::tempdir().unwrap();
    let cert = files.path().join("chain.pem");
    let key = files.path().join("key.pem");
    std::fs::copy(donor.data_dir().join("tls/cert.pem"), &cert).unwrap();
    std::fs::copy(donor.data_dir().join("tls/key.pem"), &key).unwrap();
    let cert_path = cert.display().to_string();
    let key_path = key.display().to_string();
    let s =
        Server::start_with(&[("HEARTH_TLS__CERTIFICATE", &cert_path), ("HEARTH_TLS__PRIVATE_KEY", &key_path)]).await;
    assert!(!s.data_dir().join("tls/cert.pem").exists(), "no certificate is generated when one is configured");
    // A client trusting only the donor's certificate reaches the new server.
    let client = reqwest::Client::builder().tls_certs_only([donor.certificate()]).build().unwrap();
    let resp = client.get(format!("{}/_matrix/client/versions", s.url)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
}
