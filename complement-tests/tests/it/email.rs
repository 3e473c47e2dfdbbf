//! E-mail verification against a local SMTP sink: `/requestToken`, the
//! `m.login.email.identity` registration stage, the `submit_url`, the link
//! in the e-mail, `/account/3pid` add and delete, and a server without SMTP
//! storing addresses unverified.

use complement_tests::{Server, SmtpSink, password_auth};
use serde_json::{Value, json};

use crate::browser::{Browser, field, form};

const REG: &str = "/_matrix/client/v3/register";
const REG_TOKEN: &str = "/_matrix/client/v3/register/email/requestToken";
const ADD_TOKEN: &str = "/_matrix/client/v3/account/3pid/email/requestToken";

async fn start_with_sink() -> (Server, SmtpSink) {
    let sink = SmtpSink::start().await;
    let env = sink.env();
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    (Server::start_with(&pairs).await, sink)
}

fn email_auth(sid: &str, secret: &str, session: &str) -> Value {
    json!({
        "type": "m.login.email.identity",
        "threepid_creds": { "sid": sid, "client_secret": secret },
        "session": session,
    })
}

/// Registers `user` with `email` verified through the sink; returns the
/// user ID and access token.
async fn register_verified(s: &Server, sink: &SmtpSink, user: &str, password: &str, email: &str) -> (String, String) {
    let (_, body) = request_token(s, REG_TOKEN, email, "reg", 1).await;
    let sid = body["sid"].as_str().unwrap().to_owned();
    let (code, _) = sink.last_code_for(email);
    s.post("/_hearth/email/submit_token", None, json!({ "sid": sid, "client_secret": "reg", "token": code })).await;
    let (_, first) = s.post(REG, None, json!({ "username": user, "password": password })).await;
    let session = first["session"].as_str().unwrap();
    let (status, resp) = s
        .post(REG, None, json!({ "username": user, "password": password, "auth": email_auth(&sid, "reg", session) }))
        .await;
    assert_eq!(status, 200, "{resp}");
    (resp["user_id"].as_str().unwrap().to_owned(), resp["access_token"].as_str().unwrap().to_owned())
}

async fn request_token(s: &Server, path: &str, email: &str, secret: &str, attempt: u64) -> (u16, Value) {
    s.post(path, None, json!({ "client_secret": secret, "email": email, "send_attempt": attempt })).await
}

