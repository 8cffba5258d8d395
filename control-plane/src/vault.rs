//! Secrets' encryption at rest: the key (`OUTRIDER_SECRETS_KEY_FILE`, or one the
//! embedded store generates in its data dir) and AES-256-GCM sealing (ring).
//!
//! Each value is sealed with a fresh random nonce and the owning service and name as
//! associated data, so a ciphertext copied to another secret's row fails to open. The
//! key's id (a hash of the key under a fixed label, never the key) is kept with every
//! row, so a control plane given another key says so instead of failing obscurely or
//! delivering garbage; AEAD would refuse garbage anyway.

use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Raw key length (AES-256).
pub const KEY_LEN: usize = 32;

/// The name of the key the embedded store generates in its data dir.
pub const GENERATED_KEY_FILE: &str = "secrets.key";

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("cannot read the secrets key file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write the secrets key file {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error(
        "the secrets key file {path} holds no key: it must hold 32 bytes, raw, or as 64 hex digits, or as base64 ({found})"
    )]
    Format { path: PathBuf, found: String },
    #[error("no random numbers from the system")]
    Random,
    /// The value does not open with this key: it was sealed with another key, for
    /// another secret, or the row was altered.
    #[error("the value cannot be decrypted with the configured key")]
    Open,
}

/// The key secrets are sealed with. Neither `Debug` nor `Display` shows it.
pub struct SecretsKey {
    key: LessSafeKey,
    id: String,
}

impl std::fmt::Debug for SecretsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretsKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl SecretsKey {
    pub fn from_bytes(raw: &[u8; KEY_LEN]) -> Self {
        let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, raw).expect("AES-256 takes 32 bytes"));
        let digest = Sha256::new_with_prefix(b"outrider secrets key id\0")
            .chain_update(raw)
            .finalize();
        let id = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        Self { key, id }
    }

    /// Reads a key file: exactly 32 bytes are the key itself; otherwise the text
    /// (surrounding whitespace ignored) is 64 hex digits or base64 of 32 bytes.
    pub fn from_file(path: &Path) -> Result<Self, VaultError> {
        let bytes = std::fs::read(path).map_err(|source| VaultError::Read {
            path: path.to_owned(),
            source,
        })?;
        parse_key(&bytes)
            .map(|raw| Self::from_bytes(&raw))
            .map_err(|found| VaultError::Format {
                path: path.to_owned(),
                found,
            })
    }

    /// The embedded store's key: `<data_dir>/secrets.key`, made (32 random bytes,
    /// base64, mode 0600) on first start and read afterwards.
    pub fn generated_in(data_dir: &Path) -> Result<Self, VaultError> {
        let path = data_dir.join(GENERATED_KEY_FILE);
        if path.exists() {
            return Self::from_file(&path);
        }
        let mut raw = [0u8; KEY_LEN];
        SystemRandom::new().fill(&mut raw).map_err(|_| VaultError::Random)?;
        let text = format!("{}\n", base64::engine::general_purpose::STANDARD.encode(raw));
        let write = |path: &Path| -> std::io::Result<()> {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::create_dir_all(data_dir)?;
            // create_new: two processes starting at once never overwrite each other's key.
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()
        };
        match write(&path) {
            Ok(()) => Ok(Self::from_bytes(&raw)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Self::from_file(&path),
            Err(source) => Err(VaultError::Write { path, source }),
        }
    }

    /// A short public name of this key (16 hex digits of a labelled SHA-256), stored
    /// with each sealed value so a different key is recognised as such.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Seals `value` as the secret `service`/`name`: nonce ‖ ciphertext ‖ tag.
    pub fn seal(&self, service: &str, name: &str, value: &[u8]) -> Result<Vec<u8>, VaultError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new().fill(&mut nonce).map_err(|_| VaultError::Random)?;
        let mut sealed = Vec::with_capacity(NONCE_LEN + value.len() + AES_256_GCM.tag_len());
        sealed.extend_from_slice(&nonce);
        let mut body = value.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(associated_data(service, name)),
                &mut body,
            )
            .map_err(|_| VaultError::Random)?;
        sealed.extend_from_slice(&body);
        Ok(sealed)
    }

    /// Opens what [`SecretsKey::seal`] made for the same `service`/`name`.
    pub fn open(&self, service: &str, name: &str, sealed: &[u8]) -> Result<Vec<u8>, VaultError> {
        if sealed.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return Err(VaultError::Open);
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| VaultError::Open)?;
        let mut body = body.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(associated_data(service, name)), &mut body)
            .map_err(|_| VaultError::Open)?;
        Ok(plain.to_vec())
    }
}

