//! Start-up, listeners and graceful shutdown.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use axum::{Router, middleware};
use serde_json::json;

use crate::{
    api,
    config::Config,
    service::Services,
    storage::{Db, StorageError, migrations, sled_store::SledStore},
    tls,
    util::random_token,
};

/// How [`open_services`] treats a missing database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Open {
    /// Create the data directory and database if they do not exist.
    CreateIfMissing,
    /// Fail if there is no database yet (admin commands pointed at the wrong place).
    ExistingOnly,
}

/// Opening failed because a running server holds the database.
#[derive(Debug, thiserror::Error)]
#[error("the database in {0} is in use by another process")]
pub struct DatabaseInUse(pub String);

/// Opens the database in `data_dir/db`, migrates it and builds the services.
pub fn open_services(config: Arc<Config>, mode: Open) -> anyhow::Result<Arc<Services>> {
    let db_path = config.data_dir.join("db");
    if mode == Open::ExistingOnly && !db_path.exists() {
        anyhow::bail!(
            "there is no database in {}: pass the server's --config (or HEARTH_DATA_DIR)",
            config.data_dir.display()
        );
    }
    create_private_dir(&config.data_dir)
        .with_context(|| format!("cannot create data directory {}", config.data_dir.display()))?;
    let store = SledStore::open_with_cache(&db_path, config.storage.cache_mib * 1024 * 1024).map_err(|e| match e {
        StorageError::Locked => anyhow::Error::new(DatabaseInUse(config.data_dir.display().to_string())),
        e => anyhow::anyhow!("cannot open the database: {e}"),
    })?;
    let db = Db::new(Arc::new(store));
    let version = migrations::run(&db)?;
    tracing::debug!(version, "database schema is current");
    Ok(Services::build(config, db)?)
}

/// Creates a directory (and parents) readable only by its owner.
fn create_private_dir(path: &std::path::Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(path)
    }
    #[cfg(not(unix))]
    {
        std::fs::create_dir_all(path)
    }
}

fn with_client_ip(router: Router, trust_forwarded: bool) -> Router {
    router.layer(middleware::from_fn_with_state(trust_forwarded, api::client_ip_layer))
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

/// Runs the server until SIGINT or SIGTERM, then drains and flushes.
pub async fn run(config: Arc<Config>) -> anyhow::Result<()> {
    rustls::crypto::aws_lc_rs::default_provider()
        .install_default()
        .map_err(|_| anyhow::anyhow!("a TLS crypto provider was already installed"))?;
    // Bind first, so a configured port 0 becomes the real port everywhere it is advertised.
    let https_listener = std::net::TcpListener::bind(config.listen.https)
        .with_context(|| format!("cannot listen on {} (listen.https)", config.listen.https))?;
    https_listener.set_nonblocking(true)?;
    let https_addr = https_listener.local_addr()?;
    let config = if config.listen.https != https_addr {
        let mut c = (*config).clone();
        c.listen.https = https_addr;
        Arc::new(c)
    } else {
        config
    };
    // A secret left behind by a killed server must never be used.
    let admin_file = config.data_dir.join("admin.json");
    let services = open_services(config.clone(), Open::CreateIfMissing)?;
    let _ = std::fs::remove_file(&admin_file);
    tracing::info!(
        server_name = %config.server_name,
        signing_key = %services.server_keys.key_id(),
        public_key = %services.server_keys.public_key_base64(),
        "server signing key loaded"
    );

    let tls_files = tls::ensure(&config)?;
    let fingerprint = tls::fingerprint(&tls_files.certificate)?;
    tracing::info!(
        certificate = %tls_files.certificate.display(),
        sha256 = %fingerprint,
        "TLS certificate in use; clients must trust this certificate"
    );
    let rustls_config =
        axum_server::tls_rustls::RustlsConfig::from_pem_file(&tls_files.certificate, &tls_files.private_key)
            .await
            .context("cannot load the TLS certificate or key")?;

    let app = api::router(services.clone());
    let handle = axum_server::Handle::new();
    let https_app = with_client_ip(app.clone(), false);
    let https = axum_server::from_tcp_rustls(https_listener, rustls_config)?.handle(handle.clone());
    let mut https_server =
        tokio::spawn(async move { https.serve(https_app.into_make_service_with_connect_info::<SocketAddr>()).await });
    tracing::info!("listening for HTTPS on https://{https_addr}");

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let wait_stop = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };

    let mut http_addr = None;
    let mut http_server = None;
    if let Some(addr) = config.http_listener()? {
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
        let bound = listener.local_addr()?;
        tracing::info!("listening for plain HTTP on http://{bound}");
        http_addr = Some(bound);
        let http_app = with_client_ip(app.clone(), config.listen.http_trust_forwarded_for);
        let stop = wait_stop(stop_rx.clone());
        http_server = Some(tokio::spawn(async move {
            axum::serve(listener, http_app.into_make_service_with_connect_info::<SocketAddr>())
                .with_graceful_shutdown(stop)
                .await
        }));
    }

    // The admin API, for `homeserver admin` while the server runs.
    let admin_listener = tokio::net::TcpListener::bind(config.admin.bind)
        .await
        .with_context(|| format!("cannot listen on {} (admin.bind)", config.admin.bind))?;
    let admin_addr = admin_listener.local_addr()?;
    let secret = random_token("adm_");
    tls::write_private(
        &admin_file,
        json!({ "url": format!("http://{admin_addr}"), "secret": secret }).to_string().as_bytes(),
    )?;
    let admin_app = api::admin::router(services.clone(), secret);
    let admin_stop = wait_stop(stop_rx.clone());
    let admin_server =
        tokio::spawn(async move { axum::serve(admin_listener, admin_app).with_graceful_shutdown(admin_stop).await });

    // Where the listeners ended up (useful when ports are chosen by the OS).
    let listening_file = config.data_dir.join("listening.json");
    std::fs::write(
        &listening_file,
        json!({
            "https": https_addr.to_string(),
            "http": http_addr.map(|a| a.to_string()),
            "admin": admin_addr.to_string(),
        })
        .to_string(),
    )?;

    let https_stopped = tokio::select! {
        () = shutdown_signal() => {
            tracing::info!("shutting down: finishing in-flight requests");
            false
        }
        r = &mut https_server => {
            tracing::error!(result = ?r, "the HTTPS listener stopped");
            true
        }
    };
    handle.graceful_shutdown(Some(Duration::from_secs(30)));
    if !https_stopped {
        let _ = https_server.await;
    }
    let _ = stop_tx.send(true);
    // Every listener gets the same bounded time to drain.
    let drain = Duration::from_secs(30);
    if let Some(h) = http_server {
        let _ = tokio::time::timeout(drain, h).await;
    }
    let _ = tokio::time::timeout(drain, admin_server).await;
    let _ = std::fs::remove_file(&admin_file);
    let _ = std::fs::remove_file(&listening_file);
    services.db.flush_now()?;
    tracing::info!("storage flushed; stopped");
    Ok(())
}
