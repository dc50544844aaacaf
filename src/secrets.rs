//! Secrets at rest: the master key that encrypts access key secrets, and the code secret.
//!
//! Neither lives in the database: a dump of it then yields no access key secret and derives no
//! code. Both come from the environment or a file; the development default generates each into a
//! file of its own under `./data/` (mode 0600) on first start. Each may name previous values, so
//! a rotation needs no downtime: new values are rolled out beside the old ones, then the old ones
//! retired.

use std::{
    io::Write,
    path::{Path, PathBuf},
};

use base64::Engine;
use chacha20poly1305::{
    XChaCha20Poly1305, XNonce,
    aead::{Aead, KeyInit},
};
use sha2::{Digest, Sha256};

use crate::Error;

/// Prefix of an encrypted value: format version 1 (XChaCha20-Poly1305).
const ENCRYPTED_PREFIX: &str = "enc1:";
/// Shortest access key secret or code secret accepted: shorter ones are guessable offline from
/// one captured signature.
pub const MIN_SECRET_LEN: usize = 16;

/// Where secrets come from (clap arguments with their `MSGCONTACT_*` variables).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct SecretsConfig {
    /// Master key encrypting access key secrets at rest: 32 bytes, base64 or hex.
    #[arg(long, env = "MSGCONTACT_MASTER_KEY", hide_env_values = true)]
    pub master_key: Option<String>,
    /// File holding the master key (instead of MSGCONTACT_MASTER_KEY).
    #[arg(long, env = "MSGCONTACT_MASTER_KEY_FILE")]
    pub master_key_file: Option<PathBuf>,
    /// Previous master keys, comma separated: still decrypt, during a rotation.
    #[arg(long, env = "MSGCONTACT_MASTER_KEY_PREVIOUS", hide_env_values = true)]
    pub master_key_previous: Option<String>,
    /// Secret for deriving verification codes (at least 16 characters; `hex:` + hex for bytes).
    #[arg(long, env = "MSGCONTACT_CODE_SECRET", hide_env_values = true)]
    pub code_secret: Option<String>,
    /// File holding the code secret (instead of MSGCONTACT_CODE_SECRET).
    #[arg(long, env = "MSGCONTACT_CODE_SECRET_FILE")]
    pub code_secret_file: Option<PathBuf>,
    /// Previous code secret: codes derived from it still verify, during a rotation.
    #[arg(long, env = "MSGCONTACT_CODE_SECRET_PREVIOUS", hide_env_values = true)]
    pub code_secret_previous: Option<String>,
    /// Where generated secrets are kept when none is configured (one directory per deployment;
    /// every process of it must read the same files).
    #[arg(long, env = "MSGCONTACT_SECRETS_DIR", default_value = "data")]
    pub secrets_dir: PathBuf,
}

impl SecretsConfig {
    /// The master key: configured, from its file, or generated into `secrets_dir/master.key`.
    pub fn master_key(&self) -> Result<MasterKey, Error> {
        let current = match (&self.master_key, &self.master_key_file) {
            (Some(k), _) => parse_key(k, "MSGCONTACT_MASTER_KEY")?,
            (None, Some(f)) => parse_key(&read_secret_file(f)?, "MSGCONTACT_MASTER_KEY_FILE")?,
            (None, None) => {
                let path = self.secrets_dir.join("master.key");
                let fresh =
                    base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>());
                parse_key(&generated_file(&path, &fresh)?, "the generated master key")?
            }
        };
        let previous = split_list(self.master_key_previous.as_deref())
            .map(|k| parse_key(k, "MSGCONTACT_MASTER_KEY_PREVIOUS"))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(MasterKey::new(current, previous))
    }

    /// The code secrets: configured, from the file, or generated into `secrets_dir/code.secret`.
    /// `legacy` is a secret an earlier version kept in the database: it becomes the generated
    /// file's content, so codes already sent stay valid.
    pub fn code_secrets(&self, legacy: Option<&[u8]>) -> Result<CodeSecrets, Error> {
        let current = match (&self.code_secret, &self.code_secret_file) {
            (Some(s), _) => parse_code_secret(s, "MSGCONTACT_CODE_SECRET")?,
            (None, Some(f)) => {
                parse_code_secret(&read_secret_file(f)?, "MSGCONTACT_CODE_SECRET_FILE")?
            }
            (None, None) => {
                let path = self.secrets_dir.join("code.secret");
                let bytes = legacy
                    .map(<[u8]>::to_vec)
                    .unwrap_or_else(|| rand::random::<[u8; 32]>().to_vec());
                let fresh = format!("hex:{}", hex::encode(bytes));
                parse_code_secret(&generated_file(&path, &fresh)?, "the generated code secret")?
            }
        };
        let previous = self
            .code_secret_previous
            .as_deref()
            .map(|s| parse_code_secret(s, "MSGCONTACT_CODE_SECRET_PREVIOUS"))
            .transpose()?;
        Ok(CodeSecrets { current, previous })
    }

    /// Whether the code secret will be generated (nothing configured).
    pub fn code_secret_generated(&self) -> bool {
        self.code_secret.is_none() && self.code_secret_file.is_none()
    }
}

