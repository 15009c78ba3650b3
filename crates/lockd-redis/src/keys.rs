//! Redis key names. Every key of one resource carries the resource's hash tag,
//! so each script touches a single Redis Cluster slot.

/// The five keys one resource's scripts work on, in the order the scripts take them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceKeys {
    pub holders: String,
    pub queue: String,
    pub waiters: String,
    pub daemons: String,
    pub inbox: String,
}

impl ResourceKeys {
    /// The keys in script order: KEYS[1..5].
    pub fn all(&self) -> [&str; 5] {
        [
            &self.holders,
            &self.queue,
            &self.waiters,
            &self.daemons,
            &self.inbox,
        ]
    }
}

/// Names keys under one prefix, so that several deployments can share a Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    prefix: String,
    db: i64,
}

impl Namespace {
    pub fn new(prefix: &str, db: i64) -> Namespace {
        Namespace {
            prefix: prefix.to_owned(),
            db,
        }
    }

    /// The keys of one resource: `<prefix>:{<tag>}` and `<prefix>:{<tag>}:<part>`.
    pub fn resource(&self, resource: &str) -> ResourceKeys {
        let base = format!("{}:{{{}}}", self.prefix, hash_tag(resource));
        ResourceKeys {
            queue: format!("{base}:q"),
            waiters: format!("{base}:w"),
            daemons: format!("{base}:d"),
            inbox: format!("{base}:g"),
            holders: base,
        }
    }

    /// The lease index of one client (a hint for ListHeld), in its own slot.
    pub fn client_index(&self, client_id: &str) -> String {
        format!("{}:c:{{{}}}", self.prefix, hash_tag(client_id))
    }

    /// The deployment-wide statistics counters.
    pub fn stats(&self) -> String {
        format!("{}:{{stats}}", self.prefix)
    }

    /// Grants per resource, for the top list.
    pub fn stats_top(&self) -> String {
        format!("{}:{{stats}}:top", self.prefix)
    }

    /// The keyspace notification channel of a key.
    pub fn keyspace_channel(&self, key: &str) -> String {
        format!("__keyspace@{}__:{key}", self.db)
    }
}

/// A hash tag for a name: braces would end or empty the tag, so they (and the
/// escape character) are percent-encoded. Distinct names give distinct tags.
pub fn hash_tag(name: &str) -> String {
    let mut tag = String::with_capacity(name.len());
    for c in name.chars() {
        match c {
            '%' => tag.push_str("%25"),
            '{' => tag.push_str("%7B"),
            '}' => tag.push_str("%7D"),
            c => tag.push(c),
        }
    }
    tag
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What Redis Cluster hashes: the text between the first `{` and the next `}`.
    fn cluster_tag(key: &str) -> &str {
        let open = key.find('{').unwrap();
        let close = key[open + 1..].find('}').unwrap() + open + 1;
        &key[open + 1..close]
    }

    #[test]
    fn all_keys_of_a_resource_share_one_tag() {
        let ns = Namespace::new("lockd", 0);
        for name in ["orders/1", "{x}", "a}b{c", "%7B", "}"] {
            let keys = ns.resource(name);
            let tags: Vec<&str> = keys.all().iter().map(|k| cluster_tag(k)).collect();
            assert!(
                tags.iter().all(|t| *t == tags[0] && !t.is_empty()),
                "{name}: {tags:?}"
            );
        }
    }

    #[test]
    fn distinct_names_get_distinct_tags() {
        let names = ["{", "%7B", "%257B", "}", "%7D", "a", "a}"];
        let tags: std::collections::HashSet<String> = names.iter().map(|n| hash_tag(n)).collect();
        assert_eq!(tags.len(), names.len());
    }
}
