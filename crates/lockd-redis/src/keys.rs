//! Redis key names: one layout, injective by construction, with every key of
//! a resource in one Redis Cluster slot.
//!
//! Every key is `<prefix>:{<bucket>}:<kind>` or `<prefix>:{<bucket>}:<kind>:<name>`:
//! - `<prefix>` is `--key-prefix` with `%`, `:`, `{` and `}` percent-encoded,
//!   so the first `:` of a key ends the prefix and the first `{` opens the hash
//!   tag: no prefix can be the start of another deployment's keys.
//! - `<bucket>` is three hex digits, [`bucket`] of the name (of the resource or
//!   client id), and is the whole hash tag: a resource's keys, the statistics,
//!   token floor and due index of its bucket share one slot, so each script
//!   updates all of them atomically.
//! - `<kind>` is one letter saying what the key is; the name, when there is
//!   one, is everything after the second `:` following the tag, verbatim.
//!
//! Reading a key back is therefore unambiguous ([`parse`]), which is what makes
//! the layout injective: two different (prefix, kind, name) never give one key.

use std::fmt::Write as _;

/// Buckets keys are spread over. Part of the on-disk layout: changing it
/// moves every key, so it is a constant, not a flag.
pub const BUCKETS: u16 = 256;

/// What a key holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Holders of a resource: secret to holder record.
    Holders,
    /// Holders of a resource by when their leases end.
    Expiries,
    /// Queue order of a resource: waiter secret scored by arrival.
    Queue,
    /// Waiter records of a resource.
    Waiters,
    /// Daemons with waiters or undelivered grants on a resource, and their ledger.
    Daemons,
    /// Grants of a resource not yet taken over by their waiter's daemon.
    Inbox,
    /// Requests of a resource cancelled before their acquire was seen.
    Cancelled,
    /// The lease index of one client id, for ListHeld.
    ClientIndex,
    /// A bucket's statistics counters and fencing-token floor.
    Stats,
    /// A bucket's grants per resource, for the top list.
    Top,
    /// A bucket's resources by when each next needs a sweep.
    Due,
    /// Which daemon reaps now (kept in bucket 0).
    Reaper,
    /// A daemon's probe of keyspace notifications (bucket 0), named by a
    /// tail unique to that daemon.
    Probe,
    /// The layout version of this prefix's keys (bucket 0).
    Layout,
}

impl Kind {
    const ALL: [Kind; 14] = [
        Kind::Holders,
        Kind::Expiries,
        Kind::Queue,
        Kind::Waiters,
        Kind::Daemons,
        Kind::Inbox,
        Kind::Cancelled,
        Kind::ClientIndex,
        Kind::Stats,
        Kind::Top,
        Kind::Due,
        Kind::Reaper,
        Kind::Probe,
        Kind::Layout,
    ];

    fn letter(self) -> char {
        match self {
            Kind::Holders => 'h',
            Kind::Expiries => 'e',
            Kind::Queue => 'q',
            Kind::Waiters => 'w',
            Kind::Daemons => 'd',
            Kind::Inbox => 'g',
            Kind::Cancelled => 'k',
            Kind::ClientIndex => 'c',
            Kind::Stats => 's',
            Kind::Top => 't',
            Kind::Due => 'u',
            Kind::Reaper => 'r',
            Kind::Probe => 'p',
            Kind::Layout => 'v',
        }
    }

    /// Whether keys of this kind carry a name after the letter.
    fn named(self) -> bool {
        !matches!(
            self,
            Kind::Stats | Kind::Top | Kind::Due | Kind::Reaper | Kind::Layout
        )
    }
}

/// The keys one resource's scripts work on, in the order the scripts take them
/// (`KEYS[1..10]` in common.lua).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceKeys {
    pub holders: String,
    pub expiries: String,
    pub queue: String,
    pub waiters: String,
    pub daemons: String,
    pub inbox: String,
    pub cancelled: String,
    pub stats: String,
    pub top: String,
    pub due: String,
}

impl ResourceKeys {
    /// The keys in script order.
    pub fn all(&self) -> [&str; 10] {
        [
            &self.holders,
            &self.queue,
            &self.waiters,
            &self.daemons,
            &self.inbox,
            &self.cancelled,
            &self.stats,
            &self.top,
            &self.due,
            &self.expiries,
        ]
    }
}

