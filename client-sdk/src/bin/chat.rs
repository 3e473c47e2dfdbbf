//! `chat`: a command-line Matrix client with end-to-end encryption.
//!
//! Its configuration and its encrypted store live in one directory per user
//! (`$CHAT_DIR`, or `$XDG_DATA_HOME/hearth-chat`, or
//! `~/.local/share/hearth-chat`). See `docs/client-sdk.md` for the reference.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use hearth_client_sdk::ruma::{OwnedRoomId, RoomId, UserId};
use hearth_client_sdk::{
    Client, ClientError, Encryption, LOGIN_PASSWORD_TOTP, Membership, NewRoom, Registration, RoomEvent, Store,
    StoreError, TlsTrust,
};
use serde::{Deserialize, Serialize};

#[derive(Parser)]
#[command(name = "chat", version, about = "An end-to-end encrypted Matrix chat client")]
struct Cli {
    /// The directory holding the configuration and the encrypted store.
    #[arg(long, env = "CHAT_DIR", global = true)]
    dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

/// How to reach the server; only for `register` and `login`.
#[derive(clap::Args)]
struct ServerArgs {
    /// The homeserver's base URL, such as https://matrix.example.org.
    #[arg(long)]
    server: String,
    /// Trust the server certificate(s) in this PEM file (for a self-signed
    /// server, its own certificate).
    #[arg(long, conflicts_with = "fingerprint")]
    ca_file: Option<PathBuf>,
    /// Trust only the certificate with this SHA-256 fingerprint (hex, colons
    /// allowed).
    #[arg(long)]
    fingerprint: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Create an account; asks for the name, e-mail, username and password.
    Register {
        #[command(flatten)]
        server: ServerArgs,
        /// A registration token, if the server requires one.
        #[arg(long)]
        registration_token: Option<String>,
    },
    /// Log in as a new device; asks for the password.
    Login {
        #[command(flatten)]
        server: ServerArgs,
        /// The user ID or localpart.
        user: String,
    },
    /// Log this device out and delete its local state.
    Logout,
    /// Show who is logged in, and this device.
    Whoami,
    /// List joined rooms and invitations.
    Rooms,
    /// Create a room and print its ID.
    Create {
        /// The room name.
        #[arg(long)]
        name: Option<String>,
        /// End-to-end encrypt the room.
        #[arg(long)]
        encrypted: bool,
        /// Invite these users.
        #[arg(long)]
        invite: Vec<String>,
    },
    /// Invite a user to a room.
    Invite { room: String, user: String },
    /// Join a room (by ID or alias) or accept an invitation.
    Join { room: String },
    /// Leave a room.
    Leave { room: String },
    /// Send a text message (encrypted in an encrypted room).
    Send { room: String, text: String },
    /// Print messages as they arrive (decrypted), in one room or all.
    Listen {
        room: Option<String>,
        /// Stop after this many messages.
        #[arg(long)]
        count: Option<usize>,
    },
    /// List this account's devices.
    Devices,
    /// Print a room's recent history, oldest first.
    History {
        room: String,
        /// How many events to fetch.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
}

/// What `config.toml` in the directory holds (no secrets).
#[derive(Serialize, Deserialize, Default)]
struct Config {
    server: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ca_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fingerprint: Option<String>,
}

impl Config {
    fn trust(&self) -> Result<TlsTrust, Failure> {
        Ok(match (&self.ca_file, &self.fingerprint) {
            (Some(path), _) => TlsTrust::CaFile(path.clone()),
            (None, Some(fingerprint)) => TlsTrust::fingerprint(fingerprint)?,
            (None, None) => TlsTrust::System,
        })
    }
}

/// A failure with the message the user sees.
struct Failure(String);

impl From<ClientError> for Failure {
    fn from(error: ClientError) -> Self {
        Self(match &error {
            ClientError::Unreachable { url, reason } => format!("cannot reach the server at {url}: {reason}"),
            ClientError::NotLoggedIn => "not logged in: run `chat login` or `chat register` first".to_owned(),
            ClientError::Store(StoreError::WrongPassphrase) => "wrong store passphrase".to_owned(),
            ClientError::Matrix { errcode, message, .. } => match errcode.as_str() {
                "M_USER_IN_USE" => "that username is already taken".to_owned(),
                "M_UNKNOWN_TOKEN" => "the server no longer accepts this session: log in again".to_owned(),
                _ => format!("the server refused: {message} ({errcode})"),
            },
            _ => error.to_string(),
        })
    }
}

impl From<StoreError> for Failure {
    fn from(error: StoreError) -> Self {
        ClientError::Store(error).into()
    }
}

impl From<std::io::Error> for Failure {
    fn from(error: std::io::Error) -> Self {
        Self(error.to_string())
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(message)) => {
            eprintln!("chat: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let dir = match cli.dir {
        Some(dir) => dir,
        None => default_dir().ok_or_else(|| Failure("no home directory: set CHAT_DIR".to_owned()))?,
    };
    match cli.command {
        Command::Register { server, registration_token } => {
            let client = new_session(&dir, &server)?;
            let display_name = ask("Name: ")?;
            let email = ask("E-mail: ")?;
            let username = ask("Username: ")?;
            let password = ask_secret("Password: ")?;
            let registration = Registration {
                username,
                password,
                display_name: Some(display_name).filter(|n| !n.is_empty()),
                email: Some(email).filter(|e| !e.is_empty()),
                registration_token,
                device_display_name: Some("chat".to_owned()),
            };
            client.register(&registration).await?;
            print_identity(&client, "Registered").await
        }
        Command::Login { server, user } => {
            let client = new_session(&dir, &server)?;
            let password = ask_secret("Password: ")?;
            let wrong = |e: ClientError| match e.errcode() {
                Some("M_FORBIDDEN") => Failure(format!("login refused: {}", error_message(&e))),
                _ => e.into(),
            };
            match client.login(&user, &password).await {
                // The account has a second factor: ask for the code.
                Err(e) if e.errcode() == Some("M_FORBIDDEN") && error_message(&e).contains(LOGIN_PASSWORD_TOTP) => {
                    let code = ask("Authentication code (or a recovery code): ")?;
                    client.login_with_code(&user, &password, code.trim()).await.map_err(wrong)?;
                }
                Err(e) if e.errcode() == Some("M_FORBIDDEN") => {
                    return Err(Failure("wrong username or password".to_owned()));
                }
                other => other?,
            }
            print_identity(&client, "Logged in as").await
        }
        Command::Logout => {
            let client = open(&dir)?;
            client.logout().await?;
            println!("Logged out; this device's keys are deleted.");
            Ok(())
        }
        Command::Whoami => {
            let client = open(&dir)?;
            let user = client.whoami().await?;
            println!("{user} (device {})", client.device_id()?);
            Ok(())
        }
        Command::Rooms => {
            let client = open(&dir)?;
            client.sync_once(Duration::ZERO).await?;
            let mut any = false;
            for room in client.rooms() {
                let lock = if room.encryption.is_some() { " [encrypted]" } else { "" };
                match room.membership {
                    Membership::Join => println!("{}  {}{lock}", room.room_id, room.display_name()),
                    Membership::Invite => {
                        let by = room.inviter.as_ref().map(|u| format!(" by {u}")).unwrap_or_default();
                        println!("{}  {}{lock} (invited{by})", room.room_id, room.display_name());
                    }
                    Membership::Leave => continue,
                }
                any = true;
            }
            if !any {
                println!("No rooms.");
            }
            Ok(())
        }
        Command::Create { name, encrypted, invite } => {
            let client = open(&dir)?;
            let invite = invite.iter().map(|u| parse_user(u)).collect::<Result<Vec<_>, _>>()?;
            let room = client.create_room(NewRoom { name, encrypted, invite }).await?;
            println!("{room}");
            Ok(())
        }
        Command::Invite { room, user } => {
            let client = open(&dir)?;
            let room = resolve_room(&client, &room).await?;
            client.invite(&room, &parse_user(&user)?).await.map_err(|e| room_error(e, &room))?;
            println!("Invited {user}.");
            Ok(())
        }
        Command::Join { room } => {
            let client = open(&dir)?;
            let target = match resolve_room(&client, &room).await {
                Ok(id) => id.to_string(),
                Err(_) => room.clone(),
            };
            let room_id = client.join(&target).await.map_err(|e| room_error(e, &room))?;
            println!("Joined {room_id}.");
            Ok(())
        }
        Command::Leave { room } => {
            let client = open(&dir)?;
            let room = resolve_room(&client, &room).await?;
            client.leave(&room).await.map_err(|e| room_error(e, &room))?;
            println!("Left {room}.");
            Ok(())
        }
        Command::Send { room, text } => {
            let client = open(&dir)?;
            // Catch up first, so that new devices of the members are known.
            client.sync_once(Duration::ZERO).await?;
            let room = resolve_room(&client, &room).await?;
            let event_id = client.send_text(&room, &text).await.map_err(|e| room_error(e, &room))?;
            println!("{event_id}");
            Ok(())
        }
        Command::Listen { room, count } => {
            let client = open(&dir)?;
            let filter = match &room {
                Some(room) => Some(resolve_room(&client, room).await?),
                None => None,
            };
            let mut printed = 0;
            let mut stdout = std::io::stdout();
            loop {
                let batch = client.sync().await?;
                for invite in &batch.invites {
                    let by = invite.inviter.as_ref().map(|u| format!(" by {u}")).unwrap_or_default();
                    writeln!(stdout, "* invited to {} ({}){by}", invite.display_name(), invite.room_id)?;
                }
                for event in &batch.events {
                    if filter.as_ref().is_some_and(|room| *room != event.room_id) {
                        continue;
                    }
                    if let Some(line) = format_event(&client, event) {
                        writeln!(stdout, "{line}")?;
                        stdout.flush()?;
                        printed += 1;
                        if count.is_some_and(|count| printed >= count) {
                            return Ok(());
                        }
                    }
                }
            }
        }
        Command::Devices => {
            let client = open(&dir)?;
            for device in client.devices().await? {
                let name = device.display_name.as_deref().unwrap_or("");
                let this = if device.is_this_device { "  (this device)" } else { "" };
                println!("{}  {name}{this}", device.device_id);
            }
            println!("This device's fingerprint (ed25519): {}", client.ed25519_key().await?);
            Ok(())
        }
        Command::History { room, limit } => {
            let client = open(&dir)?;
            client.sync_once(Duration::ZERO).await?;
            let room = resolve_room(&client, &room).await?;
            let page = client.messages(&room, None, limit).await.map_err(|e| room_error(e, &room))?;
            for event in page.events.iter().rev() {
                if let Some(line) = format_event(&client, event) {
                    println!("{line}");
                }
            }
            Ok(())
        }
    }
}

fn default_dir() -> Option<PathBuf> {
    let data = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".local/share")))?;
    Some(data.join("hearth-chat"))
}

