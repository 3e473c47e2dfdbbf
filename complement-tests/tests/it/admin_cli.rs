use complement_tests::Server;

fn stdout(o: &std::process::Output) -> String {
    assert!(o.status.success(), "admin command failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test]
async fn admin_commands_work_while_the_server_runs() {
    let s = Server::start().await;
    let out = stdout(&s.admin(&["create-user", "root", "--admin"], Some("correct horse\n")));
    assert!(out.contains("@root:localhost"), "{out}");
    let (status, login) = s.login("root", "correct horse").await;
    assert_eq!(status, 200);
    s.register("member", "correct horse").await;

    let list = stdout(&s.admin(&["list-users"], None));
    assert!(list.contains("@root:localhost\tadmin"), "{list}");
    assert!(list.contains("@member:localhost"), "{list}");

    stdout(&s.admin(&["reset-password", "@member:localhost"], Some("new password here\n")));
    assert_eq!(s.login("member", "correct horse").await.0, 403);
    assert_eq!(s.login("member", "new password here").await.0, 200);

    stdout(&s.admin(&["deactivate", "root"], None));
    assert_eq!(s.get("/_matrix/client/v3/account/whoami", login["access_token"].as_str()).await.0, 401);
    assert_eq!(s.login("root", "correct horse").await.1["errcode"], "M_USER_DEACTIVATED");
    assert!(stdout(&s.admin(&["list-users"], None)).contains("@root:localhost\tadmin,deactivated"));

    // Bad input is refused with a message and changes nothing.
    let out = s.admin(&["create-user", "Bad Name"], Some("correct horse\n"));
    assert!(!out.status.success());
    let out = s.admin(&["create-user", "member"], Some("correct horse\n"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("taken"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = s.admin(&["reset-password", "ghost"], Some("whatever pass\n"));
    assert!(!out.status.success());
}

#[tokio::test]
async fn admin_commands_work_while_the_server_is_stopped() {
    let mut s = Server::start().await;
    let a = s.register("early", "correct horse").await;
    assert!(s.terminate().await.success());

    let out = stdout(&s.admin(&["create-user", "offline"], Some("correct horse\n")));
    assert!(out.contains("@offline:localhost"));
    let list = stdout(&s.admin(&["list-users"], None));
    assert!(list.contains("@early:localhost") && list.contains("@offline:localhost"), "{list}");
    stdout(&s.admin(&["reset-password", "offline"], Some("another password\n")));
    stdout(&s.admin(&["deactivate", "early"], None));

    s.start_again().await;
    assert_eq!(s.login("offline", "another password").await.0, 200);
    assert_eq!(s.get("/_matrix/client/v3/account/whoami", Some(&a.access_token)).await.0, 401);
    assert_eq!(s.login("early", "correct horse").await.1["errcode"], "M_USER_DEACTIVATED");
}

#[test]
fn admin_commands_refuse_a_missing_database() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(complement_tests::homeserver_binary())
        .args(["admin", "list-users"])
        .env_clear()
        .env("HEARTH_DATA_DIR", dir.path().join("nowhere"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no database"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!dir.path().join("nowhere").exists(), "nothing is created");
}