/// The version of this layout, kept in each prefix's [`Namespace::layout`] key.
pub const LAYOUT_VERSION: &str = "2";

/// Names keys under one prefix, so that several deployments can share a Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    /// The encoded prefix followed by `:`.
    head: String,
    /// The prefix as given, to find keys of the layout before this one.
    raw: String,
    db: i64,
}

impl Namespace {
    pub fn new(prefix: &str, db: i64) -> Namespace {
        let mut head = encode_prefix(prefix);
        head.push(':');
        Namespace {
            head,
            raw: prefix.to_owned(),
            db,
        }
    }

    fn key(&self, bucket: u16, kind: Kind, name: &str) -> String {
        let mut key = String::with_capacity(self.head.len() + 10 + name.len());
        key.push_str(&self.head);
        // Writing to a String cannot fail.
        let _ = write!(key, "{{{bucket:03x}}}:{}", kind.letter());
        if kind.named() {
            key.push(':');
            key.push_str(name);
        }
        key
    }

    /// The keys of one resource and of its bucket.
    pub fn resource(&self, resource: &str) -> ResourceKeys {
        let b = bucket(resource);
        ResourceKeys {
            holders: self.key(b, Kind::Holders, resource),
            expiries: self.key(b, Kind::Expiries, resource),
            queue: self.key(b, Kind::Queue, resource),
            waiters: self.key(b, Kind::Waiters, resource),
            daemons: self.key(b, Kind::Daemons, resource),
            inbox: self.key(b, Kind::Inbox, resource),
            cancelled: self.key(b, Kind::Cancelled, resource),
            stats: self.key(b, Kind::Stats, ""),
            top: self.key(b, Kind::Top, ""),
            due: self.key(b, Kind::Due, ""),
        }
    }

    /// The lease index of one client (candidates for ListHeld), in its own bucket.
    pub fn client_index(&self, client_id: &str) -> String {
        self.key(bucket(client_id), Kind::ClientIndex, client_id)
    }

    /// A bucket's statistics hash.
    pub fn stats(&self, bucket: u16) -> String {
        self.key(bucket, Kind::Stats, "")
    }

    /// A bucket's top-resources sorted set.
    pub fn top(&self, bucket: u16) -> String {
        self.key(bucket, Kind::Top, "")
    }

    /// A bucket's due index.
    pub fn due(&self, bucket: u16) -> String {
        self.key(bucket, Kind::Due, "")
    }

    /// The claim of the daemon that reaps now.
    pub fn reaper(&self) -> String {
        self.key(0, Kind::Reaper, "")
    }

    /// The layout version marker of this prefix.
    pub fn layout(&self) -> String {
        self.key(0, Kind::Layout, "")
    }

    /// The statistics key of the layout before buckets (`<prefix>:{stats}`):
    /// it exists wherever that layout ever served a lock.
    pub fn previous_layout_stats(&self) -> String {
        format!("{}:{{stats}}", self.raw)
    }

    /// The key a daemon writes to prove that keyspace notifications arrive.
    pub fn probe(&self, tail: &str) -> String {
        self.key(0, Kind::Probe, tail)
    }

    /// The keyspace notification channel of a key.
    pub fn keyspace_channel(&self, key: &str) -> String {
        format!("__keyspace@{}__:{key}", self.db)
    }
}

/// The bucket of a resource name or client id: 32-bit FNV-1a of its bytes.
/// Part of the on-disk layout, like [`BUCKETS`].
pub fn bucket(name: &str) -> u16 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in name.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    (hash % u32::from(BUCKETS)) as u16
}

/// The prefix with the characters that delimit keys percent-encoded.
fn encode_prefix(prefix: &str) -> String {
    let mut out = String::with_capacity(prefix.len());
    for c in prefix.chars() {
        match c {
            '%' => out.push_str("%25"),
            ':' => out.push_str("%3A"),
            '{' => out.push_str("%7B"),
            '}' => out.push_str("%7D"),
            c => out.push(c),
        }
    }
    out
}

