use complement_tests::Server;
use serde_json::json;

const REG: &str = "/_matrix/client/v3/register";

/// Complement: TestRegistration/POST {} returns a set of flows
#[tokio::test]
async fn test_registration_open_flow_uses_the_dummy_stage() {
    let s = Server::start().await;
    let (status, body) = s.post(REG, None, json!({ "username": "alice", "password": "correct horse" })).await;
    assert_eq!(status, 401);
    assert_eq!(body["flows"], json!([{ "stages": ["m.login.dummy"] }]));
    assert!(body["session"].is_string());
    // Nothing is created by the first leg.
    let (status, _) = s.get("/_matrix/client/v3/register/available?username=alice", None).await;
    assert_eq!(status, 200);

    let acct = s.register("alice", "correct horse").await;
    assert_eq!(acct.user_id, "@alice:localhost");
    let (status, body) = s.get("/_matrix/client/v3/account/whoami", Some(&acct.access_token)).await;
    assert_eq!(status, 200);
    assert_eq!(body["user_id"], "@alice:localhost");
    assert_eq!(body["device_id"], acct.device_id);
}

/// Complement: TestRegistration/POST /register can create a user
#[tokio::test]
async fn test_registration_dummy_auth_without_a_session_is_accepted() {
    let s = Server::start().await;
    let (status, body) = s
        .post(REG, None, json!({ "username": "bob", "password": "correct horse", "auth": { "type": "m.login.dummy" } }))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user_id"], "@bob:localhost");
}

/// Complement: TestRegistration
#[tokio::test]
async fn test_registration_username_rules() {
    let s = Server::start().await;
    for bad in ["Alice", "al ice", "al:ice", "ünï"] {
        let (status, body) = s.post(REG, None, json!({ "username": bad, "password": "correct horse" })).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["errcode"], "M_INVALID_USERNAME", "{bad}");
    }
    s.register("taken", "correct horse").await;
    let (status, body) = s.post(REG, None, json!({ "username": "taken", "password": "correct horse" })).await;
    assert_eq!(status, 400);
    assert_eq!(body["errcode"], "M_USER_IN_USE");

    let (status, body) = s.get("/_matrix/client/v3/register/available?username=taken", None).await;
    assert_eq!(status, 400);
    assert_eq!(body["errcode"], "M_USER_IN_USE");
    let (status, body) = s.get("/_matrix/client/v3/register/available?username=free", None).await;
    assert_eq!(status, 200);
    assert_eq!(body["available"], true);
    let (status, body) = s.get("/_matrix/client/v3/register/available?username=Bad!", None).await;
    assert_eq!(status, 400);
    assert_eq!(body["errcode"], "M_INVALID_USERNAME");
}

#[tokio::test]
async fn weak_or_missing_password_creates_nothing() {
    let s = Server::start().await;
    let (status, body) = s
        .post(REG, None, json!({ "username": "weak", "password": "short", "auth": { "type": "m.login.dummy" } }))
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["errcode"], "M_WEAK_PASSWORD");
    let (status, body) = s.post(REG, None, json!({ "username": "weak", "auth": { "type": "m.login.dummy" } })).await;
    assert_eq!(status, 400);
    assert_eq!(body["errcode"], "M_MISSING_PARAM");
    let (status, _) = s.get("/_matrix/client/v3/register/available?username=weak", None).await;
    assert_eq!(status, 200, "no account may exist after failed registrations");
}

/// `auth.min_password_classes`: a password mixing too few kinds of
/// character is refused at registration and at password change.
#[tokio::test]
async fn password_rules_from_the_configuration() {
    let s = Server::start_with(&[("HEARTH_AUTH__MIN_PASSWORD_CLASSES", "3")]).await;
    let register =
        |password: &str| json!({ "username": "rules", "password": password, "auth": { "type": "m.login.dummy" } });
    let (status, body) = s.post(REG, None, register("only lowercase words")).await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_WEAK_PASSWORD")), "{body}");
    assert!(body["error"].as_str().unwrap().contains("at least 3"), "{body}");
    let (status, body) = s.post(REG, None, register("Mixed case 1")).await;
    assert_eq!(status, 200, "{body}");
    let token = body["access_token"].as_str().unwrap();
    let user_id = body["user_id"].as_str().unwrap();
    let path = "/_matrix/client/v3/account/password";
    let (_, uia) = s.post(path, Some(token), json!({ "new_password": "weakweakweak" })).await;
    let auth = complement_tests::password_auth(user_id, "Mixed case 1", uia["session"].as_str());
    let (status, body) = s.post(path, Some(token), json!({ "new_password": "weakweakweak", "auth": auth })).await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_WEAK_PASSWORD")), "{body}");
    let (status, _) = s.login("rules", "Mixed case 1").await;
    assert_eq!(status, 200, "the password is unchanged");
}

#[tokio::test]
async fn closed_registration_is_forbidden() {
    let s = Server::start_with(&[("HEARTH_REGISTRATION__ENABLED", "false")]).await;
    let (status, body) = s
        .post(REG, None, json!({ "username": "x", "password": "correct horse", "auth": { "type": "m.login.dummy" } }))
        .await;
    assert_eq!(status, 403);
    assert_eq!(body["errcode"], "M_FORBIDDEN");
    let (status, body) = s.get("/_matrix/client/v3/register/available?username=x", None).await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")));
}

