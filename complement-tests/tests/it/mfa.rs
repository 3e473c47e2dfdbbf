//! The second factor (TOTP, RFC 6238) over the client-server API: the
//! `org.hearth.mfa` enrolment endpoints and the
//! `org.hearth.login.password_totp` login type.

use std::time::{SystemTime, UNIX_EPOCH};

use complement_tests::{Server, password_auth};
use serde_json::{Value, json};
use totp_rs::{Algorithm, Builder, Secret};

const TOTP: &str = "/_matrix/client/unstable/org.hearth.mfa/totp";

/// The code an authenticator app shows `offset_secs` from now.
pub(crate) fn code(secret: &str, offset_secs: u64) -> String {
    let bytes = Secret::try_from_base32(secret).expect("base32 secret").as_bytes().to_vec();
    let totp = Builder::new()
        .with_algorithm(Algorithm::SHA1)
        .with_digits(6)
        .with_step_duration(30)
        .with_secret(bytes)
        .build()
        .expect("totp");
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    totp.generate(now + offset_secs).to_string()
}

pub(crate) fn totp_login(user: &str, password: &str, code: &str) -> Value {
    json!({
        "type": "org.hearth.login.password_totp",
        "identifier": { "type": "m.id.user", "user": user },
        "password": password,
        "code": code,
    })
}

/// Enrols `user` (password `password`) and returns the secret and the
/// recovery codes.
pub(crate) async fn enrol(s: &Server, token: &str, user_id: &str, password: &str) -> (String, Vec<String>) {
    let (status, uia) = s.post(&format!("{TOTP}/enrol"), Some(token), json!({})).await;
    assert_eq!(status, 401, "{uia}");
    let auth = password_auth(user_id, password, uia["session"].as_str());
    let (status, enrolment) = s.post(&format!("{TOTP}/enrol"), Some(token), json!({ "auth": auth })).await;
    assert_eq!(status, 200, "{enrolment}");
    let secret = enrolment["secret"].as_str().unwrap().to_owned();
    let uri = enrolment["otpauth_uri"].as_str().unwrap();
    assert!(uri.starts_with("otpauth://totp/") && uri.contains(&format!("secret={secret}")), "{uri}");

    let (status, pending) = s.get(TOTP, Some(token)).await;
    assert_eq!((status, pending["enabled"].as_bool(), pending["pending"].as_bool()), (200, Some(false), Some(true)));
    // Not a code: refused, and nothing is enabled.
    let (status, body) = s.post(&format!("{TOTP}/confirm"), Some(token), json!({ "code": "12345" })).await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{body}");
    let (status, confirmed) =
        s.post(&format!("{TOTP}/confirm"), Some(token), json!({ "code": code(&secret, 0) })).await;
    assert_eq!(status, 200, "{confirmed}");
    let codes: Vec<String> =
        confirmed["recovery_codes"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().to_owned()).collect();
    assert_eq!(codes.len(), 10);
    (secret, codes)
}

