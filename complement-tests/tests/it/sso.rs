//! The browser sign-in behind `m.login.sso`: the test plays the browser,
//! posting the server's forms with their CSRF cookie, following the
//! redirect to the client, and exchanging the `loginToken` with
//! `m.login.token`.

use complement_tests::Server;
use serde_json::json;

use crate::{
    browser::{Browser, field, form, urlencode},
    mfa::{code, enrol},
};

const CALLBACK: &str = "http://localhost:38080/callback?state=abc";

fn login_token(location: &str) -> String {
    assert!(location.starts_with("http://localhost:38080/callback?state=abc&loginToken="), "{location}");
    location.rsplit("loginToken=").next().unwrap().to_owned()
}

/// An account without a second factor signs in on the page and the client
/// exchanges the token once; a form without its cookie, a wrong password
/// and a redirect outside the allow-list are refused.
#[tokio::test]
async fn sso_sign_in_page_issues_a_single_use_login_token() {
    let s = Server::start().await;
    s.register("bob", "bob pw 1").await;
    let (_, types) = s.get("/_matrix/client/v3/login", None).await;
    let flows: Vec<&str> = types["flows"].as_array().unwrap().iter().filter_map(|f| f["type"].as_str()).collect();
    assert!(flows.contains(&"m.login.sso") && flows.contains(&"m.login.token"), "{flows:?}");

    let mut browser = Browser::new(&s);
    let start = format!("{}/_matrix/client/v3/login/sso/redirect?redirectUrl={}", s.url, urlencode(CALLBACK));
    let (status, page) = browser.get(&start).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("localhost"), "the page names where the user is sent: {page}");
    let csrf = field(&page, "csrf");
    let post = format!("{}/_hearth/sso/password", s.url);

    // A form whose CSRF token does not match the cookie.
    let (status, location, _) = browser
        .post(
            &post,
            form(&[("csrf", "forged"), ("redirect_url", CALLBACK), ("username", "bob"), ("password", "bob pw 1")]),
        )
        .await;
    assert_eq!((status, location), (403, None));

    // The wrong password.
    let (_, page) = browser.get(&start).await;
    let csrf2 = field(&page, "csrf");
    assert_ne!(csrf, csrf2);
    let (status, location, page) = browser
        .post(&post, form(&[("csrf", &csrf2), ("redirect_url", CALLBACK), ("username", "bob"), ("password", "nope")]))
        .await;
    assert_eq!((status, location), (403, None));
    assert!(page.contains("Wrong username or password"), "{page}");

    // The right one: back to the client with a token.
    let csrf3 = field(&page, "csrf");
    let (status, location, _) = browser
        .post(
            &post,
            form(&[("csrf", &csrf3), ("redirect_url", CALLBACK), ("username", "bob"), ("password", "bob pw 1")]),
        )
        .await;
    assert_eq!(status, 303);
    let token = login_token(&location.unwrap());
    let (status, body) = exchange(&s, &token).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["user_id"].as_str().unwrap().starts_with("@bob:"));
    let (status, body) = exchange(&s, &token).await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{body}");

    // Only allowed redirect targets get a page, let alone a token.
    for bad in ["https://evil.example/steal", "javascript:alert(1)", "http://localhost.evil.example/"] {
        let url = format!("{}/_matrix/client/v3/login/sso/redirect?redirectUrl={}", s.url, urlencode(bad));
        let (status, page) = browser.get(&url).await;
        assert_eq!(status, 400, "{bad}: {page}");
        assert!(!page.contains("name=\"password\""), "{page}");
    }
    // Posting the form straight to a foreign address is refused too.
    let (_, page) = browser.get(&start).await;
    let csrf4 = field(&page, "csrf");
    let evil = "https://evil.example/steal";
    let (status, location, _) = browser
        .post(&post, form(&[("csrf", &csrf4), ("redirect_url", evil), ("username", "bob"), ("password", "bob pw 1")]))
        .await;
    assert_eq!((status, location), (400, None));
}

/// An account with TOTP: the password page leads to the code page; a wrong
/// code is refused; the right one sends the browser back with a token.
#[tokio::test]
async fn sso_sign_in_asks_for_the_second_factor() {
    let s = Server::start().await;
    let alice = s.register("alice", "alice pw 1").await;
    let (secret, _) = enrol(&s, &alice.access_token, &alice.user_id, "alice pw 1").await;
    let mut browser = Browser::new(&s);
    let start = format!("{}/_matrix/client/v3/login/sso/redirect?redirectUrl={}", s.url, urlencode(CALLBACK));
    let (_, page) = browser.get(&start).await;
    let (status, location, page) = browser.sign_in(&s, &page, CALLBACK, "alice", "alice pw 1").await;
    assert_eq!((status, location), (200, None), "{page}");
    let pending = field(&page, "pending");
    let post = format!("{}/_hearth/sso/code", s.url);
    let (status, location, page) =
        browser.post(&post, form(&[("csrf", &field(&page, "csrf")), ("pending", &pending), ("code", "12345x")])).await;
    assert_eq!((status, location), (403, None));
    let (status, location, _) = browser
        .post(&post, form(&[("csrf", &field(&page, "csrf")), ("pending", &pending), ("code", &code(&secret, 30))]))
        .await;
    assert_eq!(status, 303);
    let token = login_token(&location.unwrap());
    let (status, body) = exchange(&s, &token).await;
    assert_eq!(status, 200, "{body}");
    // The finished sign-in cannot be continued again.
    let (_, page) = browser.get(&start).await;
    let (status, _, _) = browser
        .post(&post, form(&[("csrf", &field(&page, "csrf")), ("pending", &pending), ("code", &code(&secret, 30))]))
        .await;
    assert_eq!(status, 403);
    assert!(s.audit_events().iter().any(|e| e["event"] == "mfa_failed" && e["user"] == alice.user_id.as_str()));
}