#[tokio::test]
async fn guest_registration_is_forbidden() {
    let s = Server::start().await;
    let (status, body) = s.post(&format!("{REG}?kind=guest"), None, json!({})).await;
    assert_eq!(status, 403);
    assert_eq!(body["errcode"], "M_FORBIDDEN");
}

#[tokio::test]
async fn registration_tokens() {
    let s = Server::start_with(&[("HEARTH_REGISTRATION__TOKENS", "[\"letmein\"]")]).await;
    let (status, body) = s.post(REG, None, json!({ "username": "tok", "password": "correct horse" })).await;
    assert_eq!(status, 401);
    assert_eq!(body["flows"], json!([{ "stages": ["m.login.registration_token"] }]));
    let session = body["session"].as_str().unwrap().to_owned();

    // The dummy stage is not enough.
    let (status, body) = s
        .post(REG, None, json!({ "username": "tok", "password": "correct horse", "auth": { "type": "m.login.dummy", "session": session } }))
        .await;
    assert_eq!(status, 401, "{body}");

    let (status, body) = s
        .post(
            REG,
            None,
            json!({ "username": "tok", "password": "correct horse",
                    "auth": { "type": "m.login.registration_token", "token": "wrong", "session": session } }),
        )
        .await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN");
    assert_eq!(body["completed"], json!([]));

    let validity = "/_matrix/client/v1/register/m.login.registration_token/validity";
    let (status, body) = s.get(&format!("{validity}?token=letmein"), None).await;
    assert_eq!((status, body["valid"].clone()), (200, json!(true)));
    let (_, body) = s.get(&format!("{validity}?token=nope"), None).await;
    assert_eq!(body["valid"], false);

    let (status, body) = s
        .post(
            REG,
            None,
            json!({ "username": "tok", "password": "correct horse",
                    "auth": { "type": "m.login.registration_token", "token": "letmein", "session": session } }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user_id"], "@tok:localhost");
}

/// Complement: TestRegistration/POST /register returns the same device_id as that in the request
#[tokio::test]
async fn test_registration_inhibit_login_device_id_and_display_name() {
    let s = Server::start().await;
    let (status, body) = s
        .post(
            REG,
            None,
            json!({ "username": "quiet", "password": "correct horse", "inhibit_login": true, "auth": { "type": "m.login.dummy" } }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user_id"], "@quiet:localhost");
    assert!(body.get("access_token").is_none(), "{body}");

    let (status, body) = s
        .post(
            REG,
            None,
            json!({ "username": "chosen", "password": "correct horse", "device_id": "MYDEVICE",
                    "initial_device_display_name": "Laptop", "auth": { "type": "m.login.dummy" } }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["device_id"], "MYDEVICE");
    let token = body["access_token"].as_str().unwrap();
    let (_, body) = s.get("/_matrix/client/v3/devices/MYDEVICE", Some(token)).await;
    assert_eq!(body["display_name"], "Laptop");
}

#[tokio::test]
async fn refresh_token_is_issued_when_asked() {
    let s = Server::start().await;
    let (status, body) = s
        .post(
            REG,
            None,
            json!({ "username": "fresh", "password": "correct horse", "refresh_token": true, "auth": { "type": "m.login.dummy" } }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["refresh_token"].is_string());
    assert_eq!(body["expires_in_ms"], 300_000);
}

#[tokio::test]
async fn display_name_and_email_are_stored() {
    let s = Server::start().await;
    let (status, body) = s
        .post(
            REG,
            None,
            json!({ "username": "carol", "password": "correct horse", "displayname": "Carol C",
                    "email": "Carol@Example.org", "auth": { "type": "m.login.dummy" } }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let token = body["access_token"].as_str().unwrap();
    let (_, profile) = s.get("/_matrix/client/v3/profile/@carol:localhost", None).await;
    assert_eq!(profile["displayname"], "Carol C");
    let (status, pids) = s.get("/_matrix/client/v3/account/3pid", Some(token)).await;
    assert_eq!(status, 200);
    let list = pids["threepids"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{pids}");
    assert_eq!(list[0]["medium"], "email");
    assert_eq!(list[0]["address"], "carol@example.org");
    assert_eq!(list[0]["validated_at"], 0, "unverified addresses carry validated_at 0");

    let (status, body) = s
        .post(REG, None, json!({ "username": "dave", "password": "correct horse", "email": "not-an-address", "auth": { "type": "m.login.dummy" } }))
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["errcode"], "M_INVALID_PARAM");
    let (status, _) = s.get("/_matrix/client/v3/register/available?username=dave", None).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn concurrent_registrations_of_one_name_create_one_account() {
    let s = Server::start().await;
    let body = json!({ "username": "race", "password": "correct horse", "auth": { "type": "m.login.dummy" } });
    let (a, b) = tokio::join!(s.post(REG, None, body.clone()), s.post(REG, None, body.clone()));
    let mut statuses = [a.0, b.0];
    statuses.sort();
    assert_eq!(statuses, [200, 400], "{a:?} {b:?}");
}
