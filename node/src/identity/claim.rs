//! [`ClaimedIdentity`]: a key file one running node holds, so that two nodes never share a key.
//!
//! Two processes with one key are one node id twice: each refuses the other as itself, the
//! mailbox and the overlay see one node where there are two. So a node *claims* its key file:
//! it loads (or creates) it and holds an exclusive advisory lock on it (`flock`) for as long
//! as it runs. A second node given the same file is refused with the path in the error.
//!
//! The default file ([`default_dir`]`/identity`) is for the usual case of one node per
//! account; when several nodes run under one account without `--identity` (a lab, a test, a
//! demo with several nodes on one host), the second takes `identity-2`, the third
//! `identity-3`, and so on ([`ClaimedIdentity::claim_default`]): each keeps a key of its own,
//! and each file is reused by the next node that finds it free.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};

use super::{Identity, IdentityError};

/// File name of the default identity in [`default_dir`].
pub const DEFAULT_FILE_NAME: &str = "identity";
/// Most default identity files tried (`identity`, `identity-2`, ... `identity-64`).
pub const MAX_DEFAULT_SLOTS: usize = 64;

/// Where identities live by default: `$XDG_DATA_HOME/p2p-node`, else
/// `$HOME/.local/share/p2p-node`; `None` when neither variable is set.
pub fn default_dir() -> Option<PathBuf> {
    let var = |name| std::env::var_os(name).filter(|v| !v.is_empty());
    var("XDG_DATA_HOME")
        .map(|d| PathBuf::from(d).join("p2p-node"))
        .or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".local/share/p2p-node")))
}

/// An identity loaded from (or created in) a key file that this process holds locked.
/// Dropping it releases the file for the next node.
#[derive(Debug)]
pub struct ClaimedIdentity {
    identity: Identity,
    path: PathBuf,
    /// Holds the lock (released when the file is closed).
    _lock: File,
}

impl ClaimedIdentity {
    /// Loads or creates the key file `path` (mode 0600, see [`Identity::load_or_create`])
    /// and locks it; [`IdentityError::InUse`] when another process holds it.
    pub fn claim(path: impl AsRef<Path>) -> Result<ClaimedIdentity, IdentityError> {
        let path = path.as_ref();
        let identity = Identity::load_or_create(path)?;
        let lock = File::open(path).map_err(|source| IdentityError::Io {
            path: path.to_owned(),
            action: "open it to lock it",
            source,
        })?;
        match lock.try_lock() {
            Ok(()) => Ok(ClaimedIdentity {
                identity,
                path: path.to_owned(),
                _lock: lock,
            }),
            Err(fs::TryLockError::WouldBlock) => Err(IdentityError::InUse {
                path: path.to_owned(),
            }),
            Err(fs::TryLockError::Error(source)) => Err(IdentityError::Io {
                path: path.to_owned(),
                action: "lock it",
                source,
            }),
        }
    }

    /// Claims the first free default identity in `dir` (created with mode 0700 if missing):
    /// `identity`, then `identity-2`, ... up to [`MAX_DEFAULT_SLOTS`].
    pub fn claim_default(dir: impl AsRef<Path>) -> Result<ClaimedIdentity, IdentityError> {
        let dir = dir.as_ref();
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| IdentityError::Io {
                path: dir.to_owned(),
                action: "create the directory",
                source,
            })?;
        let mut last = None;
        for slot in 1..=MAX_DEFAULT_SLOTS {
            let name = if slot == 1 {
                DEFAULT_FILE_NAME.to_owned()
            } else {
                format!("{DEFAULT_FILE_NAME}-{slot}")
            };
            match ClaimedIdentity::claim(dir.join(name)) {
                Err(e @ IdentityError::InUse { .. }) => last = Some(e),
                other => return other,
            }
        }
        Err(last.unwrap_or_else(|| IdentityError::Io {
            path: dir.to_owned(),
            action: "find a free identity file",
            source: io::ErrorKind::NotFound.into(),
        }))
    }

    /// The identity.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The key file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn a_claimed_file_is_refused_to_a_second_claimer_and_free_after_drop() {
        let dir = std::env::temp_dir().join(format!(
            "p2p-claim-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let path = dir.join("key");
        fs::create_dir_all(&dir).unwrap();
        let first = ClaimedIdentity::claim(&path).unwrap();
        let err = ClaimedIdentity::claim(&path).unwrap_err();
        assert!(matches!(err, IdentityError::InUse { .. }), "{err}");
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
        let key = first.identity().key();
        drop(first);
        let again = ClaimedIdentity::claim(&path).unwrap();
        assert_eq!(again.identity().key(), key, "the same key once released");

        // Default slots: each claimer gets its own file, the first free one.
        let defaults = dir.join("defaults");
        let a = ClaimedIdentity::claim_default(&defaults).unwrap();
        let b = ClaimedIdentity::claim_default(&defaults).unwrap();
        let c = ClaimedIdentity::claim_default(&defaults).unwrap();
        assert_eq!(a.path(), defaults.join("identity"));
        assert_eq!(b.path(), defaults.join("identity-2"));
        assert_eq!(c.path(), defaults.join("identity-3"));
        assert_ne!(a.identity().key(), b.identity().key());
        let b_key = b.identity().key();
        drop(b);
        let d = ClaimedIdentity::claim_default(&defaults).unwrap();
        assert_eq!(d.path(), defaults.join("identity-2"));
        assert_eq!(d.identity().key(), b_key);
        let mode = fs::metadata(&defaults).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        drop((a, c, d, again));
        fs::remove_dir_all(&dir).unwrap();
    }
}