/// A key read back into what it names: (encoded prefix, bucket, kind, name).
/// The inverse of [`Namespace`]'s naming; it exists to prove injectivity.
pub fn parse(key: &str) -> Option<(&str, u16, Kind, &str)> {
    let (prefix, rest) = key.split_once(':')?;
    let rest = rest.strip_prefix('{')?;
    let (tag, rest) = rest.split_once('}')?;
    if tag.len() != 3 {
        return None;
    }
    let bucket = u16::from_str_radix(tag, 16).ok()?;
    let rest = rest.strip_prefix(':')?;
    let mut chars = rest.chars();
    let letter = chars.next()?;
    let kind = Kind::ALL.into_iter().find(|k| k.letter() == letter)?;
    let after = chars.as_str();
    let name = if kind.named() {
        after.strip_prefix(':')?
    } else if after.is_empty() {
        ""
    } else {
        return None;
    };
    Some((prefix, bucket, kind, name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What Redis Cluster hashes: the text between the first `{` and the next `}`.
    fn cluster_tag(key: &str) -> &str {
        let open = key.find('{').unwrap();
        let close = key[open + 1..].find('}').unwrap() + open + 1;
        &key[open + 1..close]
    }

    fn decode_prefix(encoded: &str) -> String {
        encoded
            .replace("%3A", ":")
            .replace("%7B", "{")
            .replace("%7D", "}")
            .replace("%25", "%")
    }

    #[test]
    fn the_examples_of_the_review_no_longer_collide() {
        let ns = Namespace::new("lockd", 0);
        let stats_resource = ns.resource("stats");
        for b in 0..BUCKETS {
            assert!(!stats_resource.holders.eq(&ns.stats(b)));
        }
        let a = Namespace::new("a", 0);
        let ac = Namespace::new("a:c", 0);
        assert_ne!(a.client_index("T"), ac.resource("T").holders);
        assert!(!ac.resource("T").holders.starts_with("a:"));
    }

    #[test]
    fn all_keys_of_a_resource_share_one_tag() {
        let ns = Namespace::new("lo{ck}d", 0);
        for name in ["orders/1", "{x}", "a}b{c", "%7B", "}", ""] {
            let keys = ns.resource(name);
            let tags: Vec<&str> = keys.all().iter().map(|k| cluster_tag(k)).collect();
            assert!(
                tags.iter().all(|t| *t == tags[0] && t.len() == 3),
                "{name}: {tags:?}"
            );
        }
    }

    fn kind_strategy() -> impl Strategy<Value = Kind> {
        prop::sample::select(Kind::ALL.to_vec())
    }

    /// Names the layout can be asked for: resource names and client ids are
    /// arbitrary strings here, wider than validation allows.
    fn name_strategy() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            "[a-z:{}%/]{0,8}",
            Just(String::new()),
            Just("stats".to_owned()),
        ]
    }

    proptest! {
        #[test]
        fn keys_read_back_to_what_they_name(
            prefix in "[a-z:{}%]{0,6}|\\PC{0,6}",
            kind in kind_strategy(),
            name in name_strategy(),
        ) {
            let ns = Namespace::new(&prefix, 0);
            let b = bucket(&name);
            let key = ns.key(b, kind, &name);
            let (encoded, parsed_bucket, parsed_kind, parsed_name) =
                parse(&key).expect("every key parses");
            prop_assert_eq!(decode_prefix(encoded), prefix);
            prop_assert_eq!(parsed_bucket, b);
            prop_assert_eq!(parsed_kind, kind);
            let expected = if kind.named() { name.as_str() } else { "" };
            prop_assert_eq!(parsed_name, expected);
            prop_assert_eq!(cluster_tag(&key).len(), 3);
        }

        #[test]
        fn distinct_inputs_give_distinct_keys(
            p1 in "[a:{}%]{0,4}", p2 in "[a:{}%]{0,4}",
            k1 in kind_strategy(), k2 in kind_strategy(),
            n1 in "[a:{}%]{0,4}", n2 in "[a:{}%]{0,4}",
        ) {
            let key1 = Namespace::new(&p1, 0).key(bucket(&n1), k1, &n1);
            let key2 = Namespace::new(&p2, 0).key(bucket(&n2), k2, &n2);
            let same_input = p1 == p2 && k1 == k2 && (!k1.named() || n1 == n2)
                && (k1.named() || bucket(&n1) == bucket(&n2));
            prop_assert_eq!(key1 == key2, same_input);
        }
    }

    #[test]
    fn buckets_spread_names() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..10_000 {
            seen.insert(bucket(&format!("orders/{i}")));
        }
        assert_eq!(seen.len(), BUCKETS as usize);
    }
}
