//! The `homeserver` binary: runs the server, prints the default
//! configuration, and administers users.

use std::{io::BufRead, path::PathBuf, process::ExitCode, sync::Arc};

/// mimalloc instead of the system allocator: the server allocates many small,
/// short-lived buffers (JSON, events) on several threads, where glibc's
/// per-thread arenas fragment and hold memory.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use hearth_homeserver::{
    admin::{self, CreateUser, UserSummary},
    config::{Config, DEFAULT_CONFIG},
    server, storage,
};

#[derive(Parser)]
#[command(name = "homeserver", version, about = "Hearth Matrix homeserver")]
struct Cli {
    /// Configuration file (TOML). Without it the built-in defaults are used.
    #[arg(long, short, env = "HEARTH_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default).
    Run,
    /// Print the documented default configuration.
    GenerateConfig,
    /// Administer users, whether or not the server is running.
    #[command(subcommand)]
    Admin(AdminCommand),
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Create a user; the password is read from the first line of standard input.
    CreateUser {
        /// Localpart or full user ID.
        user: String,
        /// Make the user a server admin.
        #[arg(long)]
        admin: bool,
    },
    /// List all users.
    ListUsers,
    /// Set a new password, read from the first line of standard input.
    ResetPassword { user: String },
    /// Deactivate a user: log out every device and block logins.
    Deactivate { user: String },
    /// Rewrite the database so its files hold only live data: redacted event
    /// content and delivered messages are then in no file. The server must be
    /// stopped.
    Compact,
    /// Declare a device's identity keys compromised: the device is logged out,
    /// its keys are withdrawn and announced as changed, and they are refused
    /// if any device uploads them again.
    CompromiseDevice { user: String, device: String },
}

fn init_logging(filter: &str) {
    let filter = std::env::var("RUST_LOG").ok().unwrap_or_else(|| filter.to_owned());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn read_password() -> anyhow::Result<String> {
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).context("reading the password from standard input")?;
    let password = line.trim_end_matches(['\r', '\n']).to_owned();
    anyhow::ensure!(!password.is_empty(), "no password on standard input");
    Ok(password)
}

