//! The node's identity: an Ed25519 key pair, kept in a file that only its owner can read.
//!
//! The public key names the node everywhere: its node id, mailbox name and overlay peer id are
//! derived from it ([`wire::key`]), its UNL v3 is signed with it, and every encrypted connection
//! proves it ([`crate::secure`]). Three ways to get one:
//!
//! - [`Identity::load_or_create`]: the key file (`--identity FILE`). Created on first run with
//!   mode 0600 (atomically: a half-written file is never seen under the name), and refused when
//!   it is readable or writable by group or others, with an error that names the path.
//! - [`Identity::from_secret_bytes`]: an application supplies its own key.
//! - [`Identity::ephemeral`]: a fresh key for this process only (a new node id every run), only
//!   when asked for.
//!
//! The file is one text line after comments: `ed25519-secret <64 hex digits>`. A running node
//! holds its file locked ([`ClaimedIdentity`]), so that two nodes never run with one key.
//!
//! ```no_run
//! use node::identity::Identity;
//!
//! let me = Identity::load_or_create("/var/lib/p2p/identity")?;
//! println!("node id {} key {}", me.node_id(), me.key());
//! # Ok::<(), node::identity::IdentityError>(())
//! ```

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};
use thiserror::Error;
use wire::key::{self, Context, PublicKey, SIGNATURE_BYTES, SigningKey};
use wire::overlay::PeerId;
use wire::unl::NodeId;

mod claim;

pub use claim::{ClaimedIdentity, DEFAULT_FILE_NAME, MAX_DEFAULT_SLOTS, default_dir};

/// The word before the hex secret in the key file.
const FILE_TAG: &str = "ed25519-secret";
/// Largest key file read (a few comment lines and the key).
const MAX_FILE_BYTES: u64 = 4096;

/// Why the identity could not be loaded or created. Each names the file.
#[derive(Debug, Error)]
pub enum IdentityError {
    /// Reading, creating or writing the file failed.
    #[error("identity file {path}: cannot {action}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done.
        action: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// Group or others may read or write it: the secret may have leaked, or may be replaced.
    #[error(
        "identity file {path} has mode {mode:04o}: group or others can read or write it; \
         run `chmod 600 {path}` if it is yours and no one else has read it, else delete it \
         to get a new identity"
    )]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// It is not a regular file, or is too large to be a key file.
    #[error("identity file {path} is not a key file: {detail}")]
    NotAKeyFile {
        /// The file.
        path: PathBuf,
        /// What it is instead.
        detail: String,
    },
    /// Another running process holds it (see [`ClaimedIdentity`]).
    #[error(
        "identity file {path} is in use by another running node: give this one its own \
         (--identity FILE), or stop the other"
    )]
    InUse {
        /// The file.
        path: PathBuf,
    },
    /// Its content is not `ed25519-secret <64 hex digits>`.
    #[error("identity file {path}, line {line}: {detail}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// The 1-based line (0: no key line at all).
        line: usize,
        /// What is wrong.
        detail: String,
    },
}

/// A node's key pair. `Debug` shows the public key only.
#[derive(Clone)]
pub struct Identity {
    secret: SigningKey,
    key: PublicKey,
}

impl Identity {
    /// The identity with this 32-byte Ed25519 secret (seed).
    pub fn from_secret_bytes(secret: &[u8; 32]) -> Identity {
        let secret = SigningKey::from_bytes(secret);
        let key = PublicKey::of(&secret);
        Identity { secret, key }
    }

    /// A fresh random identity, kept nowhere.
    pub fn ephemeral() -> Identity {
        Identity::from_secret_bytes(&rand::random())
    }

    /// The identity derived from `seed` (for tests and simulations that replay exactly:
    /// the secret is `SHA-256("p2p seeded identity v1" 0x00 ‖ seed)`, so anyone who knows the
    /// seed knows the key; never use it for a node that faces a network).
    pub fn from_seed(seed: u64) -> Identity {
        let mut hasher = Sha256::new();
        hasher.update(b"p2p seeded identity v1\0");
        hasher.update(seed.to_be_bytes());
        Identity::from_secret_bytes(&hasher.finalize().into())
    }

    /// A secret of `len` lowercase hex digits derived from the key and `label` (the password
    /// of a mailbox registered by name: stable across restarts with the same key, different
    /// per label, and telling nothing about the key).
    pub fn derived_secret(&self, label: &str, len: usize) -> String {
        let mut hasher = Sha256::new();
        hasher.update(b"p2p derived secret v1\0");
        hasher.update(self.secret.as_bytes());
        hasher.update(label.as_bytes());
        let digest = hasher.finalize();
        let mut text = hex(&digest);
        text.truncate(len.min(64));
        text
    }