fn split_list(s: Option<&str>) -> impl Iterator<Item = &str> {
    s.unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|k| !k.is_empty())
}

/// A 32-byte key written in base64 or hex.
fn parse_key(s: &str, what: &str) -> Result<[u8; 32], Error> {
    let s = s.trim();
    let bytes = if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        hex::decode(s).ok()
    } else {
        base64::engine::general_purpose::STANDARD.decode(s).ok()
    };
    bytes
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| Error::Config(format!("{what} must be 32 bytes in base64 or hex")))
}

/// A code secret: `hex:` + hex for raw bytes, otherwise the string's bytes.
fn parse_code_secret(s: &str, what: &str) -> Result<Vec<u8>, Error> {
    let s = s.trim();
    let bytes = match s.strip_prefix("hex:") {
        Some(h) => hex::decode(h).map_err(|_| Error::Config(format!("{what}: bad hex")))?,
        None => s.as_bytes().to_vec(),
    };
    if bytes.len() < MIN_SECRET_LEN {
        return Err(Error::Config(format!(
            "{what} must be at least {MIN_SECRET_LEN} bytes"
        )));
    }
    Ok(bytes)
}

fn read_secret_file(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))
}

/// The content of a generated secret's file, writing `fresh` there first if there is none yet.
/// Processes starting together agree: the file appears whole (written aside, then linked into
/// place, which fails if another process got there first) and everyone reads the one that won.
fn generated_file(path: &Path, fresh: &str) -> Result<String, Error> {
    let config = |e: std::io::Error| Error::Config(format!("secret file {}: {e}", path.display()));
    if let Ok(s) = std::fs::read_to_string(path) {
        return Ok(s.trim().to_owned());
    }
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).map_err(config)?;
    }
    let aside = path.with_extension(format!("tmp-{}", uuid::Uuid::new_v4().simple()));
    let written = (|| {
        let mut f = open_private(&aside)?;
        f.write_all(fresh.as_bytes())?;
        f.sync_all()
    })();
    let linked = written.and_then(|()| match std::fs::hard_link(&aside, path) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(e),
        _ => Ok(()),
    });
    let _ = std::fs::remove_file(&aside);
    linked.map_err(config)?;
    tracing::warn!(file = %path.display(), "generated a secret (development default); every process of this deployment must use the same one");
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .map_err(config)
}

#[cfg(unix)]
fn open_private(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn open_private(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
}

/// Encrypts and decrypts access key secrets (XChaCha20-Poly1305: a random 192-bit nonce per value
/// needs no counter shared between processes).
#[derive(Clone)]
pub struct MasterKey {
    current: ([u8; 32], String),
    previous: Vec<([u8; 32], String)>,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterKey")
            .field("id", &self.current.1)
            .finish_non_exhaustive()
    }
}

/// A key's id: the first 4 bytes of its SHA-256, so a value names the key that sealed it.
fn key_id(key: &[u8; 32]) -> String {
    hex::encode(&Sha256::digest(key)[..4])
}

impl MasterKey {
    pub fn new(current: [u8; 32], previous: Vec<[u8; 32]>) -> Self {
        Self {
            current: (current, key_id(&current)),
            previous: previous.into_iter().map(|k| (k, key_id(&k))).collect(),
        }
    }

    /// A key for tests and tools that keep nothing.
    pub fn random() -> Self {
        Self::new(rand::random(), Vec::new())
    }

