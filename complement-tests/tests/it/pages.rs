//! The registration and account pages, posted as a browser without
//! JavaScript would: sign up, turn the authenticator app on, sign out, sign
//! in with the code, change the password, sign devices out, turn the app
//! off; and sign-up with a verified e-mail that returns to a client.

use complement_tests::{Server, SmtpSink, js::run_script};
use serde_json::json;

use crate::{
    browser::{Browser, field, form, urlencode},
    mfa::code,
};

const SESSION: &str = "__Host-hearth_session";
const CALLBACK: &str = "http://localhost:38080/callback?state=abc";

/// The text of the element with `id` (up to the next tag).
fn text_of(html: &str, id: &str) -> String {
    let marker = format!("id=\"{id}\">");
    let start = html.find(&marker).unwrap_or_else(|| panic!("no #{id} in {html}")) + marker.len();
    html[start..].split('<').next().unwrap().to_owned()
}

fn register_form(page: &str, pairs: &[(&str, &str)]) -> String {
    let csrf = field(page, "csrf");
    let redirect = field(page, "redirect_url");
    let mut all = vec![("csrf", csrf.as_str()), ("redirect_url", redirect.as_str())];
    all.extend_from_slice(pairs);
    form(&all)
}

#[tokio::test]
async fn account_pages_sign_up_enrol_sign_in_and_manage_the_account() {
    let s = Server::start().await;
    let mut b = Browser::new(&s);
    let url = |path: &str| format!("{}{path}", s.url);

    // Sign up: mismatched and weak passwords are refused, values kept.
    let (status, page) = b.get(&url("/_hearth/register")).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("optional, not verified"), "{page}");
    let fill = |page: &str, password2: &str, password: &str| {
        register_form(
            page,
            &[
                ("displayname", "Dora D"),
                ("email", "dora@example.org"),
                ("username", "dora"),
                ("password", password),
                ("password2", password2),
            ],
        )
    };
    let (status, _, page) = b.post(&url("/_hearth/register"), fill(&page, "other pw 1", "dora pw 12")).await;
    assert_eq!(status, 400);
    assert!(page.contains("do not match") && page.contains("value=\"dora\""), "{page}");
    let (status, _, page) = b.post(&url("/_hearth/register"), fill(&page, "short", "short")).await;
    assert_eq!(status, 400);
    assert!(page.contains("at least 8 characters"), "{page}");
    let (status, location, _) = b.post(&url("/_hearth/register"), fill(&page, "dora pw 12", "dora pw 12")).await;
    assert_eq!((status, location.as_deref()), (303, Some("/_hearth/account")));
    assert!(b.has_cookie(SESSION));

    let (status, page) = b.get(&url("/_hearth/account")).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(text_of(&page, "user-id"), "@dora:localhost");
    assert_eq!(text_of(&page, "totp-status"), "Off.");
    assert!(page.contains("dora@example.org (not verified)"), "{page}");
    // The API sees the page's session as a device, and the display name.
    let (status, login) = s.login("dora", "dora pw 12").await;
    assert_eq!(status, 200, "{login}");
    let api_token = login["access_token"].as_str().unwrap().to_owned();
    let (_, devices) = s.get("/_matrix/client/v3/devices", Some(&api_token)).await;
    assert!(devices["devices"].as_array().unwrap().iter().any(|d| d["display_name"] == "Account page (browser)"));
    let (_, profile) = s.get("/_matrix/client/v3/profile/@dora:localhost", None).await;
    assert_eq!(profile["displayname"], "Dora D");

    // Turn the app on: the password first (a wrong one is refused).
    let enrol = url("/_hearth/account/totp/enrol");
    let (status, _, page) = b.post(&enrol, form(&[("csrf", &field(&page, "csrf")), ("totp-password", "nope")])).await;
    assert_eq!(status, 403);
    assert!(page.contains("Wrong password"), "{page}");
    let (status, _, page) =
        b.post(&enrol, form(&[("csrf", &field(&page, "csrf")), ("totp-password", "dora pw 12")])).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("src=\"data:image/png;base64,iVBOR"), "a PNG QR code: {page}");
    let secret = text_of(&page, "totp-secret");
    let confirm = url("/_hearth/account/totp/confirm");
    let (status, _, page) = b.post(&confirm, form(&[("csrf", &field(&page, "csrf")), ("code", "000000x")])).await;
    assert_eq!(status, 403, "{page}");
    let (status, _, page) =
        b.post(&confirm, form(&[("csrf", &field(&page, "csrf")), ("code", &code(&secret, 0))])).await;
    assert_eq!(status, 200, "{page}");
    let recovery: Vec<String> =
        page.split("<li><code>").skip(1).map(|part| part.split('<').next().unwrap().to_owned()).collect();
    assert_eq!(recovery.len(), 10, "{page}");
    // The password alone no longer logs in through the API.
    let (status, _) = s.login("dora", "dora pw 12").await;
    assert_eq!(status, 403);

    // Sign out, then back in with the password and the code.
    let (_, page) = b.get(&url("/_hearth/account")).await;
    assert!(text_of(&page, "totp-status").starts_with("On:"), "{page}");
    let (status, _, page) = b.post(&url("/_hearth/account/logout"), form(&[("csrf", &field(&page, "csrf"))])).await;
    assert_eq!(status, 200);
    assert!(!b.has_cookie(SESSION));
    assert!(page.contains("name=\"password\"") && !page.contains("Signed in as"), "{page}");
    let (_, page) = b.get(&url("/_hearth/account")).await;
    assert!(page.contains("Sign in to manage your account"), "{page}");
    let (status, _, page) = b.sign_in(&s, &page, "", "dora", "dora pw 12").await;
    assert_eq!(status, 200, "{page}");
    let pending = field(&page, "pending");
    let (status, location, _) = b
        .post(
            &url("/_hearth/sso/code"),
            form(&[("csrf", &field(&page, "csrf")), ("pending", &pending), ("code", &code(&secret, 30))]),
        )
        .await;
    assert_eq!((status, location.as_deref()), (303, Some("/_hearth/account")));
    let (_, page) = b.get(&url("/_hearth/account")).await;
    assert_eq!(text_of(&page, "user-id"), "@dora:localhost");

    // A form without the right CSRF token changes nothing.
    let change = url("/_hearth/account/password");
    let change_form = |csrf: &str| {
        form(&[
            ("csrf", csrf),
            ("pw-password", "dora pw 12"),
            ("pw-code", &recovery[0]),
            ("new_password", "dora pw 34"),
            ("new_password2", "dora pw 34"),
            ("logout_others", "1"),
        ])
    };
    let (status, _, _) = b.post(&change, change_form("forged")).await;
    assert_eq!(status, 403);
    // Change the password (with a recovery code as the second factor),
    // signing the other devices out.
    let (_, page) = b.get(&url("/_hearth/account")).await;
    let (status, _, page) = b.post(&change, change_form(&field(&page, "csrf"))).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("Your password was changed"), "{page}");
    let (status, _) = s.get("/_matrix/client/v3/account/whoami", Some(&api_token)).await;
    assert_eq!(status, 401, "the API device was signed out");
    let (status, _) = s
        .post(
            "/_matrix/client/v3/login",
            None,
            json!({
                "type": "org.hearth.login.password_totp",
                "identifier": { "type": "m.id.user", "user": "dora" },
                "password": "dora pw 34",
                "code": recovery[1],
            }),
        )
        .await;
    assert_eq!(status, 200, "the new password works");

    // Sign devices out: none selected, then this browser itself.
    let (_, page) = b.get(&url("/_hearth/account")).await;
    let devices_url = url("/_hearth/account/devices");
    let (status, _, page) = b
        .post(
            &devices_url,
            form(&[("csrf", &field(&page, "csrf")), ("dev-password", "dora pw 34"), ("dev-code", &recovery[2])]),
        )
        .await;
    assert_eq!(status, 400);
    let this = page
        .split("value=\"")
        .filter_map(|p| p.split('"').next())
        .find(|v| page.contains(&format!("<code>{v}</code> (this browser)")));
    let this = this.expect("the page marks this browser").to_owned();
    let (status, _, page) = b
        .post(
            &devices_url,
            form(&[
                ("csrf", &field(&page, "csrf")),
                ("device", &this),
                ("dev-password", "dora pw 34"),
                ("dev-code", &recovery[2]),
            ]),
        )
        .await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("This browser was signed out too"), "{page}");
    assert!(!b.has_cookie(SESSION));
    // Without a session a form leads to the sign-in page.
    let (status, _, page) = b.post(&url("/_hearth/account/logout"), form(&[("csrf", "x")])).await;
    assert_eq!(status, 401);
    assert!(page.contains("sign in again"), "{page}");

    // Back in (recovery code at sign-in), then turn the app off.
    let (_, page) = b.get(&url("/_hearth/account")).await;
    let (_, _, page) = b.sign_in(&s, &page, "", "dora", "dora pw 34").await;
    let (status, _, _) = b
        .post(
            &url("/_hearth/sso/code"),
            form(&[("csrf", &field(&page, "csrf")), ("pending", &field(&page, "pending")), ("code", &recovery[3])]),
        )
        .await;
    assert_eq!(status, 303);
    let (_, page) = b.get(&url("/_hearth/account")).await;
    let disable = url("/_hearth/account/totp/disable");
    let (status, _, page) = b
        .post(
            &disable,
            form(&[("csrf", &field(&page, "csrf")), ("totp-password", "dora pw 34"), ("totp-code", "123456")]),
        )
        .await;
    assert_eq!(status, 403, "a wrong code keeps the factor on");
    let (status, _, page) = b
        .post(
            &disable,
            form(&[("csrf", &field(&page, "csrf")), ("totp-password", "dora pw 34"), ("totp-code", &recovery[4])]),
        )
        .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(text_of(&page, "totp-status"), "Off.");
    let (status, _) = s.login("dora", "dora pw 34").await;
    assert_eq!(status, 200);
    let events = s.audit_events();
    assert!(events.iter().any(|e| e["event"] == "uia_password_failed"), "the wrong password is audited");
    assert!(events.iter().any(|e| e["event"] == "recovery_code_used"));
}