/// The real matrix-sdk completes `m.login.sso` against the server: it builds
/// the SSO URL for its callback, the test plays the browser (password, then
/// the code of an account with a second factor), and matrix-sdk logs in
/// with the token from the callback and syncs.
#[tokio::test]
async fn matrix_sdk_completes_sso_login_with_a_second_factor() {
    let s = Server::start().await;
    let erin = s.register("erin", "erin pw 1").await;
    let (secret, _) = enrol(&s, &erin.access_token, &erin.user_id, "erin pw 1").await;
    let client = matrix_sdk::Client::builder()
        .homeserver_url(&s.url)
        .add_root_certificates(vec![s.certificate()])
        .build()
        .await
        .unwrap();
    let sso_url = client.matrix_auth().get_sso_login_url(CALLBACK, None).await.expect("SSO URL");

    let mut browser = Browser::new(&s);
    let (status, page) = browser.get(&sso_url).await;
    assert_eq!(status, 200, "{sso_url}: {page}");
    let (_, _, page) = browser.sign_in(&s, &page, CALLBACK, "erin", "erin pw 1").await;
    let (status, location, _) = browser
        .post(
            &format!("{}/_hearth/sso/code", s.url),
            form(&[
                ("csrf", &field(&page, "csrf")),
                ("pending", &field(&page, "pending")),
                ("code", &code(&secret, 30)),
            ]),
        )
        .await;
    assert_eq!(status, 303);
    let token = login_token(&location.unwrap());
    client.matrix_auth().login_token(&token).send().await.expect("matrix-sdk login with the token");
    assert_eq!(client.user_id().unwrap().as_str(), erin.user_id);
    client
        .sync_once(matrix_sdk::config::SyncSettings::default().timeout(std::time::Duration::from_millis(200)))
        .await
        .expect("sync");
}

/// A client that does not know `org.hearth.login.totp` sends the user to
/// the fallback page: the code entered there completes the stage, the page
/// runs the spec's `authDone` script, and the client finishes with
/// `{session}` alone.
#[tokio::test]
async fn uia_fallback_page_completes_the_second_factor_stage() {
    let s = Server::start().await;
    let gwen = s.register("gwen", "gwen pw 1").await;
    let (secret, recovery) = enrol(&s, &gwen.access_token, &gwen.user_id, "gwen pw 1").await;
    let (_, other) =
        s.post("/_matrix/client/v3/login", None, crate::mfa::totp_login("gwen", "gwen pw 1", &code(&secret, 30))).await;
    let path = format!("/_matrix/client/v3/devices/{}", other["device_id"].as_str().unwrap());
    let (_, uia) = s.request("DELETE", &path, Some(&gwen.access_token), Some(json!({}))).await;
    let session = uia["session"].as_str().unwrap().to_owned();
    let fallback = format!("{}/_matrix/client/v3/auth/org.hearth.login.totp/fallback/web?session={session}", s.url);
    let mut browser = Browser::new(&s);
    let submit = format!("{}/_hearth/uia/totp", s.url);

    // Before the password stage the page does not accept a code.
    let (status, page) = browser.get(&fallback).await;
    assert_eq!(status, 200, "{page}");
    let (status, _, _) = browser
        .post(&submit, form(&[("csrf", &field(&page, "csrf")), ("session", &session), ("code", &recovery[0])]))
        .await;
    assert_eq!(status, 403);
    let auth = complement_tests::password_auth(&gwen.user_id, "gwen pw 1", Some(&session));
    let (status, _) = s.request("DELETE", &path, Some(&gwen.access_token), Some(json!({ "auth": auth }))).await;
    assert_eq!(status, 401);
    // `{session}` alone does not finish a flow that is not complete.
    let only_session = json!({ "auth": { "session": session } });
    let (status, _) = s.request("DELETE", &path, Some(&gwen.access_token), Some(only_session.clone())).await;
    assert_eq!(status, 401);

    // A wrong code, then a good one.
    let (_, page) = browser.get(&fallback).await;
    let (status, _, page) = browser
        .post(&submit, form(&[("csrf", &field(&page, "csrf")), ("session", &session), ("code", "0x0x0x")]))
        .await;
    assert_eq!(status, 403, "{page}");
    let (status, _, page) = browser
        .post(&submit, form(&[("csrf", &field(&page, "csrf")), ("session", &session), ("code", &recovery[0])]))
        .await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("/_hearth/uia/auth-done.js"), "{page}");
    let (status, script) = browser.get(&format!("{}/_hearth/uia/auth-done.js", s.url)).await;
    assert_eq!(status, 200);
    assert!(script.contains("window.onAuthDone()") && script.contains("postMessage(\"authDone\", \"*\")"));

    let (status, body) = s.request("DELETE", &path, Some(&gwen.access_token), Some(only_session)).await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = s.get("/_matrix/client/v3/devices", Some(other["access_token"].as_str().unwrap())).await;
    assert_eq!(status, 401);
}

/// Exchanges a login token with `m.login.token`.
async fn exchange(s: &Server, token: &str) -> (u16, serde_json::Value) {
    s.post("/_matrix/client/v3/login", None, json!({ "type": "m.login.token", "token": token })).await
}
