//! A bot that echoes every text message it sees, in encrypted rooms too,
//! and accepts every invitation.
//!
//! ```text
//! cargo run -p hearth-client-sdk --example echo_bot -- \
//!     https://matrix.example.org echo-bot 'bot password' ./echo-bot-store [--ca-file server.pem]
//! ```
//!
//! The store passphrase is read from `ECHO_BOT_PASSPHRASE` (default: the
//! password). The first run logs in as a new device; later runs carry on
//! with the same device and keys.

use hearth_client_sdk::{Client, ClientError, Store, TlsTrust};

#[tokio::main]
async fn main() -> Result<(), ClientError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [server, user, password, store_dir, rest @ ..] = args.as_slice() else {
        eprintln!("usage: echo_bot SERVER_URL USER PASSWORD STORE_DIR [--ca-file PEM | --fingerprint SHA256]");
        std::process::exit(2);
    };
    let trust = match rest {
        [flag, path] if flag == "--ca-file" => TlsTrust::CaFile(path.into()),
        [flag, fingerprint] if flag == "--fingerprint" => TlsTrust::fingerprint(fingerprint)?,
        _ => TlsTrust::System,
    };
    let passphrase = std::env::var("ECHO_BOT_PASSPHRASE").unwrap_or_else(|_| password.clone());
    let client = Client::new(server, &trust, Store::open(store_dir.as_ref(), &passphrase)?)?;
    if !client.logged_in() {
        client.login(user, password).await?;
        // A new device skips the history before it; a restarted one carries
        // on from its stored sync token and answers what it missed.
        client.sync_once(std::time::Duration::ZERO).await?;
    }
    let me = client.user_id()?;
    println!("echoing as {me} (device {})", client.device_id()?);

    loop {
        // `sync` long-polls, and retries with backoff while the server is
        // unreachable; events arrive decrypted.
        let batch = client.sync().await?;
        for invite in batch.invites {
            client.join(invite.room_id.as_str()).await?;
        }
        for event in batch.events {
            if event.sender == me {
                continue;
            }
            match event.text() {
                // The reply is encrypted if the room is.
                Some(text) => {
                    client.send_text(&event.room_id, &format!("echo: {text}")).await?;
                }
                None if !matches!(event.encryption, hearth_client_sdk::Encryption::None) && !event.was_encrypted() => {
                    eprintln!("could not decrypt {} from {}: {:?}", event.event_id, event.sender, event.encryption);
                }
                None => {}
            }
        }
    }
}