/// Binds a ciphertext to its secret: service names have no NUL, so this is unambiguous.
fn associated_data(service: &str, name: &str) -> Vec<u8> {
    format!("outrider secret\0{service}\0{name}").into_bytes()
}

/// The key in a key file's bytes, or what was found instead (never the bytes).
fn parse_key(bytes: &[u8]) -> Result<[u8; KEY_LEN], String> {
    if let Ok(raw) = <[u8; KEY_LEN]>::try_from(bytes) {
        return Ok(raw);
    }
    let text = std::str::from_utf8(bytes)
        .map_err(|_| format!("{} bytes that are not text", bytes.len()))?
        .trim();
    if text.len() == 2 * KEY_LEN && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        let mut raw = [0u8; KEY_LEN];
        for (i, out) in raw.iter_mut().enumerate() {
            *out = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|e| e.to_string())?;
        }
        return Ok(raw);
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|_| format!("{} characters that are neither hex nor base64", text.len()))?;
    <[u8; KEY_LEN]>::try_from(decoded.as_slice()).map_err(|_| format!("base64 of {} bytes", decoded.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> SecretsKey {
        SecretsKey::from_bytes(&[b; KEY_LEN])
    }

    #[test]
    fn a_sealed_value_opens_only_as_the_same_secret_with_the_same_key() {
        let k = key(1);
        let sealed = k.seal("web", "db-password", b"hunter2").unwrap();
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(k.open("web", "db-password", &sealed).unwrap(), b"hunter2");
        assert!(matches!(k.open("web", "other", &sealed), Err(VaultError::Open)));
        assert!(matches!(k.open("api", "db-password", &sealed), Err(VaultError::Open)));
        assert!(matches!(
            key(2).open("web", "db-password", &sealed),
            Err(VaultError::Open)
        ));
        assert!(matches!(
            k.open("web", "db-password", &sealed[..10]),
            Err(VaultError::Open)
        ));
    }

    #[test]
    fn every_seal_uses_a_new_nonce() {
        let k = key(1);
        assert_ne!(
            k.seal("web", "a", b"same").unwrap(),
            k.seal("web", "a", b"same").unwrap()
        );
    }

    #[test]
    fn key_files_take_raw_hex_or_base64_and_name_what_they_found_otherwise() {
        let raw = [7u8; KEY_LEN];
        let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        let b64 = base64::engine::general_purpose::STANDARD.encode(raw);
        assert_eq!(parse_key(&raw).unwrap(), raw);
        assert_eq!(parse_key(format!("{hex}\n").as_bytes()).unwrap(), raw);
        assert_eq!(parse_key(format!(" {b64}\n").as_bytes()).unwrap(), raw);
        assert_eq!(parse_key(b"c2hvcnQ=").unwrap_err(), "base64 of 5 bytes");
        assert!(parse_key(b"not a key!").unwrap_err().contains("neither hex nor base64"));
        assert_eq!(SecretsKey::from_bytes(&raw).id(), key(7).id());
        assert_ne!(key(7).id(), key(8).id());
    }

    #[test]
    fn the_generated_key_is_private_and_the_same_on_the_next_start() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let first = SecretsKey::generated_in(dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join(GENERATED_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = SecretsKey::generated_in(dir.path()).unwrap();
        assert_eq!(first.id(), again.id());
        let sealed = first.seal("web", "k", b"v").unwrap();
        assert_eq!(again.open("web", "k", &sealed).unwrap(), b"v");
    }
}