/// With SMTP configured, registration needs a verified address: the code
/// arrives by e-mail, a wrong one is refused, the right one (posted to the
/// `submit_url`) verifies the session, and the account has the address as
/// verified, which no other account can then claim.
#[tokio::test]
async fn registration_requires_a_verified_email_when_smtp_is_configured() {
    let (s, sink) = start_with_sink().await;
    let (status, first) = s.post(REG, None, json!({ "username": "ann", "password": "ann pw 12" })).await;
    assert_eq!(status, 401, "{first}");
    assert_eq!(first["flows"], json!([{ "stages": ["m.login.email.identity"] }]));
    let session = first["session"].as_str().unwrap();

    // Bad input: a client secret outside the grammar, a non-address.
    let (status, body) = request_token(&s, REG_TOKEN, "ann@example.org", "no spaces allowed", 1).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = request_token(&s, REG_TOKEN, "not an address", "secret1", 1).await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_INVALID_PARAM")), "{body}");
    assert!(sink.messages().is_empty());

    let (status, body) = request_token(&s, REG_TOKEN, "Ann@Example.org", "secret1", 1).await;
    assert_eq!(status, 200, "{body}");
    let sid = body["sid"].as_str().unwrap().to_owned();
    let submit_url = body["submit_url"].as_str().unwrap().to_owned();
    assert!(submit_url.ends_with("/_hearth/email/submit_token"), "{submit_url}");
    assert_eq!(sink.messages().len(), 1);
    let (code, _) = sink.last_code_for("ann@example.org");
    assert_eq!(code.len(), 8);
    // The same attempt again is a retry: same session, no second e-mail.
    let (_, again) = request_token(&s, REG_TOKEN, "ann@example.org", "secret1", 1).await;
    assert_eq!(again["sid"], sid);
    assert_eq!(sink.messages().len(), 1);

    // Not verified yet: the stage fails and nothing is created.
    let body = json!({ "username": "ann", "password": "ann pw 12", "auth": email_auth(&sid, "secret1", session) });
    let (status, resp) = s.post(REG, None, body.clone()).await;
    assert_eq!((status, resp["errcode"].as_str()), (401, Some("M_THREEPID_AUTH_FAILED")), "{resp}");
    let (status, _) = s.get("/_matrix/client/v3/register/available?username=ann", None).await;
    assert_eq!(status, 200);

    // The submit_url: a wrong code, a wrong secret, then the right code.
    let submit = "/_hearth/email/submit_token";
    let (status, resp) =
        s.post(submit, None, json!({ "sid": sid, "client_secret": "secret1", "token": "00000000" })).await;
    assert_eq!((status, &resp), (200, &json!({ "success": false })));
    let (status, resp) = s.post(submit, None, json!({ "sid": sid, "client_secret": "other", "token": code })).await;
    assert_eq!((status, resp["errcode"].as_str()), (400, Some("M_THREEPID_AUTH_FAILED")), "{resp}");
    let (status, resp) = s.post(submit, None, json!({ "sid": sid, "client_secret": "secret1", "token": code })).await;
    assert_eq!((status, &resp), (200, &json!({ "success": true })));

    // A wrong client secret does not prove the session.
    let (status, resp) = s
        .post(
            REG,
            None,
            json!({ "username": "ann", "password": "ann pw 12", "auth": email_auth(&sid, "other", session) }),
        )
        .await;
    assert_eq!((status, resp["errcode"].as_str()), (401, Some("M_THREEPID_AUTH_FAILED")), "{resp}");
    let (status, resp) = s.post(REG, None, body).await;
    assert_eq!(status, 200, "{resp}");
    let token = resp["access_token"].as_str().unwrap();
    let (_, pids) = s.get("/_matrix/client/v3/account/3pid", Some(token)).await;
    assert_eq!(pids["threepids"][0]["address"], "ann@example.org", "{pids}");
    assert!(pids["threepids"][0]["validated_at"].as_u64().unwrap() > 0, "{pids}");

    // Neither the code nor the password is in the server's log.
    let log = s.log();
    assert!(!log.contains(&code) && !log.contains("ann pw 12"), "a secret reached the log");
    let (_, caps) = s.get("/_matrix/client/v3/capabilities", Some(token)).await;
    // Enabled is the spec's default, which may be left out.
    assert_ne!(caps["capabilities"]["m.3pid_changes"]["enabled"], false, "{caps}");

    // The address is taken now, for registration and for adding.
    for path in [REG_TOKEN, ADD_TOKEN] {
        let (status, resp) = request_token(&s, path, "ann@example.org", "secret2", 1).await;
        assert_eq!((status, resp["errcode"].as_str()), (400, Some("M_THREEPID_IN_USE")), "{path}: {resp}");
    }
}

/// A session takes five wrong codes, then even the right one is refused.
#[tokio::test]
async fn email_verification_stops_after_five_wrong_codes() {
    let (s, sink) = start_with_sink().await;
    let (_, body) = request_token(&s, REG_TOKEN, "guess@example.org", "secret", 1).await;
    let sid = body["sid"].as_str().unwrap();
    let (code, _) = sink.last_code_for("guess@example.org");
    let wrong = if code == "12345678" { "87654321" } else { "12345678" };
    let submit = "/_hearth/email/submit_token";
    for _ in 0..4 {
        let (_, resp) = s.post(submit, None, json!({ "sid": sid, "client_secret": "secret", "token": wrong })).await;
        assert_eq!(resp, json!({ "success": false }));
    }
    let (status, resp) = s.post(submit, None, json!({ "sid": sid, "client_secret": "secret", "token": wrong })).await;
    assert_eq!(status, 400, "the fifth wrong code ends the session: {resp}");
    let (status, resp) = s.post(submit, None, json!({ "sid": sid, "client_secret": "secret", "token": code })).await;
    assert_eq!((status, resp["errcode"].as_str()), (400, Some("M_THREEPID_AUTH_FAILED")), "{resp}");
}

