use complement_tests::{Server, password_auth};
use serde_json::json;

/// Complement: TestDeviceManagement
#[tokio::test]
async fn test_device_management_list_get_and_rename_devices() {
    let s = Server::start().await;
    let a = s.register("pam", "correct horse").await;
    let (_, second) = s.login("pam", "correct horse").await;
    let (status, body) = s.get("/_matrix/client/v3/devices", Some(&a.access_token)).await;
    assert_eq!(status, 200);
    let devices = body["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 2, "{body}");
    let mine = devices.iter().find(|d| d["device_id"] == a.device_id.as_str()).expect("own device listed");
    assert_eq!(mine["last_seen_ip"], "127.0.0.1");
    assert!(mine["last_seen_ts"].as_u64().unwrap() > 1_600_000_000_000);

    let path = format!("/_matrix/client/v3/devices/{}", a.device_id);
    let (status, _) = s.put(&path, Some(&a.access_token), json!({ "display_name": "Work laptop" })).await;
    assert_eq!(status, 200);
    let (status, body) = s.get(&path, Some(&a.access_token)).await;
    assert_eq!(status, 200);
    assert_eq!(body["display_name"], "Work laptop");
    assert_eq!(body["device_id"], a.device_id.as_str());

    let (status, body) = s.get("/_matrix/client/v3/devices/NOSUCH", Some(&a.access_token)).await;
    assert_eq!((status, body["errcode"].as_str()), (404, Some("M_NOT_FOUND")));
    let (status, _) =
        s.put("/_matrix/client/v3/devices/NOSUCH", Some(&a.access_token), json!({ "display_name": "x" })).await;
    assert_eq!(status, 404);

    // Another user's device is not visible.
    let b = s.register("quin", "correct horse").await;
    let (status, _) = s.get(&path, Some(&b.access_token)).await;
    assert_eq!(status, 404);
    let _ = second;
}

/// Complement: TestDeviceManagement/DELETE /device/{deviceId}
#[tokio::test]
async fn test_device_management_deleting_devices_needs_uia_and_logs_them_out() {
    let s = Server::start().await;
    let a = s.register("rae", "correct horse").await;
    let (_, second) = s.login("rae", "correct horse").await;
    let (_, third) = s.login("rae", "correct horse").await;
    let second_id = second["device_id"].as_str().unwrap();
    let path = format!("/_matrix/client/v3/devices/{second_id}");

    let (status, body) = s.request("DELETE", &path, Some(&a.access_token), Some(json!({}))).await;
    assert_eq!(status, 401);
    assert_eq!(body["flows"], json!([{ "stages": ["m.login.password"] }]));
    assert_eq!(s.get("/_matrix/client/v3/account/whoami", second["access_token"].as_str()).await.0, 200, "still there");

    let (status, body) = s
        .request(
            "DELETE",
            &path,
            Some(&a.access_token),
            Some(json!({ "auth": password_auth(&a.user_id, "correct horse", body["session"].as_str()) })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(s.get("/_matrix/client/v3/account/whoami", second["access_token"].as_str()).await.0, 401);

    let (status, body) = s
        .post(
            "/_matrix/client/v3/delete_devices",
            Some(&a.access_token),
            json!({ "devices": [third["device_id"], "UNKNOWN"] }),
        )
        .await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = s
        .post(
            "/_matrix/client/v3/delete_devices",
            Some(&a.access_token),
            json!({ "devices": [third["device_id"], "UNKNOWN"], "auth": password_auth(&a.user_id, "correct horse", body["session"].as_str()) }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(s.get("/_matrix/client/v3/account/whoami", third["access_token"].as_str()).await.0, 401);
    let (_, body) = s.get("/_matrix/client/v3/devices", Some(&a.access_token)).await;
    assert_eq!(body["devices"].as_array().unwrap().len(), 1);
}
