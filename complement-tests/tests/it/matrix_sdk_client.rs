//! The real matrix-rust-sdk (the engine of Element X) against the real binary.

use complement_tests::Server;
use matrix_sdk::{
    Client,
    ruma::api::client::{account::register, uiaa},
};

async fn sdk_client(s: &Server) -> Client {
    Client::builder()
        .homeserver_url(&s.url)
        .add_root_certificates(vec![s.certificate()])
        .build()
        .await
        .expect("matrix-sdk client")
}

#[tokio::test]
async fn matrix_sdk_registers_logs_in_reads_whoami_lists_devices_and_logs_out() {
    let s = Server::start().await;

    // Registration with user-interactive auth, the way an app drives it.
    let client = sdk_client(&s).await;
    let mut request = register::v3::Request::new();
    request.username = Some("sdkuser".to_owned());
    request.password = Some("sdk password 1".to_owned());
    request.initial_device_display_name = Some("matrix-sdk test".to_owned());
    let err = client.matrix_auth().register(request.clone()).await.expect_err("first call needs UIA");
    let info = err.as_uiaa_response().expect("a UIA response");
    assert!(info.flows.iter().any(|f| f.stages == vec![uiaa::AuthType::Dummy]));
    let mut dummy = uiaa::Dummy::new();
    dummy.session = info.session.clone();
    request.auth = Some(uiaa::AuthData::Dummy(dummy));
    let registered = client.matrix_auth().register(request).await.expect("registration completes");
    assert_eq!(registered.user_id.as_str(), "@sdkuser:localhost");

    // A fresh client logs in with the password.
    let client = sdk_client(&s).await;
    let login = client
        .matrix_auth()
        .login_username("sdkuser", "sdk password 1")
        .initial_device_display_name("second device")
        .send()
        .await
        .expect("login");
    assert_eq!(client.user_id().map(|u| u.as_str()), Some("@sdkuser:localhost"));

    let whoami = client.whoami().await.expect("whoami");
    assert_eq!(whoami.user_id.as_str(), "@sdkuser:localhost");
    assert_eq!(whoami.device_id.as_deref(), Some(login.device_id.as_ref()));

    let devices = client.devices().await.expect("devices").devices;
    assert_eq!(devices.len(), 2, "the registration device and this one");
    let me = devices.iter().find(|d| d.device_id == login.device_id).expect("own device listed");
    assert_eq!(me.display_name.as_deref(), Some("second device"));

    client.matrix_auth().logout().await.expect("logout");
    // The token is gone server-side.
    let (status, _) = s.get("/_matrix/client/v3/account/whoami", Some(&login.access_token)).await;
    assert_eq!(status, 401);

    // Wrong password through the SDK surfaces the Matrix error.
    let client = sdk_client(&s).await;
    let err = client.matrix_auth().login_username("sdkuser", "not it").send().await.expect_err("wrong password");
    assert!(err.to_string().contains("M_FORBIDDEN") || format!("{err:?}").contains("Forbidden"), "{err:?}");
}
