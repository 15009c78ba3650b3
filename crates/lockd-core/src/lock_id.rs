//! Lock ids: a secret that proves ownership plus the resource it belongs to.
//!
//! The resource travels inside the id so that Release, Renew and GetLock find
//! the resource's keys without any deployment-wide index, which Redis Cluster
//! could not update atomically with the resource's own keys.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::error::LockError;

/// A parsed lock id: `<secret>.<base64url(resource)>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockId {
    /// 128 random bits, base64url: the part that proves ownership.
    pub secret: String,
    pub resource: String,
}

/// Length of an encoded secret (16 bytes in base64url without padding).
const SECRET_LEN: usize = 22;

fn invalid(reason: impl Into<String>) -> LockError {
    LockError::invalid("lock_id", reason)
}

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

    /// Parses a lock id. An error, INVALID_ARGUMENT on `lock_id`, says why
    /// lockd could not have issued it; a well-formed id may still name no lock.
    /// The reason never repeats the id, whose secret proves ownership.
    pub fn parse(value: &str) -> Result<LockId, LockError> {
        let (secret, encoded) = value
            .split_once('.')
            .ok_or_else(|| invalid("has no '.' between its secret and its resource"))?;
        if secret.len() != SECRET_LEN {
            return Err(invalid(format!(
                "its secret is {} bytes long, not {SECRET_LEN}",
                secret.len()
            )));
        }
        // Decoding rejects non-zero trailing bits, so every secret that passes
        // is the one encoding of its 16 bytes and the id round-trips.
        if URL_SAFE_NO_PAD.decode(secret).is_err() {
            return Err(invalid("its secret is not base64url"));
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(encoded)
            .map_err(|_| invalid("its resource is not base64url"))?;
        let resource =
            String::from_utf8(bytes).map_err(|_| invalid("its resource is not UTF-8"))?;
        crate::validate::resource(&resource).map_err(|err| match err {
            LockError::InvalidArgument { reason, .. } => {
                invalid(format!("its resource is invalid: {reason}"))
            }
            other => other,
        })?;
        Ok(LockId::new(secret, resource))
    }

    /// The wire form.
    pub fn encode(&self) -> String {
        format!("{}.{}", self.secret, URL_SAFE_NO_PAD.encode(&self.resource))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The reason a value is refused; panics if it parses.
    fn reason(value: &str) -> String {
        match LockId::parse(value) {
            Err(LockError::InvalidArgument { field, reason }) => {
                assert_eq!(field, "lock_id", "{value:?}");
                reason
            }
            other => panic!("{value:?}: expected an invalid lock_id, got {other:?}"),
        }
    }

    const SECRET: &str = "AAAAAAAAAAAAAAAAAAAAAA";

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
            assert_eq!(LockId::parse(&id.encode()), Ok(id));
        }
    }

    #[test]
    fn secrets_differ() {
        assert_ne!(LockId::generate("r").secret, LockId::generate("r").secret);
    }

    #[test]
    fn each_way_of_being_malformed_is_named() {
        let cases = [
            ("", "no '.'"),
            ("nope", "no '.'"),
            ("a.b", "secret is 1 bytes long, not 22"),
            ("....", "secret is 0 bytes long"),
            (&format!("{SECRET}A.cg"), "secret is 23 bytes long"),
            ("AAAAAAAAAAAAAAAAAAAA!!.cg", "secret is not base64url"),
            // Non-zero trailing bits: not the encoding lockd would make.
            ("AAAAAAAAAAAAAAAAAAAAAB.cg", "secret is not base64url"),
            (&format!("{SECRET}.!!"), "resource is not base64url"),
            (&format!("{SECRET}.cg=="), "resource is not base64url"),
            (&format!("{SECRET}.cg.cg"), "resource is not base64url"),
            (&format!("{SECRET}._w"), "resource is not UTF-8"),
            (
                &format!("{SECRET}."),
                "resource is invalid: must not be empty",
            ),
            (
                &format!("{SECRET}.YQpi"),
                "resource is invalid: must not contain control",
            ),
        ];
        for (value, expected) in cases {
            let reason = reason(value);
            assert!(reason.contains(expected), "{value:?}: {reason:?}");
        }
        let long = LockId::new(SECRET, "x".repeat(513)).encode();
        assert!(reason(&long).contains("longer than 512"));
    }

    #[test]
    fn the_reason_does_not_repeat_the_secret() {
        let id = LockId::generate("r");
        let value = format!("{}.!!", id.secret);
        assert!(!reason(&value).contains(&id.secret));
    }

    #[test]
    fn well_formed_ids_parse_whether_or_not_they_name_a_lock() {
        assert_eq!(
            LockId::parse(&format!("{SECRET}.cg")),
            Ok(LockId::new(SECRET, "r"))
        );
    }

    proptest! {
        #[test]
        fn whatever_parses_round_trips(value in any::<String>()) {
            if let Ok(id) = LockId::parse(&value) {
                prop_assert_eq!(id.encode(), value);
            }
        }

        #[test]
        fn id_shaped_strings_that_parse_round_trip(
            // Half of them real secrets, so that the resource part gets tried.
            secret in prop_oneof![
                any::<[u8; 16]>().prop_map(|bytes| URL_SAFE_NO_PAD.encode(bytes)),
                "[A-Za-z0-9_-]{21,23}",
            ],
            resource in "[A-Za-z0-9_=.-]{0,12}",
        ) {
            let value = format!("{secret}.{resource}");
            if let Ok(id) = LockId::parse(&value) {
                prop_assert_eq!(id.encode(), value);
            }
        }

        #[test]
        fn every_id_lockd_issues_parses(secret in any::<[u8; 16]>(), resource in "\\PC{1,64}") {
            let id = LockId::new(URL_SAFE_NO_PAD.encode(secret), resource);
            prop_assert_eq!(LockId::parse(&id.encode()), Ok(id));
        }
    }
}
