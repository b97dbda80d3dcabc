//! AES-256-GCM for secrets at rest in the embedded store. The key lives in a file of its own
//! (0600), never in the store or the manifests; every seal draws a fresh random 96-bit nonce.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, Generate, KeyInit, Nonce};
use aes_gcm::{Aes256Gcm, Key};

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("secret key file {path}: {message}")]
    KeyFile { path: PathBuf, message: String },
    #[error("a stored secret could not be decrypted (wrong key file, or the record is damaged)")]
    Open,
}

/// Seals and opens small secrets.
#[derive(Clone)]
pub struct SecretBox {
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox(..)")
    }
}

const NONCE_LEN: usize = 12;

impl SecretBox {
    /// Loads the 32-byte key from `path`, creating it (mode 0600) on first use.
    pub fn load_or_create(path: &Path) -> Result<SecretBox, CryptoError> {
        let err = |message: String| CryptoError::KeyFile {
            path: path.to_path_buf(),
            message,
        };
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Written whole to a temporary file, then linked into place: a crash never
                // leaves a short key, and of two processes racing, both end with the same key.
                let key = Key::<Aes256Gcm>::generate();
                let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
                let mut options = std::fs::OpenOptions::new();
                options.write(true).create(true).truncate(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
                let mut file = options.open(&tmp).map_err(|e| err(e.to_string()))?;
                file.write_all(&key).map_err(|e| err(e.to_string()))?;
                file.sync_all().map_err(|e| err(e.to_string()))?;
                let linked = std::fs::hard_link(&tmp, path);
                let _ = std::fs::remove_file(&tmp);
                match linked {
                    Ok(()) => key.to_vec(),
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        std::fs::read(path).map_err(|e| err(e.to_string()))?
                    }
                    Err(e) => return Err(err(e.to_string())),
                }
            }
            Err(e) => return Err(err(e.to_string())),
        };
        let cipher = Aes256Gcm::new_from_slice(&bytes)
            .map_err(|_| err(format!("holds {} bytes, a key is 32", bytes.len())))?;
        Ok(SecretBox { cipher })
    }

    /// nonce ‖ ciphertext+tag. `context` (e.g. the secret's name) is bound as associated data, so
    /// a sealed value cannot be moved to another name.
    pub fn seal(&self, plaintext: &[u8], context: &str) -> Vec<u8> {
        let nonce = Nonce::<Aes256Gcm>::generate();
        let sealed = self
            .cipher
            .encrypt(
                &nonce,
                aes_gcm::aead::Payload {
                    msg: plaintext,
                    aad: context.as_bytes(),
                },
            )
            .expect("AES-GCM seals any message below 64 GiB");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        out
    }

    pub fn open(&self, sealed: &[u8], context: &str) -> Result<Vec<u8>, CryptoError> {
        if sealed.len() < NONCE_LEN {
            return Err(CryptoError::Open);
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::<Aes256Gcm>::try_from(nonce).map_err(|_| CryptoError::Open)?;
        self.cipher
            .decrypt(
                &nonce,
                aes_gcm::aead::Payload {
                    msg: ciphertext,
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| CryptoError::Open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_with_fresh_nonces_and_bound_context() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        let b = SecretBox::load_or_create(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let a = b.seal(b"s3cret", "default/app/token");
        let again = b.seal(b"s3cret", "default/app/token");
        assert_ne!(a, again, "a fresh nonce each time");
        assert!(!a.windows(6).any(|w| w == b"s3cret"));
        assert_eq!(b.open(&a, "default/app/token").unwrap(), b"s3cret");
        assert!(
            b.open(&a, "default/other/token").is_err(),
            "context is bound"
        );
        let mut tampered = a.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(b.open(&tampered, "default/app/token").is_err());
        // The same key file opens it again; another key does not.
        let same = SecretBox::load_or_create(&path).unwrap();
        assert_eq!(same.open(&a, "default/app/token").unwrap(), b"s3cret");
        let other = SecretBox::load_or_create(&dir.path().join("other")).unwrap();
        assert!(other.open(&a, "default/app/token").is_err());
    }
}
