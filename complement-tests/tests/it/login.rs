use complement_tests::Server;
use serde_json::json;

/// Complement: TestLogin/GET /login yields a set of flows
#[tokio::test]
async fn test_login_get_login_yields_password_flow() {
    let s = Server::start().await;
    let (status, body) = s.get("/_matrix/client/v3/login", None).await;
    assert_eq!(status, 200);
    let types: Vec<&str> = body["flows"].as_array().unwrap().iter().filter_map(|f| f["type"].as_str()).collect();
    assert_eq!(types, ["m.login.password", "m.login.sso", "m.login.token", "org.hearth.login.password_totp"]);
}

/// Complement: TestLogin
#[tokio::test]
async fn test_login_password_by_localpart_full_id_and_legacy_field() {
    let s = Server::start().await;
    s.register("erin", "correct horse").await;
    for user in ["erin", "@erin:localhost"] {
        let (status, body) = s.login(user, "correct horse").await;
        assert_eq!(status, 200, "{user}: {body}");
        assert_eq!(body["user_id"], "@erin:localhost");
        assert!(body["access_token"].as_str().unwrap().len() >= 40);
        assert!(body.get("well_known").is_none(), "no base URL is configured, so none is pushed: {body}");
    }
    let (status, body) = s
        .post(
            "/_matrix/client/v3/login",
            None,
            json!({ "type": "m.login.password", "user": "erin", "password": "correct horse" }),
        )
        .await;
    assert_eq!(status, 200, "legacy `user` field: {body}");

    // Each login is a new device.
    let (_, a) = s.login("erin", "correct horse").await;
    let (_, b) = s.login("erin", "correct horse").await;
    assert_ne!(a["device_id"], b["device_id"]);
    assert_ne!(a["access_token"], b["access_token"]);
}

/// Complement: TestLogin/POST /login returns the same device_id as that in the request
#[tokio::test]
async fn test_login_with_existing_device_id_replaces_its_token() {
    let s = Server::start().await;
    s.register("fay", "correct horse").await;
    let login = |dev: &'static str| {
        s.post(
            "/_matrix/client/v3/login",
            None,
            json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "fay" },
                    "password": "correct horse", "device_id": dev, "initial_device_display_name": "Phone" }),
        )
    };
    let (_, first) = login("PHONE").await;
    let (_, second) = login("PHONE").await;
    assert_eq!(second["device_id"], "PHONE");
    let (status, _) = s.get("/_matrix/client/v3/account/whoami", first["access_token"].as_str()).await;
    assert_eq!(status, 401, "the device's old token is replaced");
    let (status, _) = s.get("/_matrix/client/v3/account/whoami", second["access_token"].as_str()).await;
    assert_eq!(status, 200);
}

/// Complement: TestLogin
#[tokio::test]
async fn test_login_bad_credentials_are_forbidden() {
    let s = Server::start().await;
    s.register("gus", "correct horse").await;
    let (status, body) = s.login("gus", "wrong horse").await;
    assert_eq!(status, 403);
    assert_eq!(body["errcode"], "M_FORBIDDEN");
    let (status, body) = s.login("nobody", "correct horse").await;
    assert_eq!(status, 403);
    assert_eq!(body["errcode"], "M_FORBIDDEN");
    let (status, body) = s.login("@gus:elsewhere.org", "correct horse").await;
    assert_eq!(status, 403, "{body}");
    let (status, body) =
        s.post("/_matrix/client/v3/login", None, json!({ "type": "m.login.token", "token": "abc" })).await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "unknown login token: {body}");
    let (status, body) =
        s.post("/_matrix/client/v3/login", None, json!({ "type": "m.login.unknown_type", "x": 1 })).await;
    assert_eq!(status, 400);
    assert_eq!(body["errcode"], "M_UNKNOWN");
}