/// Enrol and confirm; password-only login is refused for this account and
/// still works for others; the password+code login works once per code; a
/// recovery code works once; disabling needs the password and a code; the
/// secret is stored encrypted.
#[tokio::test]
async fn totp_enrolment_login_replay_recovery_codes_and_disable() {
    let s = Server::start().await;
    let alice = s.register("alice", "alice pw 1").await;
    s.register("bob", "bob pw 1").await;
    let (status, st) = s.get(TOTP, Some(&alice.access_token)).await;
    assert_eq!((status, st["enabled"].as_bool()), (200, Some(false)), "{st}");
    let (status, _) = s.get(TOTP, None).await;
    assert_eq!(status, 401);
    let (secret, recovery) = enrol(&s, &alice.access_token, &alice.user_id, "alice pw 1").await;
    let (_, st) = s.get(TOTP, Some(&alice.access_token)).await;
    assert_eq!(st, json!({ "enabled": true, "pending": false, "recovery_codes_left": 10 }));
    // Enrolling again while enabled is refused.
    let (status, body) = s.post(&format!("{TOTP}/enrol"), Some(&alice.access_token), json!({})).await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{body}");

    // The login types list the extension.
    let (_, types) = s.get("/_matrix/client/v3/login", None).await;
    assert!(types["flows"].as_array().unwrap().iter().any(|f| f["type"] == "org.hearth.login.password_totp"));

    // Password alone: refused, with directions.
    let (status, body) = s.login("alice", "alice pw 1").await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{body}");
    assert!(body["error"].as_str().unwrap().contains("org.hearth.login.password_totp"), "{body}");
    // Other accounts are unaffected.
    assert_eq!(s.login("bob", "bob pw 1").await.0, 200);

    // Password and code: accepted once. The code of the next step is used so
    // it cannot be the step the confirmation used.
    let next = code(&secret, 30);
    let (status, body) = s.post("/_matrix/client/v3/login", None, totp_login("alice", "alice pw 1", &next)).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["access_token"].is_string());
    let (status, body) = s.post("/_matrix/client/v3/login", None, totp_login("alice", "alice pw 1", &next)).await;
    assert_eq!(status, 403, "{body}");
    assert!(body["error"].as_str().unwrap().contains("already used"), "{body}");
    // The wrong password with a code is refused like any wrong password.
    let (status, _) = s.post("/_matrix/client/v3/login", None, totp_login("alice", "wrong", &code(&secret, 60))).await;
    assert_eq!(status, 403);
    // A malformed body of the extension type.
    let (status, body) = s
        .post("/_matrix/client/v3/login", None, json!({ "type": "org.hearth.login.password_totp", "password": "x" }))
        .await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_MISSING_PARAM")), "{body}");

    // A recovery code works once, in any case and with or without its dash.
    let spelled = recovery[0].to_uppercase().replace('-', "");
    let (status, body) = s.post("/_matrix/client/v3/login", None, totp_login("alice", "alice pw 1", &spelled)).await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = s.post("/_matrix/client/v3/login", None, totp_login("alice", "alice pw 1", &recovery[0])).await;
    assert_eq!(status, 403);
    let (_, st) = s.get(TOTP, Some(&alice.access_token)).await;
    assert_eq!(st["recovery_codes_left"], 9);

    // The database holds no secret in the clear; the key file is private.
    let files = crate::e2ee_sdk::files(&s.data_dir());
    let raw = Secret::try_from_base32(&secret).unwrap().as_bytes().to_vec();
    assert_eq!(crate::e2ee_sdk::found_in(&files, secret.as_bytes()), None);
    assert_eq!(crate::e2ee_sdk::found_in(&files, &raw), None);
    assert_eq!(crate::e2ee_sdk::found_in(&files, recovery[1].as_bytes()), None);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(s.data_dir().join("mfa.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    // Disabling takes user-interactive auth with the password, then the
    // second-factor stage; a wrong code changes nothing.
    let path = format!("{TOTP}/disable");
    let (status, uia) = s.post(&path, Some(&alice.access_token), json!({})).await;
    assert_eq!(status, 401, "{uia}");
    assert_eq!(uia["flows"], json!([{ "stages": ["m.login.password", "org.hearth.login.totp"] }]), "{uia}");
    let session = uia["session"].as_str().unwrap().to_owned();
    let auth = password_auth(&alice.user_id, "alice pw 1", Some(&session));
    let (status, uia) = s.post(&path, Some(&alice.access_token), json!({ "auth": auth })).await;
    assert_eq!(status, 401, "{uia}");
    assert_eq!(uia["completed"], json!(["m.login.password"]), "{uia}");
    let totp_stage = |code: &str| json!({ "type": "org.hearth.login.totp", "code": code, "session": session });
    let (status, uia) = s.post(&path, Some(&alice.access_token), json!({ "auth": totp_stage("bad") })).await;
    assert_eq!((status, uia["errcode"].as_str()), (401, Some("M_FORBIDDEN")), "{uia}");
    assert_eq!(s.get(TOTP, Some(&alice.access_token)).await.1["enabled"], true);
    let (status, body) = s.post(&path, Some(&alice.access_token), json!({ "auth": totp_stage(&recovery[1]) })).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(s.get(TOTP, Some(&alice.access_token)).await.1["enabled"], false);
    assert_eq!(s.login("alice", "alice pw 1").await.0, 200);

    let events = s.audit_events();
    for kind in ["mfa_failed", "recovery_code_used"] {
        assert!(events.iter().any(|e| e["event"] == kind && e["user"] == alice.user_id.as_str()), "{kind}: {events:?}");
    }
    // Neither codes nor secrets reach the log.
    for needle in [secret.as_str(), next.as_str(), recovery[2].as_str()] {
        assert!(!s.log().contains(needle), "{needle} in the server log");
    }
}

/// Wrong codes count towards the same lockout as wrong passwords, and a
/// correct password does not reset the count; the lockout is audited.
#[tokio::test]
async fn repeated_wrong_codes_lock_the_account() {
    let s = Server::start_with(&[("HEARTH_AUTH__LOCKOUT_THRESHOLD", "3")]).await;
    let carol = s.register("carol", "carol pw 1").await;
    let (secret, _) = enrol(&s, &carol.access_token, &carol.user_id, "carol pw 1").await;
    for _ in 0..2 {
        let (status, _) = s.post("/_matrix/client/v3/login", None, totp_login("carol", "carol pw 1", "1x1x1x")).await;
        assert_eq!(status, 403);
        // The password alone is right, but does not clear the count.
        assert_eq!(s.login("carol", "carol pw 1").await.0, 403);
    }
    let (status, _) = s.post("/_matrix/client/v3/login", None, totp_login("carol", "carol pw 1", "000000x")).await;
    assert_eq!(status, 403);
    let (status, body) =
        s.post("/_matrix/client/v3/login", None, totp_login("carol", "carol pw 1", &code(&secret, 30))).await;
    assert_eq!((status, body["errcode"].as_str()), (429, Some("M_LIMIT_EXCEEDED")), "{body}");
    let events = s.audit_events();
    assert!(events.iter().any(|e| e["event"] == "account_locked" && e["user"] == carol.user_id.as_str()), "{events:?}");
    assert_eq!(events.iter().filter(|e| e["event"] == "mfa_failed" && e["reason"] == "wrong code").count(), 3);
}

/// `chat login` asks for the code when the account has a second factor,
/// and refuses a wrong one.
#[tokio::test]
async fn chat_login_asks_for_the_code() {
    use std::io::Write as _;
    use std::process::{Command, Stdio};

    let s = Server::start().await;
    let dave = s.register("dave", "dave pw 1").await;
    let (secret, _) = enrol(&s, &dave.access_token, &dave.user_id, "dave pw 1").await;
    let home = tempfile::TempDir::new().unwrap();
    let ca = home.path().join("server.pem");
    std::fs::write(&ca, s.certificate_pem()).unwrap();
    let login = |dir: &str, input: String| {
        let mut child = Command::new(complement_tests::chat_binary())
            .args(["login", "--server", &s.url, "--ca-file", ca.to_str().unwrap(), "dave"])
            .env("CHAT_DIR", home.path().join(dir))
            .env("CHAT_PASSPHRASE", "store passphrase")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    };
    let out = login("wrong", "dave pw 1\n999999x\n".to_owned());
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Invalid code"), "{out:?}");
    let out = login("right", format!("dave pw 1\n{}\n", code(&secret, 30)));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Logged in as @dave:"), "{out:?}");
}

/// Sensitive operations (here: deleting a device) ask an account with a
/// second factor for the code after the password; accounts without one
/// keep the password-only flow.
#[tokio::test]
async fn sensitive_operations_ask_for_the_second_factor() {
    let s = Server::start().await;
    let frank = s.register("frank", "frank pw 1").await;
    let (secret, recovery) = enrol(&s, &frank.access_token, &frank.user_id, "frank pw 1").await;
    let (status, other) =
        s.post("/_matrix/client/v3/login", None, totp_login("frank", "frank pw 1", &code(&secret, 30))).await;
    assert_eq!(status, 200, "{other}");
    let other_device = other["device_id"].as_str().unwrap();
    let path = format!("/_matrix/client/v3/devices/{other_device}");
    let (status, uia) = s.request("DELETE", &path, Some(&frank.access_token), Some(json!({}))).await;
    assert_eq!(status, 401, "{uia}");
    assert_eq!(uia["flows"], json!([{ "stages": ["m.login.password", "org.hearth.login.totp"] }]), "{uia}");
    let session = uia["session"].as_str().unwrap();
    let auth = password_auth(&frank.user_id, "frank pw 1", Some(session));
    let (status, uia) = s.request("DELETE", &path, Some(&frank.access_token), Some(json!({ "auth": auth }))).await;
    assert_eq!(status, 401, "the password alone is not enough: {uia}");
    // The same code again is a replay: refused.
    let stage = |code: String| json!({ "auth": { "type": "org.hearth.login.totp", "code": code, "session": session } });
    let (status, _) = s.request("DELETE", &path, Some(&frank.access_token), Some(stage(code(&secret, 30)))).await;
    assert_eq!(status, 401);
    let (status, _) = s.get("/_matrix/client/v3/devices", Some(other["access_token"].as_str().unwrap())).await;
    assert_eq!(status, 200, "the device is still there");
    let (status, body) = s.request("DELETE", &path, Some(&frank.access_token), Some(stage(recovery[0].clone()))).await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = s.get("/_matrix/client/v3/devices", Some(other["access_token"].as_str().unwrap())).await;
    assert_eq!(status, 401, "the deleted device's token still works");
}

/// The client SDK answers the second-factor UIA stage: deleting a device
/// of an account with TOTP fails with the password alone (the stages are
/// named) and works with a recovery code.
#[tokio::test]
async fn client_sdk_deletes_a_device_with_the_second_factor() {
    use hearth_client_sdk::{Client, ClientError, Store, TlsTrust};

    let s = Server::start().await;
    let ivy = s.register("ivy", "ivy pw 1").await;
    let (secret, recovery) = enrol(&s, &ivy.access_token, &ivy.user_id, "ivy pw 1").await;
    let dir = tempfile::TempDir::new().unwrap();
    let ca = dir.path().join("server.pem");
    std::fs::write(&ca, s.certificate_pem()).unwrap();
    let store = Store::open(&dir.path().join("store"), "store passphrase").unwrap();
    let client = Client::new(&s.url, &TlsTrust::CaFile(ca), store).unwrap();
    client.login_with_code("ivy", "ivy pw 1", &code(&secret, 30)).await.expect("login with a code");

    let err = client.delete_device(&ivy.device_id, "ivy pw 1").await.expect_err("needs the code");
    assert!(matches!(&err, ClientError::UnsupportedAuth(stages) if stages.contains("org.hearth.login.totp")), "{err}");
    let (status, _) = s.get("/_matrix/client/v3/account/whoami", Some(&ivy.access_token)).await;
    assert_eq!(status, 200, "nothing was deleted");
    client.delete_device_with_code(&ivy.device_id, "ivy pw 1", Some(&recovery[0])).await.expect("deleted");
    let (status, _) = s.get("/_matrix/client/v3/account/whoami", Some(&ivy.access_token)).await;
    assert_eq!(status, 401);
}
