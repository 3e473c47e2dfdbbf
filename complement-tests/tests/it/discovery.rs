use complement_tests::Server;
use serde_json::json;

/// Complement: TestVersionStructure/Version responds 200 OK with valid structure
#[tokio::test]
async fn test_version_structure_lists_spec_versions() {
    let s = Server::start().await;
    let (status, body) = s.get("/_matrix/client/versions", None).await;
    assert_eq!(status, 200);
    let versions: Vec<&str> = body["versions"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert!(versions.contains(&"v1.19"), "{body}");
    assert!(versions.contains(&"v1.1"), "{body}");
}

#[tokio::test]
async fn well_known_client_and_server_come_from_config() {
    let s = Server::start().await;
    let (status, body) = s.get("/.well-known/matrix/client", None).await;
    assert_eq!(status, 200);
    // Default: https://<server_name>:<port the HTTPS listener is bound to>.
    let port = s.url.rsplit(':').next().unwrap();
    assert_eq!(body["m.homeserver"]["base_url"], format!("https://localhost:{port}"), "{body}");
    let (status, body) = s.get("/.well-known/matrix/server", None).await;
    assert_eq!(status, 404, "no delegation configured: {body}");
    assert_eq!(body["errcode"], "M_NOT_FOUND");

    let s = Server::start_with(&[
        ("HEARTH_WELL_KNOWN__CLIENT_BASE_URL", "https://matrix.example.org"),
        ("HEARTH_WELL_KNOWN__SERVER", "matrix.example.org:443"),
    ])
    .await;
    let (_, body) = s.get("/.well-known/matrix/client", None).await;
    assert_eq!(body, json!({ "m.homeserver": { "base_url": "https://matrix.example.org" } }));
    let (status, body) = s.get("/.well-known/matrix/server", None).await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({ "m.server": "matrix.example.org:443" }));
}

#[tokio::test]
async fn cors_headers_and_preflight() {
    let s = Server::start().await;
    let resp = s
        .http
        .get(format!("{}/_matrix/client/versions", s.url))
        .header("Origin", "https://app.element.io")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["access-control-allow-origin"], "*");

    let resp = s
        .http
        .request(reqwest::Method::OPTIONS, format!("{}/_matrix/client/v3/login", s.url))
        .header("Origin", "https://app.element.io")
        .header("Access-Control-Request-Method", "POST")
        .header("Access-Control-Request-Headers", "authorization, content-type")
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "preflight status {}", resp.status());
    let h = resp.headers();
    assert_eq!(h["access-control-allow-origin"], "*");
    let methods = h["access-control-allow-methods"].to_str().unwrap().to_ascii_uppercase();
    for m in ["GET", "POST", "PUT", "DELETE", "OPTIONS"] {
        assert!(methods.contains(m), "{methods}");
    }
    let headers = h["access-control-allow-headers"].to_str().unwrap().to_ascii_lowercase();
    for name in ["x-requested-with", "content-type", "authorization"] {
        assert!(headers.contains(name), "{headers}");
    }
}