    /// Loads the identity in `path`, or creates one there (mode 0600) when the file does not
    /// exist.
    pub fn load_or_create(path: impl AsRef<Path>) -> Result<Identity, IdentityError> {
        let path = path.as_ref();
        match Identity::load(path) {
            Err(IdentityError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                let fresh = Identity::ephemeral();
                match fresh.create(path) {
                    Ok(()) => Ok(fresh),
                    // Another process created it first: use theirs.
                    Err(IdentityError::Io { source, .. })
                        if source.kind() == io::ErrorKind::AlreadyExists =>
                    {
                        Identity::load(path)
                    }
                    Err(e) => Err(e),
                }
            }
            other => other,
        }
    }

    /// Loads the identity in `path`, refusing a file others can read or write.
    pub fn load(path: impl AsRef<Path>) -> Result<Identity, IdentityError> {
        let path = path.as_ref();
        let io_err = |action, source| IdentityError::Io {
            path: path.to_owned(),
            action,
            source,
        };
        let meta = fs::metadata(path).map_err(|e| io_err("read its metadata", e))?;
        if !meta.is_file() || meta.len() > MAX_FILE_BYTES {
            return Err(IdentityError::NotAKeyFile {
                path: path.to_owned(),
                detail: if meta.is_file() {
                    format!("{} bytes (limit {MAX_FILE_BYTES})", meta.len())
                } else {
                    "not a regular file".to_owned()
                },
            });
        }
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(IdentityError::Permissions {
                path: path.to_owned(),
                mode,
            });
        }
        let text = fs::read_to_string(path).map_err(|e| io_err("read it", e))?;
        Identity::parse(path, &text)
    }

    fn parse(path: &Path, text: &str) -> Result<Identity, IdentityError> {
        let malformed = |line, detail: String| IdentityError::Malformed {
            path: path.to_owned(),
            line,
            detail,
        };
        let mut found = None;
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if found.is_some() {
                return Err(malformed(i + 1, "a second key line".to_owned()));
            }
            let hex = line
                .strip_prefix(FILE_TAG)
                .and_then(|rest| rest.strip_prefix(' '))
                .ok_or_else(|| {
                    malformed(i + 1, format!("expected `{FILE_TAG} <64 hex digits>`"))
                })?;
            found = Some(parse_hex32(hex).ok_or_else(|| {
                malformed(
                    i + 1,
                    format!(
                        "expected 64 hex digits after `{FILE_TAG}`, got {} characters",
                        hex.len()
                    ),
                )
            })?);
        }
        let secret = found.ok_or_else(|| malformed(0, format!("no `{FILE_TAG}` line")))?;
        Ok(Identity::from_secret_bytes(&secret))
    }

    /// Writes this identity to a new file at `path` with mode 0600. Fails with
    /// `AlreadyExists` if there is one: it never replaces a key.
    pub fn create(&self, path: impl AsRef<Path>) -> Result<(), IdentityError> {
        let path = path.as_ref();
        let io_err = |action, source| IdentityError::Io {
            path: path.to_owned(),
            action,
            source,
        };
        // Written under a temporary name, then linked to the real one (which fails if it
        // exists), so the key file is either absent or complete.
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(format!(".tmp-{}", std::process::id()));
        let tmp = PathBuf::from(tmp);
        let _ = fs::remove_file(&tmp);
        let result = (|| {
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(|e| io_err("create it", e))?;
            let text = format!(
                "# p2p node identity (Ed25519). Whoever can read this file can be this node.\n\
                 # public key {}, node id {}\n{FILE_TAG} {}\n",
                self.key,
                self.node_id(),
                hex(self.secret.as_bytes())
            );
            file.write_all(text.as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(|e| io_err("write it", e))?;
            fs::hard_link(&tmp, path).map_err(|e| io_err("create it", e))
        })();
        let _ = fs::remove_file(&tmp);
        result
    }

    /// The public key.
    pub fn key(&self) -> PublicKey {
        self.key
    }

    /// The node id (derived from the key).
    pub fn node_id(&self) -> NodeId {
        self.key.node_id()
    }

    /// The overlay peer id (derived from the node id).
    pub fn peer_id(&self) -> PeerId {
        self.key.peer_id()
    }

    /// The secret key, to sign a UNL v3 ([`wire::unl::v3::UnlV3::sign`]) or a request
    /// ([`wire::signal`]).
    pub fn secret(&self) -> &SigningKey {
        &self.secret
    }

    /// Signs `msg` in `context`.
    pub fn sign(&self, context: Context, msg: &[u8]) -> [u8; SIGNATURE_BYTES] {
        key::sign(&self.secret, context, msg)
    }
}