/// Opens the store, asking for its passphrase (`CHAT_PASSPHRASE` if set).
fn open_store(dir: &Path) -> Result<Store, Failure> {
    let passphrase = match std::env::var("CHAT_PASSPHRASE") {
        Ok(passphrase) => passphrase,
        Err(_) => ask_secret("Store passphrase: ")?,
    };
    Ok(Store::open(&dir.join("store"), &passphrase)?)
}

/// Writes the configuration for a new session and opens a client on it.
fn new_session(dir: &Path, server: &ServerArgs) -> Result<Client, Failure> {
    std::fs::create_dir_all(dir)?;
    restrict(dir)?;
    let config = Config {
        server: server.server.trim_end_matches('/').to_owned(),
        ca_file: server.ca_file.as_ref().map(std::path::absolute).transpose()?,
        fingerprint: server.fingerprint.clone(),
    };
    let trust = config.trust()?;
    let text = toml::to_string(&config).map_err(|e| Failure(e.to_string()))?;
    let store = open_store(dir)?;
    let client = Client::new(&config.server, &trust, store)?;
    std::fs::write(dir.join("config.toml"), text)?;
    Ok(client)
}

/// Opens the client of an existing session.
fn open(dir: &Path) -> Result<Client, Failure> {
    let text = std::fs::read_to_string(dir.join("config.toml"))
        .map_err(|_| Failure(format!("no account in {}: run `chat register` or `chat login` first", dir.display())))?;
    let config: Config = toml::from_str(&text).map_err(|e| Failure(format!("{}/config.toml: {e}", dir.display())))?;
    let client = Client::new(&config.server, &config.trust()?, open_store(dir)?)?;
    if !client.logged_in() {
        return Err(ClientError::NotLoggedIn.into());
    }
    Ok(client)
}