/// Sends an admin request to the running server.
async fn remote(
    config: &Config,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> anyhow::Result<serde_json::Value> {
    let file = config.data_dir.join("admin.json");
    let text = std::fs::read_to_string(&file).with_context(|| {
        format!("the database is in use but {} is missing: is the server still starting?", file.display())
    })?;
    let info: serde_json::Value = serde_json::from_str(&text)?;
    let url = format!("{}{}", info["url"].as_str().unwrap_or_default(), path);
    let client = reqwest::Client::new();
    let mut req = client.request(method, url).bearer_auth(info["secret"].as_str().unwrap_or_default());
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.context("cannot reach the running server's admin API")?;
    let status = resp.status();
    let value: serde_json::Value = resp.json().await.unwrap_or_default();
    if !status.is_success() {
        anyhow::bail!(
            "{} ({})",
            value["error"].as_str().unwrap_or("request failed"),
            value["errcode"].as_str().unwrap_or("")
        );
    }
    Ok(value)
}

fn encode_user(user: &str) -> String {
    user.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn run_admin(config: Arc<Config>, command: AdminCommand) -> anyhow::Result<()> {
    let password = match &command {
        AdminCommand::CreateUser { .. } | AdminCommand::ResetPassword { .. } => Some(read_password()?),
        _ => None,
    };
    if let AdminCommand::Compact = command {
        let path = config.data_dir.join("db");
        if !path.exists() {
            anyhow::bail!("there is no database in {}", config.data_dir.display());
        }
        let (before, after) = storage::sled_store::compact(&path).map_err(|e| match e {
            storage::StorageError::Locked => {
                anyhow::anyhow!("the database is in use: stop the server before compacting it")
            }
            e => anyhow::anyhow!("compaction failed: {e}"),
        })?;
        println!("compacted {}: {} KiB before, {} KiB after", path.display(), before / 1024, after / 1024);
        return Ok(());
    }
    // Open the database directly when no server holds it; otherwise go through the server.
    let direct = match server::open_services(config.clone(), server::Open::ExistingOnly) {
        Ok(s) => Some(s),
        Err(e) if e.is::<server::DatabaseInUse>() => None,
        Err(e) => return Err(e),
    };
    let users: Option<Vec<UserSummary>>;
    match (&direct, command) {
        (Some(s), AdminCommand::CreateUser { user, admin: is_admin }) => {
            let id =
                admin::create_user(s, CreateUser { user, password: password.unwrap_or_default(), admin: is_admin })
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("created {id}");
            users = None;
        }
        (None, AdminCommand::CreateUser { user, admin: is_admin }) => {
            let body =
                serde_json::to_value(CreateUser { user, password: password.unwrap_or_default(), admin: is_admin })?;
            let v = remote(&config, reqwest::Method::POST, admin::paths::USERS, Some(body)).await?;
            println!("created {}", v["user_id"].as_str().unwrap_or_default());
            users = None;
        }
        (Some(s), AdminCommand::ListUsers) => users = Some(admin::list_users(s).map_err(|e| anyhow::anyhow!("{e}"))?),
        (None, AdminCommand::ListUsers) => {
            let v = remote(&config, reqwest::Method::GET, admin::paths::USERS, None).await?;
            users = Some(serde_json::from_value(v["users"].clone())?);
        }
        (Some(s), AdminCommand::ResetPassword { user }) => {
            admin::reset_password(s, &user, password.unwrap_or_default()).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("password reset for {user}");
            users = None;
        }
        (None, AdminCommand::ResetPassword { user }) => {
            let path = admin::paths::PASSWORD.replace("{user_id}", &encode_user(&user));
            remote(
                &config,
                reqwest::Method::POST,
                &path,
                Some(serde_json::json!({ "password": password.unwrap_or_default() })),
            )
            .await?;
            println!("password reset for {user}");
            users = None;
        }
        (Some(s), AdminCommand::Deactivate { user }) => {
            admin::deactivate(s, &user).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("deactivated {user}");
            users = None;
        }
        (Some(s), AdminCommand::CompromiseDevice { user, device }) => {
            let keys = admin::compromise_device(s, &user, &device).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("device {device} of {user} compromised; {} keys refused from now on", keys.len());
            users = None;
        }
        (None, AdminCommand::CompromiseDevice { user, device }) => {
            let path = admin::paths::COMPROMISED
                .replace("{user_id}", &encode_user(&user))
                .replace("{device_id}", &encode_user(&device));
            let v = remote(&config, reqwest::Method::POST, &path, None).await?;
            let n = v["keys"].as_array().map_or(0, Vec::len);
            println!("device {device} of {user} compromised; {n} keys refused from now on");
            users = None;
        }
        (_, AdminCommand::Compact) => unreachable!("compaction is handled before the database is opened"),
        (None, AdminCommand::Deactivate { user }) => {
            let path = admin::paths::DEACTIVATE.replace("{user_id}", &encode_user(&user));
            remote(&config, reqwest::Method::POST, &path, None).await?;
            println!("deactivated {user}");
            users = None;
        }
    }
    if let Some(users) = users {
        for u in users {
            let mut flags = Vec::new();
            if u.admin {
                flags.push("admin");
            }
            if u.deactivated {
                flags.push("deactivated");
            }
            println!("{}\t{}", u.user_id, flags.join(","));
        }
    }
    if let Some(s) = direct {
        s.db.flush_now()?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::GenerateConfig) = cli.command {
        print!("{DEFAULT_CONFIG}");
        return ExitCode::SUCCESS;
    }
    let config = match Config::load(cli.config.as_deref(), std::env::vars()) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        None | Some(Command::Run) => {
            init_logging(&config.logging.level);
            runtime.block_on(server::run(config))
        }
        Some(Command::Admin(cmd)) => {
            init_logging("warn");
            runtime.block_on(run_admin(config, cmd))
        }
        Some(Command::GenerateConfig) => unreachable!("handled above"),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
