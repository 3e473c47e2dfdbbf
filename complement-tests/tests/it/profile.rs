use complement_tests::Server;
use serde_json::json;

/// Complement: TestProfileDisplayName, TestProfileAvatarURL
#[tokio::test]
async fn test_profile_display_name_and_avatar_url() {
    let s = Server::start().await;
    let a = s.register("sam", "correct horse").await;
    let (status, body) = s.get("/_matrix/client/v3/profile/@sam:localhost/displayname", None).await;
    assert_eq!(status, 200);
    assert_eq!(body["displayname"], "sam", "the localpart is the initial display name");

    let (status, _) = s
        .put(
            "/_matrix/client/v3/profile/@sam:localhost/displayname",
            Some(&a.access_token),
            json!({ "displayname": "Samwise" }),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = s
        .put(
            "/_matrix/client/v3/profile/@sam:localhost/avatar_url",
            Some(&a.access_token),
            json!({ "avatar_url": "mxc://localhost/abc" }),
        )
        .await;
    assert_eq!(status, 200);
    let (status, body) = s.get("/_matrix/client/v3/profile/@sam:localhost", None).await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({ "displayname": "Samwise", "avatar_url": "mxc://localhost/abc" }));
    let (_, body) = s.get("/_matrix/client/v3/profile/@sam:localhost/avatar_url", None).await;
    assert_eq!(body["avatar_url"], "mxc://localhost/abc");
}

#[tokio::test]
async fn profile_errors() {
    let s = Server::start().await;
    let a = s.register("tia", "correct horse").await;
    s.register("uma", "correct horse").await;
    let (status, body) = s
        .put(
            "/_matrix/client/v3/profile/@uma:localhost/displayname",
            Some(&a.access_token),
            json!({ "displayname": "hacked" }),
        )
        .await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")));
    let (_, body) = s.get("/_matrix/client/v3/profile/@uma:localhost/displayname", None).await;
    assert_eq!(body["displayname"], "uma");

    let (status, body) = s
        .put(
            "/_matrix/client/v3/profile/@tia:localhost/avatar_url",
            Some(&a.access_token),
            json!({ "avatar_url": "https://evil/x.png" }),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = s.get("/_matrix/client/v3/profile/@nobody:localhost", None).await;
    assert_eq!((status, body["errcode"].as_str()), (404, Some("M_NOT_FOUND")));
    let (status, body) = s.get("/_matrix/client/v3/profile/not-a-user-id", None).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["errcode"], "M_INVALID_PARAM");
    let (status, _) = s
        .put(
            "/_matrix/client/v3/profile/@tia:localhost/displayname",
            Some(&a.access_token),
            json!({ "displayname": "x".repeat(300) }),
        )
        .await;
    assert_eq!(status, 400);
}