/// Keeps the directory private to its owner.
fn restrict(dir: &Path) -> Result<(), Failure> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    let _ = dir;
    Ok(())
}

/// Asks for a line on the terminal (or reads it from piped input).
fn ask(prompt: &str) -> Result<String, Failure> {
    if std::io::stdin().is_terminal() {
        eprint!("{prompt}");
        std::io::stderr().flush()?;
    }
    let mut line = String::new();
    if std::io::stdin().lock().read_line(&mut line)? == 0 {
        return Err(Failure(format!("no input for `{}`", prompt.trim_end_matches([':', ' ']))));
    }
    Ok(line.trim_end_matches(['\n', '\r']).to_owned())
}

/// Asks for a secret without echoing it on a terminal.
fn ask_secret(prompt: &str) -> Result<String, Failure> {
    if std::io::stdin().is_terminal() { Ok(rpassword::prompt_password(prompt)?) } else { ask(prompt) }
}

async fn print_identity(client: &Client, what: &str) -> Result<(), Failure> {
    println!("{what} {} on device {}", client.user_id()?, client.device_id()?);
    println!("This device's fingerprint (ed25519): {}", client.ed25519_key().await?);
    Ok(())
}

fn parse_user(user: &str) -> Result<hearth_client_sdk::ruma::OwnedUserId, Failure> {
    UserId::parse(user).map_err(|_| Failure(format!("`{user}` is not a user ID (like @name:server)")))
}