/// Two identities are equal when their keys are (the secret determines the key).
impl PartialEq for Identity {
    fn eq(&self, other: &Identity) -> bool {
        self.key == other.key
    }
}

impl Eq for Identity {}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("key", &self.key)
            .field("node_id", &self.node_id())
            .finish_non_exhaustive()
    }
}

fn hex(bytes: &[u8]) -> String {
    use fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn parse_hex32(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory of its own under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            let dir = std::env::temp_dir().join(format!(
                "p2p-identity-{name}-{}-{}",
                std::process::id(),
                rand::random::<u32>()
            ));
            fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn created_on_first_run_with_mode_0600_then_loaded() {
        let dir = TempDir::new("create");
        let path = dir.0.join("id");
        let first = Identity::load_or_create(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = Identity::load_or_create(&path).unwrap();
        assert_eq!(again.key(), first.key());
        assert_eq!(again.secret().as_bytes(), first.secret().as_bytes());
        assert_eq!(again.node_id(), first.key().node_id());
        assert_eq!(again.peer_id(), first.key().peer_id());
        assert_eq!(
            fs::read_dir(&dir.0).unwrap().count(),
            1,
            "no temporary file left"
        );
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains(&first.node_id().to_string()));
        assert!(matches!(
            first.create(&path),
            Err(IdentityError::Io { source, .. }) if source.kind() == io::ErrorKind::AlreadyExists
        ));
    }

    #[test]
    fn a_file_others_can_read_or_write_is_refused() {
        let dir = TempDir::new("mode");
        let path = dir.0.join("id");
        Identity::ephemeral().create(&path).unwrap();
        for mode in [0o644, 0o620, 0o604, 0o660] {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            let err = Identity::load_or_create(&path).unwrap_err();
            assert!(
                matches!(err, IdentityError::Permissions { mode: m, .. } if m == mode),
                "{mode:o}: {err}"
            );
            let text = err.to_string();
            assert!(text.contains(&path.display().to_string()), "{text}");
            assert!(text.contains(&format!("{mode:04o}")), "{text}");
        }
        fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
        assert!(
            Identity::load(&path).is_ok(),
            "read-only for the owner is fine"
        );
    }

    #[test]
    fn malformed_files_name_path_and_line() {
        let dir = TempDir::new("bad");
        let path = dir.0.join("id");
        let cases = [
            ("", 0, "no `ed25519-secret` line"),
            ("# only a comment\n", 0, "no `ed25519-secret` line"),
            ("ed25519-secret 12\n", 1, "expected 64 hex digits"),
            ("\nrsa-secret 00\n", 2, "expected `ed25519-secret"),
            (
                &format!(
                    "{FILE_TAG} {}\n{FILE_TAG} {}\n",
                    "0".repeat(64),
                    "1".repeat(64)
                ),
                2,
                "a second key line",
            ),
        ];
        for (text, line, detail) in cases {
            let _ = fs::remove_file(&path);
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
            match Identity::load(&path) {
                Err(IdentityError::Malformed {
                    path: p,
                    line: l,
                    detail: d,
                }) => {
                    assert_eq!(p, path);
                    assert_eq!(l, line, "{text:?}");
                    assert!(d.contains(detail), "{text:?}: {d}");
                }
                other => panic!("{text:?}: {other:?}"),
            }
        }
        let err = Identity::load(dir.0.join("missing")).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
        assert!(matches!(
            Identity::load(&dir.0),
            Err(IdentityError::NotAKeyFile { .. })
        ));
    }

    #[test]
    fn supplied_and_ephemeral_keys() {
        let a = Identity::from_secret_bytes(&[7; 32]);
        assert_eq!(a.key(), PublicKey::of(&SigningKey::from_bytes(&[7; 32])));
        let sig = a.sign(Context::Broadcast, b"x");
        assert!(a.key().verify(Context::Broadcast, b"x", &sig).is_ok());
        assert_ne!(Identity::ephemeral().key(), Identity::ephemeral().key());
        let debug = format!("{a:?}");
        assert!(!debug.contains(&hex(a.secret().as_bytes())), "{debug}");
        assert!(debug.contains(&a.key().to_string()));
    }
}
