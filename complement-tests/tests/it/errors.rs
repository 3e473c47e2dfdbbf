use complement_tests::Server;
use serde_json::json;

#[tokio::test]
async fn malformed_and_mistyped_bodies() {
    let s = Server::start().await;
    let resp = s
        .http
        .post(format!("{}/_matrix/client/v3/login", s.url))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["errcode"], "M_NOT_JSON");

    let (status, body) =
        s.post("/_matrix/client/v3/login", None, json!({ "type": "m.login.password", "password": 5 })).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["errcode"], "M_BAD_JSON");

    let (status, body) = s.post("/_matrix/client/v3/register", None, json!([1, 2])).await;
    assert_eq!(status, 400);
    assert_eq!(body["errcode"], "M_BAD_JSON");
}

/// Complement: TestUnknownEndpoints/Client-server endpoints
#[tokio::test]
async fn test_unknown_endpoints_client_server_and_wrong_method() {
    let s = Server::start().await;
    let (status, body) = s.get("/_matrix/client/v3/no/such/endpoint", None).await;
    assert_eq!(status, 404);
    assert_eq!(body["errcode"], "M_UNRECOGNIZED");
    let (status, body) = s.request("DELETE", "/_matrix/client/v3/login", None, None).await;
    assert_eq!(status, 405);
    assert_eq!(body["errcode"], "M_UNRECOGNIZED");
}

#[tokio::test]
async fn missing_and_unknown_tokens() {
    let s = Server::start().await;
    let (status, body) = s.get("/_matrix/client/v3/account/whoami", None).await;
    assert_eq!(status, 401);
    assert_eq!(body["errcode"], "M_MISSING_TOKEN");
    let (status, body) = s.get("/_matrix/client/v3/account/whoami", Some("hat_bogus")).await;
    assert_eq!(status, 401);
    assert_eq!(body["errcode"], "M_UNKNOWN_TOKEN");
    assert_ne!(body["soft_logout"], true);
    // The query-string form of the token is accepted too (v1.19 still allows it).
    let acct = s.register("tokq", "correct horse").await;
    let (status, body) =
        s.get(&format!("/_matrix/client/v3/account/whoami?access_token={}", acct.access_token), None).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn oversized_body_is_refused_and_changes_nothing() {
    let s = Server::start_with(&[("HEARTH_LIMITS__MAX_REQUEST_BYTES", "2048")]).await;
    let big = "x".repeat(4096);
    let (status, body) = s
        .post("/_matrix/client/v3/register", None, json!({ "username": "big", "password": "long enough", "pad": big }))
        .await;
    assert_eq!(status, 413);
    assert_eq!(body["errcode"], "M_TOO_LARGE");
    let (status, _) = s.get("/_matrix/client/v3/register/available?username=big", None).await;
    assert_eq!(status, 200, "nothing was created");
}

#[tokio::test]
async fn unknown_fields_and_query_parameters_are_ignored() {
    let s = Server::start().await;
    let acct = s.register("extra", "correct horse").await;
    let (status, body) = s
        .get("/_matrix/client/v3/account/whoami?org.matrix.msc4222.use_state_after=true", Some(&acct.access_token))
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = s
        .post(
            "/_matrix/client/v3/login",
            None,
            json!({
                "type": "m.login.password",
                "identifier": { "type": "m.id.user", "user": "extra" },
                "password": "correct horse",
                "org.example.unknown": { "nested": true },
            }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}
