use complement_tests::{Server, password_auth};
use serde_json::json;

/// Complement: TestLogout
#[tokio::test]
async fn test_logout_current_device_then_all_devices() {
    let s = Server::start().await;
    let a = s.register("hal", "correct horse").await;
    let (_, second) = s.login("hal", "correct horse").await;
    let (_, third) = s.login("hal", "correct horse").await;

    let (status, _) = s.post("/_matrix/client/v3/logout", Some(&a.access_token), json!({})).await;
    assert_eq!(status, 200);
    let (status, body) = s.get("/_matrix/client/v3/account/whoami", Some(&a.access_token)).await;
    assert_eq!((status, body["errcode"].as_str()), (401, Some("M_UNKNOWN_TOKEN")));
    let (status, _) = s.get("/_matrix/client/v3/account/whoami", second["access_token"].as_str()).await;
    assert_eq!(status, 200, "other devices stay logged in");

    let (status, _) = s.post("/_matrix/client/v3/logout/all", second["access_token"].as_str(), json!({})).await;
    assert_eq!(status, 200);
    for t in [&second, &third] {
        let (status, _) = s.get("/_matrix/client/v3/account/whoami", t["access_token"].as_str()).await;
        assert_eq!(status, 401);
    }
    let (status, body) = s.get("/_matrix/client/v3/devices", third["access_token"].as_str()).await;
    assert_eq!(status, 401, "{body}");
}

#[tokio::test]
async fn refresh_rotates_tokens_and_expired_tokens_are_soft_logged_out() {
    // Tokens of refreshing clients expire at once, so expiry needs no waiting.
    let s = Server::start_with(&[("HEARTH_AUTH__ACCESS_TOKEN_LIFETIME_SECS", "0")]).await;
    s.register("ivy", "correct horse").await;
    let (status, login) = s.login_refreshing("ivy", "correct horse").await;
    assert_eq!(status, 200, "{login}");
    let access = login["access_token"].as_str().unwrap();
    let refresh = login["refresh_token"].as_str().unwrap();
    let (status, body) = s.get("/_matrix/client/v3/account/whoami", Some(access)).await;
    assert_eq!(status, 401);
    assert_eq!(body["errcode"], "M_UNKNOWN_TOKEN");
    assert_eq!(body["soft_logout"], true);

    let (status, renewed) = s.post("/_matrix/client/v3/refresh", None, json!({ "refresh_token": refresh })).await;
    assert_eq!(status, 200, "{renewed}");
    assert_ne!(renewed["access_token"].as_str(), Some(access));
    assert!(renewed["refresh_token"].is_string());
    // The old refresh token is spent.
    let (status, body) = s.post("/_matrix/client/v3/refresh", None, json!({ "refresh_token": refresh })).await;
    assert_eq!(status, 401);
    assert_eq!(body["errcode"], "M_UNKNOWN_TOKEN");
    let (status, body) = s.post("/_matrix/client/v3/refresh", None, json!({ "refresh_token": "hrt_nonsense" })).await;
    assert_eq!((status, body["errcode"].as_str()), (401, Some("M_UNKNOWN_TOKEN")));

    // The expiry was audited.
    assert!(s.audit_events().iter().any(|e| e["event"] == "expired_token" && e["user"] == "@ivy:localhost"));
}

#[tokio::test]
async fn refreshed_token_works_when_lifetime_allows() {
    let s = Server::start().await;
    s.register("jon", "correct horse").await;
    let (_, login) = s.login_refreshing("jon", "correct horse").await;
    let (_, renewed) =
        s.post("/_matrix/client/v3/refresh", None, json!({ "refresh_token": login["refresh_token"] })).await;
    let (status, body) = s.get("/_matrix/client/v3/account/whoami", renewed["access_token"].as_str()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["device_id"], login["device_id"]);
    let (status, _) = s.get("/_matrix/client/v3/account/whoami", login["access_token"].as_str()).await;
    assert_eq!(status, 401, "the replaced access token no longer works");
}