/// A room given as an ID, an alias or the name of a known room.
async fn resolve_room(client: &Client, room: &str) -> Result<OwnedRoomId, Failure> {
    if room.starts_with('!') {
        return RoomId::parse(room).map_err(|_| Failure(format!("`{room}` is not a room ID")));
    }
    if room.starts_with('#') {
        return client.resolve_alias(room).await.map_err(|e| match e.errcode() {
            Some("M_NOT_FOUND") => Failure(format!("unknown room alias {room}")),
            _ => e.into(),
        });
    }
    let known: Vec<_> = client
        .rooms()
        .into_iter()
        .filter(|r| r.membership != Membership::Leave && r.name.as_deref() == Some(room))
        .collect();
    match known.as_slice() {
        [one] => Ok(one.room_id.clone()),
        [] => Err(Failure(format!("unknown room `{room}`: give a room ID or alias, or see `chat rooms`"))),
        _ => Err(Failure(format!("several rooms are named `{room}`: give the room ID"))),
    }
}

/// Explains the errors a room operation gets for a room the user is not in.
fn room_error(error: ClientError, room: &impl std::fmt::Display) -> Failure {
    match error.errcode() {
        Some("M_FORBIDDEN") | Some("M_NOT_FOUND") => {
            Failure(format!("unknown room {room}, or you are not allowed there: {}", error_message(&error)))
        }
        _ => error.into(),
    }
}

fn error_message(error: &ClientError) -> String {
    match error {
        ClientError::Matrix { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

/// One line for a room event, or none for events that are not messages.
fn format_event(client: &Client, event: &RoomEvent) -> Option<String> {
    let room = client.room(&event.room_id).map(|r| r.display_name().to_owned()).unwrap_or(event.room_id.to_string());
    match &event.encryption {
        Encryption::Undecryptable(reason) => {
            Some(format!("[{room}] {}: ** unable to decrypt: {reason} **", event.sender))
        }
        _ => {
            let text = event.text()?;
            let lock = if event.was_encrypted() { " 🔒" } else { "" };
            Some(format!("[{room}] {}{lock}: {text}", event.sender))
        }
    }
}
