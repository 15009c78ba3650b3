//! Lock modes and which of them may hold a resource together.

use std::fmt;
use std::str::FromStr;

/// How a lease holds its resource.
///
/// `Shared` and `Read` form the *shared class*: any number of them may hold a
/// resource together. `Exclusive` and `Write` are compatible with nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LockMode {
    Exclusive,
    Shared,
    Read,
    Write,
}

impl LockMode {
    /// Every mode, in the order of their wire codes.
    pub const ALL: [LockMode; 4] = [
        LockMode::Exclusive,
        LockMode::Shared,
        LockMode::Read,
        LockMode::Write,
    ];

    /// Whether holders of this mode may share the resource with other shared-class holders.
    pub fn is_shared_class(self) -> bool {
        matches!(self, LockMode::Shared | LockMode::Read)
    }

    /// Whether a request in `self` may be granted next to a holder in `held`.
    pub fn is_compatible_with(self, held: LockMode) -> bool {
        self.is_shared_class() && held.is_shared_class()
    }

    /// The code used in the proto enum and in Redis records (1..=4).
    pub fn code(self) -> u8 {
        match self {
            LockMode::Exclusive => 1,
            LockMode::Shared => 2,
            LockMode::Read => 3,
            LockMode::Write => 4,
        }
    }

    /// The mode for a wire code; 0 (unspecified) means exclusive.
    pub fn from_code(code: i32) -> Option<LockMode> {
        match code {
            0 | 1 => Some(LockMode::Exclusive),
            2 => Some(LockMode::Shared),
            3 => Some(LockMode::Read),
            4 => Some(LockMode::Write),
            _ => None,
        }
    }

    /// The lowercase name used in stats keys, JSON and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            LockMode::Exclusive => "exclusive",
            LockMode::Shared => "shared",
            LockMode::Read => "read",
            LockMode::Write => "write",
        }
    }

    /// Index into per-mode arrays (0..4).
    pub fn index(self) -> usize {
        usize::from(self.code() - 1)
    }
}

impl fmt::Display for LockMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for LockMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "exclusive" | "x" => Ok(LockMode::Exclusive),
            "shared" | "s" => Ok(LockMode::Shared),
            "read" | "r" => Ok(LockMode::Read),
            "write" | "w" => Ok(LockMode::Write),
            other => Err(format!(
                "unknown mode {other:?}: expected exclusive, shared, read or write"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_class_modes_share_with_each_other_only() {
        use LockMode::*;
        for a in LockMode::ALL {
            for b in LockMode::ALL {
                let expected = matches!(a, Shared | Read) && matches!(b, Shared | Read);
                assert_eq!(a.is_compatible_with(b), expected, "{a} with {b}");
            }
        }
    }

    #[test]
    fn codes_round_trip_and_zero_means_exclusive() {
        for m in LockMode::ALL {
            assert_eq!(LockMode::from_code(i32::from(m.code())), Some(m));
            assert_eq!(m.as_str().parse::<LockMode>(), Ok(m));
        }
        assert_eq!(LockMode::from_code(0), Some(LockMode::Exclusive));
        assert_eq!(LockMode::from_code(5), None);
        assert!("bogus".parse::<LockMode>().is_err());
    }
}