/// With SMTP, the registration page sends a code, takes it, and (started
/// from a client's sign-in page) returns to the client with a login token.
#[tokio::test]
async fn registration_page_verifies_the_email_and_returns_to_the_client() {
    let sink = SmtpSink::start().await;
    let env = sink.env();
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let s = Server::start_with(&pairs).await;
    let mut b = Browser::new(&s);
    // The sign-in page links to registration, keeping the client's address.
    let start = format!("{}/_matrix/client/v3/login/sso/redirect?redirectUrl={}", s.url, urlencode(CALLBACK));
    let (_, page) = b.get(&start).await;
    let link = format!("/_hearth/register?redirectUrl={}", urlencode(CALLBACK));
    assert!(page.contains(&link.replace('&', "&amp;")), "{page}");
    let (status, page) = b.get(&format!("{}{link}", s.url)).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("we send a code"), "{page}");
    let fill = |page: &str, email: &str| {
        register_form(
            page,
            &[
                ("displayname", ""),
                ("email", email),
                ("username", "eve"),
                ("password", "eve pw 12"),
                ("password2", "eve pw 12"),
            ],
        )
    };
    let register = format!("{}/_hearth/register", s.url);
    let (status, _, page) = b.post(&register, fill(&page, "")).await;
    assert_eq!(status, 400, "an address is required: {page}");
    let (status, _, page) = b.post(&register, fill(&page, "eve@example.org")).await;
    assert_eq!(status, 200, "{page}");
    let pending = field(&page, "pending");
    let (code, _) = sink.last_code_for("eve@example.org");
    let confirm = format!("{}/_hearth/register/confirm", s.url);
    let (status, _, page) =
        b.post(&confirm, form(&[("csrf", &field(&page, "csrf")), ("pending", &pending), ("code", "11111111")])).await;
    assert_eq!(status, 403, "{page}");
    let (status, _) = s.get("/_matrix/client/v3/register/available?username=eve", None).await;
    assert_eq!(status, 200, "no account before the code");
    let (status, location, page) =
        b.post(&confirm, form(&[("csrf", &field(&page, "csrf")), ("pending", &pending), ("code", &code)])).await;
    assert_eq!(status, 303, "{page}");
    let location = location.unwrap();
    assert!(location.starts_with(&format!("{CALLBACK}&loginToken=")), "{location}");
    let token = location.rsplit("loginToken=").next().unwrap();
    let (status, body) =
        s.post("/_matrix/client/v3/login", None, json!({ "type": "m.login.token", "token": token })).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user_id"], "@eve:localhost");
    let (_, pids) = s.get("/_matrix/client/v3/account/3pid", body["access_token"].as_str()).await;
    assert!(pids["threepids"][0]["validated_at"].as_u64().unwrap() > 0, "{pids}");
    // The pending sign-up is spent.
    let (_, page) = b.get(&register).await;
    let (status, _, _) =
        b.post(&confirm, form(&[("csrf", &field(&page, "csrf")), ("pending", &pending), ("code", &code)])).await;
    assert_eq!(status, 403);
}

/// A real browser: headless Chromium, driven by Playwright
/// (`js/browser_signup.mjs`), signs up on the registration page, sets up
/// an authenticator app from the key the page shows, signs out and signs
/// back in with a code. The server then holds an account that needs the
/// second factor, and a recovery code the page showed works over the API.
#[tokio::test]
async fn chromium_signs_up_enrols_totp_and_signs_in_with_a_code() {
    let s = Server::start().await;
    let env = [("HEARTH_URL", s.url.as_str()), ("HEARTH_USER", "petra"), ("HEARTH_PASSWORD", "petra pw 12")];
    let (ok, stdout, stderr) = run_script("browser_signup.mjs", &env, std::time::Duration::from_secs(120)).await;
    assert!(ok, "the browser run failed:\n{stdout}\n{stderr}");
    let result: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(result["userId"], "@petra:localhost");
    let (status, body) = s.login("petra", "petra pw 12").await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{body}");
    let (status, body) = s
        .post(
            "/_matrix/client/v3/login",
            None,
            json!({
                "type": "org.hearth.login.password_totp",
                "identifier": { "type": "m.id.user", "user": "petra" },
                "password": "petra pw 12",
                "code": result["recoveryCode"],
            }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}