/// Complement: TestChangePassword
#[tokio::test]
async fn test_change_password_behind_uia() {
    let s = Server::start().await;
    let a = s.register("kim", "correct horse").await;
    let (_, other) = s.login("kim", "correct horse").await;
    let path = "/_matrix/client/v3/account/password";

    let (status, body) = s.post(path, Some(&a.access_token), json!({ "new_password": "battery staple" })).await;
    assert_eq!(status, 401);
    assert_eq!(body["flows"], json!([{ "stages": ["m.login.password"] }]));
    let session = body["session"].as_str().unwrap().to_owned();

    let (status, body) = s
        .post(
            path,
            Some(&a.access_token),
            json!({ "new_password": "battery staple", "auth": password_auth(&a.user_id, "wrong", Some(&session)) }),
        )
        .await;
    assert_eq!(status, 401);
    assert_eq!(body["errcode"], "M_FORBIDDEN");
    let (status, _) = s.login("kim", "correct horse").await;
    assert_eq!(status, 200, "password unchanged after failed UIA");

    let (status, body) = s
        .post(
            path,
            Some(&a.access_token),
            json!({ "new_password": "battery staple", "auth": password_auth(&a.user_id, "correct horse", Some(&session)) }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(s.login("kim", "correct horse").await.0, 403);
    assert_eq!(s.login("kim", "battery staple").await.0, 200);
    // The requesting device stays; the others are logged out.
    assert_eq!(s.get("/_matrix/client/v3/account/whoami", Some(&a.access_token)).await.0, 200);
    assert_eq!(s.get("/_matrix/client/v3/account/whoami", other["access_token"].as_str()).await.0, 401);
}

/// Complement: TestChangePassword/After changing password, different sessions can optionally be kept
#[tokio::test]
async fn test_change_password_can_keep_other_devices() {
    let s = Server::start().await;
    let a = s.register("lee", "correct horse").await;
    let (_, other) = s.login("lee", "correct horse").await;
    let (status, body) = s
        .post(
            "/_matrix/client/v3/account/password",
            Some(&a.access_token),
            json!({ "new_password": "battery staple", "logout_devices": false,
                    "auth": password_auth("lee", "correct horse", None) }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(s.get("/_matrix/client/v3/account/whoami", other["access_token"].as_str()).await.0, 200);
}

#[tokio::test]
async fn uia_session_cannot_be_used_by_another_user() {
    let s = Server::start().await;
    let a = s.register("mo", "correct horse").await;
    let b = s.register("ned", "correct horse").await;
    let (_, body) = s
        .post("/_matrix/client/v3/account/password", Some(&a.access_token), json!({ "new_password": "battery staple" }))
        .await;
    let session = body["session"].as_str().unwrap().to_owned();
    let (status, body) = s
        .post(
            "/_matrix/client/v3/account/password",
            Some(&b.access_token),
            json!({ "new_password": "battery staple", "auth": password_auth(&b.user_id, "correct horse", Some(&session)) }),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    // And a password stage naming another user fails.
    let (status, body) = s
        .post(
            "/_matrix/client/v3/account/password",
            Some(&b.access_token),
            json!({ "new_password": "battery staple", "auth": password_auth(&a.user_id, "correct horse", None) }),
        )
        .await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN");
}

/// Complement: TestDeactivateAccount
#[tokio::test]
async fn test_deactivate_account_ends_every_session_at_once() {
    let s = Server::start().await;
    let a = s.register("olga", "correct horse").await;
    let (_, other) = s.login("olga", "correct horse").await;
    let (status, body) = s.post("/_matrix/client/v3/account/deactivate", Some(&a.access_token), json!({})).await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = s
        .post(
            "/_matrix/client/v3/account/deactivate",
            Some(&a.access_token),
            json!({ "auth": password_auth(&a.user_id, "correct horse", body["session"].as_str()) }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id_server_unbind_result"], "no-support");
    for t in [Some(a.access_token.as_str()), other["access_token"].as_str()] {
        let (status, body) = s.get("/_matrix/client/v3/account/whoami", t).await;
        assert_eq!((status, body["errcode"].as_str()), (401, Some("M_UNKNOWN_TOKEN")));
    }
    let (status, body) = s.login("olga", "correct horse").await;
    assert_eq!(status, 403);
    assert_eq!(body["errcode"], "M_USER_DEACTIVATED");
    let (status, body) = s.get("/_matrix/client/v3/register/available?username=olga", None).await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_USER_IN_USE")), "deactivated IDs are never reused");
    let (status, _) = s.get("/_matrix/client/v3/profile/@olga:localhost", None).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn concurrent_refreshes_spend_the_token_once() {
    let s = Server::start().await;
    s.register("racer", "correct horse").await;
    let (_, login) = s.login_refreshing("racer", "correct horse").await;
    let body = json!({ "refresh_token": login["refresh_token"] });
    let (a, b) = tokio::join!(
        s.post("/_matrix/client/v3/refresh", None, body.clone()),
        s.post("/_matrix/client/v3/refresh", None, body.clone())
    );
    let mut statuses = [a.0, b.0];
    statuses.sort();
    assert_eq!(statuses, [200, 401], "{a:?} {b:?}");
    let winner = if a.0 == 200 { a.1 } else { b.1 };
    assert_eq!(s.get("/_matrix/client/v3/account/whoami", winner["access_token"].as_str()).await.0, 200);
    // Logging out ends the only live token.
    assert_eq!(s.post("/_matrix/client/v3/logout", winner["access_token"].as_str(), json!({})).await.0, 200);
    assert_eq!(
        s.post("/_matrix/client/v3/refresh", None, json!({ "refresh_token": winner["refresh_token"] })).await.0,
        401
    );
}

#[tokio::test]
async fn unknown_uia_session_ids_are_replaced_by_the_server() {
    let s = Server::start().await;
    let a = s.register("sid", "correct horse").await;
    let (status, body) = s
        .post(
            "/_matrix/client/v3/account/password",
            Some(&a.access_token),
            json!({ "new_password": "battery staple", "auth": password_auth(&a.user_id, "wrong", Some("client-chosen")) }),
        )
        .await;
    assert_eq!(status, 401);
    assert_ne!(body["session"], "client-chosen", "{body}");
}
