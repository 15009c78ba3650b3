//! Validation of request fields against the limits a daemon is configured with.

use crate::error::LockError;
use crate::lease::AcquireSpec;
use crate::mode::LockMode;

/// Longest resource name, in bytes.
pub const MAX_RESOURCE_BYTES: usize = 512;
/// Longest client id, in bytes.
pub const MAX_CLIENT_ID_BYTES: usize = 256;

/// The limits and defaults that requests are checked against and filled from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// TTL used when a request says 0.
    pub default_ttl_ms: u64,
    /// Shortest TTL a request may ask for: a lease shorter than a few round
    /// trips would end before its holder could act on it.
    pub min_ttl_ms: u64,
    /// Largest TTL a request may ask for.
    pub max_ttl_ms: u64,
    /// Wait used when a request leaves it unset.
    pub default_wait_ms: u64,
    /// Longest wait a request may ask for.
    pub max_wait_ms: u64,
    /// Renewal limit used when a request says 0; 0 means unlimited.
    pub default_max_renewals: u32,
    /// Most waiters one resource may have; 0 means unlimited.
    pub max_queue: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            default_ttl_ms: 30_000,
            min_ttl_ms: 100,
            max_ttl_ms: 24 * 60 * 60 * 1000,
            default_wait_ms: 5_000,
            max_wait_ms: 60 * 60 * 1000,
            default_max_renewals: 0,
            max_queue: 100_000,
        }
    }
}

/// An acquire request as it arrives, before defaults are applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawAcquire<'a> {
    pub resource: &'a str,
    /// The proto enum value; 0 means exclusive.
    pub mode: i32,
    pub ttl_ms: u64,
    pub wait_timeout_ms: Option<u64>,
    pub client_id: &'a str,
    pub max_renewals: u32,
}

impl Limits {
    /// Checks an acquire request and fills in its defaults.
    pub fn acquire_spec(&self, raw: &RawAcquire<'_>) -> Result<AcquireSpec, LockError> {
        resource(raw.resource)?;
        client_id(raw.client_id)?;
        let mode = LockMode::from_code(raw.mode).ok_or_else(|| {
            LockError::invalid(
                "mode",
                format!("unknown lock mode {}; expected 0 to 4", raw.mode),
            )
        })?;
        let ttl_ms = self.ttl(raw.ttl_ms)?.unwrap_or(self.default_ttl_ms);
        let wait_ms = raw.wait_timeout_ms.unwrap_or(self.default_wait_ms);
        if wait_ms > self.max_wait_ms {
            return Err(LockError::invalid(
                "wait_timeout_ms",
                format!("{wait_ms} ms is over the limit of {} ms", self.max_wait_ms),
            ));
        }
        let max_renewals = if raw.max_renewals == 0 {
            self.default_max_renewals
        } else {
            raw.max_renewals
        };
        Ok(AcquireSpec {
            resource: raw.resource.to_owned(),
            mode,
            ttl_ms,
            wait_ms,
            client_id: raw.client_id.to_owned(),
            max_renewals,
        })
    }

    /// Checks a requested TTL; `None` means "keep the default or current one" (0).
    pub fn ttl(&self, ttl_ms: u64) -> Result<Option<u64>, LockError> {
        if ttl_ms == 0 {
            return Ok(None);
        }
        if ttl_ms > self.max_ttl_ms {
            return Err(LockError::invalid(
                "ttl_ms",
                format!("{ttl_ms} ms is over the limit of {} ms", self.max_ttl_ms),
            ));
        }
        if ttl_ms < self.min_ttl_ms {
            return Err(LockError::invalid(
                "ttl_ms",
                format!(
                    "{ttl_ms} ms is under the floor of {} ms (--min-ttl); 0 asks for the default",
                    self.min_ttl_ms
                ),
            ));
        }
        Ok(Some(ttl_ms))
    }
}

/// Checks a resource name.
pub fn resource(value: &str) -> Result<(), LockError> {
    name("resource", value, MAX_RESOURCE_BYTES)
}

