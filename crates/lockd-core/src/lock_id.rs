//! Lock ids: a secret that proves ownership plus the resource it belongs to.
//!
//! The resource travels inside the id so that Release, Renew and GetLock find
//! the resource's keys without any deployment-wide index, which Redis Cluster
//! could not update atomically with the resource's own keys.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// A parsed lock id: `<secret>.<base64url(resource)>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockId {
    /// 128 random bits, base64url: the part that proves ownership.
    pub secret: String,
    pub resource: String,
}

/// Length of an encoded secret (16 bytes in base64url without padding).
const SECRET_LEN: usize = 22;

impl LockId {
    /// A fresh lock id with a random secret for `resource`.
    pub fn generate(resource: &str) -> LockId {
        LockId {
            secret: URL_SAFE_NO_PAD.encode(uuid::Uuid::new_v4().as_bytes()),
            resource: resource.to_owned(),
        }
    }

    /// The lock id of an existing secret on `resource`.
    pub fn new(secret: impl Into<String>, resource: impl Into<String>) -> LockId {
        LockId {
            secret: secret.into(),
            resource: resource.into(),
        }
    }

    /// Parses a lock id; `None` means it cannot be one of ours (and so names no lock).
    pub fn parse(value: &str) -> Option<LockId> {
        let (secret, encoded) = value.split_once('.')?;
        if secret.len() != SECRET_LEN || URL_SAFE_NO_PAD.decode(secret).is_err() {
            return None;
        }
        let bytes = URL_SAFE_NO_PAD.decode(encoded).ok()?;
        let resource = String::from_utf8(bytes).ok()?;
        crate::validate::resource(&resource).ok()?;
        Some(LockId::new(secret, resource))
    }

    /// The wire form.
    pub fn encode(&self) -> String {
        format!("{}.{}", self.secret, URL_SAFE_NO_PAD.encode(&self.resource))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_any_valid_resource() {
        for resource in [
            "a",
            "orders/42",
            "{weird}.name",
            "ünï code",
            &"x".repeat(512),
        ] {
            let id = LockId::generate(resource);
            assert_eq!(id.secret.len(), SECRET_LEN);
            assert_eq!(LockId::parse(&id.encode()), Some(id));
        }
    }

    #[test]
    fn secrets_differ() {
        assert_ne!(LockId::generate("r").secret, LockId::generate("r").secret);
    }

    #[test]
    fn junk_is_not_a_lock_id() {
        for junk in [
            "",
            "nope",
            "a.b",
            "....",
            "AAAAAAAAAAAAAAAAAAAAAA.",
            "AAAAAAAAAAAAAAAAAAAAAA.!!",
        ] {
            assert_eq!(LockId::parse(junk), None, "{junk:?}");
        }
    }
}