    /// `enc1:<key id>:<base64(nonce ‖ ciphertext)>`; `aad` binds the value to its row (the access
    /// key id), so a sealed secret copied onto another key's row does not open.
    pub fn seal(&self, plaintext: &str, aad: &str) -> String {
        let cipher = XChaCha20Poly1305::new(chacha20poly1305::Key::from_slice(&self.current.0));
        let nonce: [u8; 24] = rand::random();
        let ct = cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                chacha20poly1305::aead::Payload {
                    msg: plaintext.as_bytes(),
                    aad: aad.as_bytes(),
                },
            )
            .expect("encryption of an in-memory value cannot fail");
        let mut blob = nonce.to_vec();
        blob.extend_from_slice(&ct);
        format!(
            "{ENCRYPTED_PREFIX}{}:{}",
            self.current.1,
            base64::engine::general_purpose::STANDARD.encode(blob)
        )
    }

    /// Whether a stored value is sealed at all (earlier versions stored secrets in clear).
    pub fn is_sealed(stored: &str) -> bool {
        stored.starts_with(ENCRYPTED_PREFIX)
    }

    /// Whether a stored value is sealed with the current key (else it wants re-sealing).
    pub fn is_current(&self, stored: &str) -> bool {
        stored
            .strip_prefix(ENCRYPTED_PREFIX)
            .and_then(|r| r.split_once(':'))
            .is_some_and(|(id, _)| id == self.current.1)
    }

    /// The plaintext of a sealed value, with whichever known key sealed it.
    pub fn open(&self, stored: &str, aad: &str) -> Result<String, Error> {
        let bad = || {
            Error::Config("a stored secret cannot be decrypted with the configured master keys (MSGCONTACT_MASTER_KEY, MSGCONTACT_MASTER_KEY_PREVIOUS)".into())
        };
        let (id, b64) = stored
            .strip_prefix(ENCRYPTED_PREFIX)
            .and_then(|r| r.split_once(':'))
            .ok_or_else(bad)?;
        let key = std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|(_, kid)| kid == id)
            .ok_or_else(bad)?;
        let blob = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| bad())?;
        if blob.len() < 24 {
            return Err(bad());
        }
        let (nonce, ct) = blob.split_at(24);
        let pt = XChaCha20Poly1305::new(chacha20poly1305::Key::from_slice(&key.0))
            .decrypt(
                XNonce::from_slice(nonce),
                chacha20poly1305::aead::Payload {
                    msg: ct,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| bad())?;
        String::from_utf8(pt).map_err(|_| bad())
    }
}

/// The secrets verification codes are derived from: the current one, and during a rotation the
/// previous one (a code derived from it still verifies).
#[derive(Clone)]
pub struct CodeSecrets {
    pub current: Vec<u8>,
    pub previous: Option<Vec<u8>>,
}

impl std::fmt::Debug for CodeSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CodeSecrets(..)")
    }
}

impl CodeSecrets {
    /// Fixed secrets, for tests.
    pub fn fixed(secret: &[u8]) -> Self {
        Self {
            current: secret.to_vec(),
            previous: None,
        }
    }

    /// The code to deliver for a verification.
    pub fn derive(&self, verification_id: &str) -> String {
        crate::code::derive_code(&self.current, verification_id)
    }

    /// Whether a submitted code is the verification's, under the current or the previous secret
    /// (each compared in constant time; both always compared, so timing says nothing of which).
    pub fn matches(&self, verification_id: &str, submitted: &str) -> bool {
        let now = crate::code::code_matches(&self.current, verification_id, submitted);
        let before = self
            .previous
            .as_ref()
            .is_some_and(|p| crate::code::code_matches(p, verification_id, submitted));
        now | before
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_secrets_open_only_with_their_key_and_row() {
        let old = MasterKey::random();
        let sealed = old.seal("s3cr3t-value-0123456789", "LTAI1");
        assert!(MasterKey::is_sealed(&sealed) && old.is_current(&sealed));
        assert!(!sealed.contains("s3cr3t"));
        assert_eq!(
            old.open(&sealed, "LTAI1").unwrap(),
            "s3cr3t-value-0123456789"
        );
        assert!(old.open(&sealed, "LTAI2").is_err(), "bound to its row");
        // Two seals of one value differ (random nonces).
        assert_ne!(sealed, old.seal("s3cr3t-value-0123456789", "LTAI1"));
        // Rotation: the new key opens old values while the old one is listed as previous.
        let rotated = MasterKey::new(rand::random(), vec![old.current.0]);
        assert_eq!(
            rotated.open(&sealed, "LTAI1").unwrap(),
            "s3cr3t-value-0123456789"
        );
        assert!(!rotated.is_current(&sealed));
        assert!(MasterKey::random().open(&sealed, "LTAI1").is_err());
    }

    #[test]
    fn keys_and_code_secrets_parse_strictly() {
        let b64 = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        assert_eq!(parse_key(&b64, "k").unwrap(), [7u8; 32]);
        assert_eq!(parse_key(&hex::encode([9u8; 32]), "k").unwrap(), [9u8; 32]);
        assert!(parse_key("short", "k").is_err());
        assert!(parse_code_secret("too-short", "c").is_err());
        assert_eq!(
            parse_code_secret("hex:00112233445566778899aabbccddeeff", "c")
                .unwrap()
                .len(),
            16
        );
    }

    #[test]
    fn generated_secrets_are_private_files_shared_by_concurrent_starters() {
        let dir = std::env::temp_dir().join(format!("msgcontact-secrets-{}", uuid::Uuid::new_v4()));
        let config = SecretsConfig {
            secrets_dir: dir.clone(),
            ..Default::default()
        };
        let keys: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| config.code_secrets(None).unwrap().current))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(keys.windows(2).all(|w| w[0] == w[1]), "one secret for all");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join("code.secret"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let master = config.master_key().unwrap();
        let sealed = master.seal("abc", "id");
        assert_eq!(
            config.master_key().unwrap().open(&sealed, "id").unwrap(),
            "abc"
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