/// Checks a client id.
pub fn client_id(value: &str) -> Result<(), LockError> {
    name("client_id", value, MAX_CLIENT_ID_BYTES)
}

/// Checks that a lock id was given; its contents are checked by [`crate::LockId::parse`].
pub fn lock_id(value: &str) -> Result<(), LockError> {
    if value.is_empty() {
        return Err(LockError::invalid("lock_id", "must not be empty"));
    }
    Ok(())
}

fn name(field: &'static str, value: &str, max: usize) -> Result<(), LockError> {
    if value.is_empty() {
        return Err(LockError::invalid(field, "must not be empty"));
    }
    if value.len() > max {
        return Err(LockError::invalid(
            field,
            format!("{} bytes is longer than {max}", value.len()),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(LockError::invalid(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw<'a>(resource: &'a str, client: &'a str) -> RawAcquire<'a> {
        RawAcquire {
            resource,
            mode: 0,
            ttl_ms: 0,
            wait_timeout_ms: None,
            client_id: client,
            max_renewals: 0,
        }
    }

    fn field_of(err: LockError) -> &'static str {
        match err {
            LockError::InvalidArgument { field, .. } => field,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn defaults_fill_zero_and_unset_fields() {
        let spec = Limits::default().acquire_spec(&raw("r", "c")).unwrap();
        assert_eq!(spec.mode, LockMode::Exclusive);
        assert_eq!(spec.ttl_ms, 30_000);
        assert_eq!(spec.wait_ms, 5_000);
        assert_eq!(spec.max_renewals, 0);
    }

    #[test]
    fn explicit_zero_wait_means_try_once() {
        let mut r = raw("r", "c");
        r.wait_timeout_ms = Some(0);
        assert_eq!(Limits::default().acquire_spec(&r).unwrap().wait_ms, 0);
    }

    #[test]
    fn each_bad_field_is_named() {
        let limits = Limits::default();
        assert_eq!(
            field_of(limits.acquire_spec(&raw("", "c")).unwrap_err()),
            "resource"
        );
        let long = "x".repeat(513);
        assert_eq!(
            field_of(limits.acquire_spec(&raw(&long, "c")).unwrap_err()),
            "resource"
        );
        assert_eq!(
            field_of(limits.acquire_spec(&raw("a\nb", "c")).unwrap_err()),
            "resource"
        );
        assert_eq!(
            field_of(limits.acquire_spec(&raw("r", "")).unwrap_err()),
            "client_id"
        );
        let long_client = "c".repeat(257);
        assert_eq!(
            field_of(limits.acquire_spec(&raw("r", &long_client)).unwrap_err()),
            "client_id"
        );
        let mut r = raw("r", "c");
        r.mode = 9;
        assert_eq!(field_of(limits.acquire_spec(&r).unwrap_err()), "mode");
        let mut r = raw("r", "c");
        r.ttl_ms = limits.max_ttl_ms + 1;
        assert_eq!(field_of(limits.acquire_spec(&r).unwrap_err()), "ttl_ms");
        let mut r = raw("r", "c");
        r.wait_timeout_ms = Some(limits.max_wait_ms + 1);
        assert_eq!(
            field_of(limits.acquire_spec(&r).unwrap_err()),
            "wait_timeout_ms"
        );
        assert_eq!(field_of(lock_id("").unwrap_err()), "lock_id");
    }

    #[test]
    fn limits_are_inclusive_and_utf8_is_counted_in_bytes() {
        let limits = Limits::default();
        let exact = "x".repeat(512);
        assert!(limits.acquire_spec(&raw(&exact, "c")).is_ok());
        // 171 three-byte characters are 513 bytes.
        let wide = "€".repeat(171);
        assert!(limits.acquire_spec(&raw(&wide, "c")).is_err());
        assert!(limits.acquire_spec(&raw("ünïcödé/ok", "c")).is_ok());
    }
}