/// Adding an address later: the code is requested, the server restarts
/// (the session is stored), the link in the e-mail verifies it on a page
/// with a button, `/3pid/add` asks for the password, then the address is
/// listed and can be deleted once.
#[tokio::test]
async fn an_address_added_through_the_emailed_link_survives_a_restart() {
    let (mut s, sink) = start_with_sink().await;
    let (user_id, token) = register_verified(&s, &sink, "bea", "bea pw 12", "bea@example.org").await;

    let (status, body) = request_token(&s, ADD_TOKEN, "bea.work@example.org", "add", 1).await;
    assert_eq!(status, 200, "{body}");
    let sid = body["sid"].as_str().unwrap().to_owned();
    let (_, link) = sink.last_code_for("bea.work@example.org");
    s.kill_and_restart().await;

    // Adding before the link is opened: the password stage, then refused.
    let add = "/_matrix/client/v3/account/3pid/add";
    let (status, uia) = s.post(add, Some(&token), json!({ "sid": sid, "client_secret": "add" })).await;
    assert_eq!(status, 401, "{uia}");
    let auth = password_auth(&user_id, "bea pw 12", uia["session"].as_str());
    let (status, resp) = s.post(add, Some(&token), json!({ "sid": sid, "client_secret": "add", "auth": auth })).await;
    assert_eq!((status, resp["errcode"].as_str()), (400, Some("M_THREEPID_AUTH_FAILED")), "{resp}");

    // The link shows a button; pressing it verifies.
    let path = &link[link.find("/_hearth/").unwrap()..];
    let mut browser = Browser::new(&s);
    let (status, page) = browser.get(&format!("{}{path}", s.url)).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("is to be added to an account"), "the page says what confirming does: {page}");
    let confirm =
        form(&[("csrf", &field(&page, "csrf")), ("sid", &field(&page, "sid")), ("code", &field(&page, "code"))]);
    let (status, _, page) = browser.post(&format!("{}/_hearth/email/verify", s.url), confirm).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("confirmed"), "{page}");

    let (_, uia) = s.post(add, Some(&token), json!({ "sid": sid, "client_secret": "add" })).await;
    let auth = password_auth(&user_id, "bea pw 12", uia["session"].as_str());
    let (status, resp) = s.post(add, Some(&token), json!({ "sid": sid, "client_secret": "add", "auth": auth })).await;
    assert_eq!(status, 200, "{resp}");
    let (_, pids) = s.get("/_matrix/client/v3/account/3pid", Some(&token)).await;
    let addresses: Vec<&str> =
        pids["threepids"].as_array().unwrap().iter().map(|p| p["address"].as_str().unwrap()).collect();
    assert_eq!(addresses, ["bea.work@example.org", "bea@example.org"], "{pids}");

    let delete = "/_matrix/client/v3/account/3pid/delete";
    let (status, resp) =
        s.post(delete, Some(&token), json!({ "medium": "email", "address": "bea.work@example.org" })).await;
    assert_eq!((status, &resp), (200, &json!({ "id_server_unbind_result": "no-support" })));
    let (status, resp) =
        s.post(delete, Some(&token), json!({ "medium": "email", "address": "bea.work@example.org" })).await;
    assert_eq!((status, resp["errcode"].as_str()), (400, Some("M_THREEPID_NOT_FOUND")), "{resp}");
    // The address is free again.
    let (status, _) = request_token(&s, ADD_TOKEN, "bea.work@example.org", "again", 1).await;
    assert_eq!(status, 200);
    let (_, pids) = s.get("/_matrix/client/v3/account/3pid", Some(&token)).await;
    assert_eq!(pids["threepids"].as_array().unwrap().len(), 1, "{pids}");
}

/// Without SMTP the address given at registration is kept unverified, and
/// asking for a code is refused rather than pretending to send one.
#[tokio::test]
async fn without_smtp_the_email_is_stored_unverified() {
    let s = Server::start().await;
    let (status, resp) = request_token(&s, REG_TOKEN, "cid@example.org", "secret", 1).await;
    assert_eq!((status, resp["errcode"].as_str()), (403, Some("M_THREEPID_DENIED")), "{resp}");
    let (_, first) = s.post(REG, None, json!({ "username": "cid", "password": "cid pw 12" })).await;
    let (status, resp) = s
        .post(
            REG,
            None,
            json!({
                "username": "cid", "password": "cid pw 12", "email": "Cid@Example.org",
                "auth": { "type": "m.login.dummy", "session": first["session"] },
            }),
        )
        .await;
    assert_eq!(status, 200, "{resp}");
    let (_, pids) = s.get("/_matrix/client/v3/account/3pid", resp["access_token"].as_str()).await;
    assert_eq!(pids["threepids"][0]["address"], "cid@example.org");
    assert_eq!(pids["threepids"][0]["validated_at"], 0);
    let (_, caps) = s.get("/_matrix/client/v3/capabilities", resp["access_token"].as_str()).await;
    assert_eq!(caps["capabilities"]["m.3pid_changes"]["enabled"], false, "{caps}");
}

