//! TLS material: the configured PEM files, or a self-signed certificate
//! generated on first start and kept in `data_dir/tls/`.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::config::Config;

/// Paths of the certificate chain and key the HTTPS listener uses.
pub struct TlsFiles {
    pub certificate: PathBuf,
    pub private_key: PathBuf,
}

/// The configured files, or the generated self-signed pair (created if missing).
pub fn ensure(config: &Config) -> anyhow::Result<TlsFiles> {
    if !config.tls.certificate.is_empty() {
        return Ok(TlsFiles {
            certificate: PathBuf::from(&config.tls.certificate),
            private_key: PathBuf::from(&config.tls.private_key),
        });
    }
    let dir = config.data_dir.join("tls");
    let files = TlsFiles { certificate: dir.join("cert.pem"), private_key: dir.join("key.pem") };
    if !files.certificate.exists() || !files.private_key.exists() {
        std::fs::create_dir_all(&dir)?;
        let mut names = vec![config.server_name.clone(), "localhost".to_owned(), "127.0.0.1".to_owned()];
        names.dedup();
        let generated = rcgen::generate_simple_self_signed(names)?;
        write_private(&files.private_key, generated.signing_key.serialize_pem().as_bytes())?;
        std::fs::write(&files.certificate, generated.cert.pem())?;
        tracing::info!(path = %files.certificate.display(), "generated a self-signed TLS certificate");
    }
    Ok(files)
}

/// Writes a file readable only by its owner.
pub fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
        f.write_all(contents)?;
        f.sync_all()
    }
    #[cfg(not(unix))]
    {
        let mut f = std::fs::File::create(path)?;
        f.write_all(contents)?;
        f.sync_all()
    }
}

/// SHA-256 fingerprint (colon-separated upper-case hex) of the first certificate in a PEM file.
pub fn fingerprint(pem_path: &Path) -> anyhow::Result<String> {
    let pem = std::fs::read(pem_path)?;
    let der = first_pem_der(&pem).ok_or_else(|| anyhow::anyhow!("no certificate in PEM file"))?;
    let digest = Sha256::digest(&der);
    Ok(digest.iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":"))
}

fn first_pem_der(pem: &[u8]) -> Option<Vec<u8>> {
    use base64::Engine;
    let text = std::str::from_utf8(pem).ok()?;
    let start = text.find("-----BEGIN CERTIFICATE-----")? + "-----BEGIN CERTIFICATE-----".len();
    let end = text[start..].find("-----END CERTIFICATE-----")? + start;
    let b64: String = text[start..end].chars().filter(|c| !c.is_whitespace()).collect();
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}
