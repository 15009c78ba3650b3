//! lockd's Lua scripts, loaded once and run by SHA, and the argument head
//! every resource script shares (`common.lua`).

use lockd_core::LockMode;
use lockd_core::engine::{CANCEL_KEEP_MS, EXPIRE_LIMIT, GRANT_LIMIT, PURGE_LIMIT, WAIT_GRACE_MS};
use redis::{Script, ScriptInvocation};

use crate::keys::ResourceKeys;

/// How many resources each bucket keeps in its top list (twice this before trimming).
pub const TOP_KEEP: usize = 64;

/// A script and the name it is reported under.
pub struct Named {
    pub name: &'static str,
    pub script: Script,
}

/// Every script.
pub struct Scripts {
    pub acquire: Named,
    pub sync: Named,
    pub leave: Named,
    pub release: Named,
    pub renew: Named,
    pub sweep: Named,
    pub get: Named,
    pub queue: Named,
    pub held: Named,
    pub index: Named,
    pub reaper: Named,
    /// The pass over one bucket that notices a changed server (`bucket.lua`).
    pub bucket: Named,
    /// The shared-class mode codes, as common.lua takes them.
    shared_codes: String,
    /// How long a bucket grants nothing once its server changed (failover.lua).
    quarantine_ms: u64,
}

impl Scripts {
    /// The scripts, with `quarantine` as the time a bucket grants nothing
    /// after its server changed.
    pub fn new(quarantine: std::time::Duration) -> Scripts {
        let records = include_str!("../lua/records.lua");
        let failover = include_str!("../lua/failover.lua");
        let common = include_str!("../lua/common.lua");
        let with_common = |name, op: &str| Named {
            name,
            script: Script::new(&format!("{records}\n{failover}\n{common}\n{op}")),
        };
        // A read-only script's flags line must stay its first line.
        let reading_records = |name, source: &str| {
            let (flags, body) = source.split_once('\n').unwrap_or((source, ""));
            Named {
                name,
                script: Script::new(&format!("{flags}\n{records}\n{body}")),
            }
        };
        let alone = |name, source: &str| Named {
            name,
            script: Script::new(source),
        };
        let shared_codes = LockMode::ALL
            .iter()
            .filter(|m| m.is_shared_class())
            .map(|m| m.code().to_string())
            .collect::<Vec<_>>()
            .join(",");
        Scripts {
            acquire: with_common("acquire", include_str!("../lua/acquire.lua")),
            sync: with_common("sync", include_str!("../lua/sync.lua")),
            leave: with_common("leave", include_str!("../lua/leave.lua")),
            release: with_common("release", include_str!("../lua/release.lua")),
            renew: with_common("renew", include_str!("../lua/renew.lua")),
            sweep: with_common("sweep", include_str!("../lua/sweep.lua")),
            get: reading_records("get", include_str!("../lua/get.lua")),
            queue: reading_records("queue", include_str!("../lua/queue.lua")),
            held: alone("held", include_str!("../lua/held.lua")),
            index: alone("index", include_str!("../lua/index.lua")),
            reaper: alone("reaper", include_str!("../lua/reaper.lua")),
            bucket: Named {
                name: "bucket",
                script: Script::new(&format!(
                    "{failover}\n{}",
                    include_str!("../lua/bucket.lua")
                )),
            },
            shared_codes,
            quarantine_ms: u64::try_from(quarantine.as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// An invocation of a resource script: its keys and the shared argument
    /// head, to which the caller adds the script's own arguments. `known`:
    /// this daemon recorded every bucket's server already (failover.lua).
    pub fn resource_call<'a>(
        &'a self,
        named: &'a Named,
        resource: &str,
        keys: &ResourceKeys,
        known: bool,
    ) -> ScriptInvocation<'a> {
        let mut invocation = named.script.prepare_invoke();
        for key in keys.all() {
            invocation.key(key);
        }
        invocation
            .arg(resource)
            .arg(WAIT_GRACE_MS)
            .arg(CANCEL_KEEP_MS)
            .arg(PURGE_LIMIT)
            .arg(GRANT_LIMIT)
            .arg(EXPIRE_LIMIT)
            .arg(&self.shared_codes)
            .arg(TOP_KEEP)
            .arg(self.quarantine_ms)
            .arg(u8::from(known));
        invocation
    }

    /// An invocation of the bucket pass on the bucket whose statistics hash is `stats`.
    pub fn bucket_call<'a>(&'a self, stats: &str, known: bool) -> ScriptInvocation<'a> {
        let mut invocation = self.bucket.script.prepare_invoke();
        invocation
            .key(stats)
            .arg(self.quarantine_ms)
            .arg(u8::from(known));
        invocation
    }
}