/// A forgotten password: a code sent to the account's verified address
/// proves the owner, `POST /account/password` without an access token sets
/// the new password and signs every device out; an unknown address is
/// refused, and nothing changes before the code is entered.
#[tokio::test]
async fn a_forgotten_password_is_reset_through_the_emailed_code() {
    let (s, sink) = start_with_sink().await;
    let (user_id, token) = register_verified(&s, &sink, "fay", "fay pw 12", "fay@example.org").await;
    let reset_token = "/_matrix/client/v3/account/password/email/requestToken";
    let (status, resp) = request_token(&s, reset_token, "nobody@example.org", "reset", 1).await;
    assert_eq!((status, resp["errcode"].as_str()), (400, Some("M_THREEPID_NOT_FOUND")), "{resp}");
    let (status, resp) = request_token(&s, reset_token, "FAY@example.org", "reset", 1).await;
    assert_eq!(status, 200, "{resp}");
    let sid = resp["sid"].as_str().unwrap().to_owned();
    let (code, link) = sink.last_code_for("fay@example.org");
    // The e-mail and the link page name the account whose password would change.
    let mail = sink.messages().pop().unwrap();
    assert!(mail.contains("reset the password of the account @fay:localhost"), "{mail}");
    let mut browser = Browser::new(&s);
    let (_, page) = browser.get(&format!("{}{}", s.url, &link[link.find("/_hearth/").unwrap()..])).await;
    assert!(page.contains("password of <strong>@fay:localhost</strong>"), "{page}");

    let path = "/_matrix/client/v3/account/password";
    let reset = json!({
        "new_password": "fay new pw 34",
        "auth": { "type": "m.login.email.identity", "threepid_creds": { "sid": sid, "client_secret": "reset" } },
    });
    let (status, resp) = s.post(path, None, reset.clone()).await;
    assert_eq!((status, resp["errcode"].as_str()), (401, Some("M_THREEPID_AUTH_FAILED")), "{resp}");
    let (status, _) = s.login("fay", "fay pw 12").await;
    assert_eq!(status, 200, "the password is unchanged before the code");

    let submit = json!({ "sid": sid, "client_secret": "reset", "token": code });
    s.post("/_hearth/email/submit_token", None, submit).await;
    let (status, resp) = s.post(path, None, json!({ "new_password": "short", "auth": reset["auth"] })).await;
    assert_eq!((status, resp["errcode"].as_str()), (400, Some("M_WEAK_PASSWORD")), "{resp}");
    let (status, resp) = s.post(path, None, reset.clone()).await;
    assert_eq!(status, 200, "{resp}");
    let (status, _) = s.get("/_matrix/client/v3/account/whoami", Some(&token)).await;
    assert_eq!(status, 401, "every device is signed out");
    let (status, _) = s.login("fay", "fay pw 12").await;
    assert_eq!(status, 403);
    let (status, _) = s.login("fay", "fay new pw 34").await;
    assert_eq!(status, 200);
    // The session is spent.
    let (status, _) = s.post(path, None, reset).await;
    assert_eq!(status, 401);
    assert!(s.audit_events().iter().any(|e| e["event"] == "password_reset" && e["user"] == user_id.as_str()));
}

/// E-mails to one address are limited across sessions (a new client secret
/// starts a new session), and an e-mail the mail server did not take does
/// not count: the same attempt, retried, sends it.
#[tokio::test]
async fn emails_to_one_address_are_limited_and_failed_sends_do_not_count() {
    let (s, sink) = start_with_sink().await;
    for i in 0..10 {
        let (status, resp) = request_token(&s, REG_TOKEN, "busy@example.org", &format!("secret{i}"), 1).await;
        assert_eq!(status, 200, "{resp}");
    }
    let (status, resp) = request_token(&s, REG_TOKEN, "busy@example.org", "secret10", 1).await;
    assert_eq!((status, resp["errcode"].as_str()), (429, Some("M_LIMIT_EXCEEDED")), "{resp}");
    assert_eq!(sink.messages().len(), 10);

    // A server whose mail server is down, then up on the same port.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let port_text = port.to_string();
    let s = Server::start_with(&[
        ("HEARTH_SMTP__HOST", "127.0.0.1"),
        ("HEARTH_SMTP__PORT", port_text.as_str()),
        ("HEARTH_SMTP__SECURITY", "none"),
        ("HEARTH_SMTP__FROM", "Hearth <noreply@hearth.test>"),
    ])
    .await;
    let (status, resp) = request_token(&s, REG_TOKEN, "late@example.org", "secret", 1).await;
    assert_eq!((status, resp["errcode"].as_str()), (500, Some("M_UNKNOWN")), "{resp}");
    let sink = SmtpSink::start_on(port).await;
    let (status, resp) = request_token(&s, REG_TOKEN, "late@example.org", "secret", 1).await;
    assert_eq!(status, 200, "{resp}");
    let (code, _) = sink.last_code_for("late@example.org");
    let submit = json!({ "sid": resp["sid"], "client_secret": "secret", "token": code });
    let (_, resp) = s.post("/_hearth/email/submit_token", None, submit).await;
    assert_eq!(resp, json!({ "success": true }));
}
