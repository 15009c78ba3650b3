//! Deployment-wide statistics: the lock scripts count into their bucket's
//! hash as they change state, so totals are exact; reading them sums every
//! bucket.

use crate::conn::Lane;
use lockd_core::{LockMode, StatsDelta};

use crate::conn::Lanes;
use crate::error::StoreError;
use crate::keys::{BUCKETS, Namespace};

/// Top resources each bucket contributes: the deployment's top ten are
/// among the union of every bucket's top ten.
const TOP_PER_BUCKET: isize = lockd_core::stats::TOP_RESOURCES as isize;

/// Counter fields as common.lua writes them.
type Counters = Vec<(String, i64)>;

/// Sums every bucket's counters and merges their top lists.
pub async fn read(
    ns: &Namespace,
    lanes: &Lanes,
    conn: &mut Lane,
) -> Result<StatsDelta, StoreError> {
    let mut pipe = redis::pipe();
    for bucket in 0..BUCKETS {
        pipe.hgetall(ns.stats(bucket));
        pipe.zrevrange_withscores(ns.top(bucket), 0, TOP_PER_BUCKET - 1);
    }
    let replies: Vec<redis::Value> = lanes.bounded(pipe.query_async(conn)).await?;
    let mut totals = StatsDelta::default();
    for pair in replies.chunks(2) {
        let [fields, top] = pair else {
            return Err(StoreError::Reply("short statistics reply".to_owned()));
        };
        let fields: Vec<(String, String)> =
            redis::from_redis_value_ref(fields).map_err(parse_error)?;
        // `n` (the server that last wrote the bucket) is the one text field.
        let fields: Counters = fields
            .into_iter()
            .filter_map(|(field, value)| Some((field, value.parse().ok()?)))
            .collect();
        let top: Vec<(String, f64)> = redis::from_redis_value_ref(top).map_err(parse_error)?;
        add_bucket(&mut totals, fields);
        for (resource, n) in top {
            *totals.grants_by_resource.entry(resource).or_default() += n as u64;
        }
    }
    Ok(totals)
}

fn parse_error(err: impl std::fmt::Display) -> StoreError {
    StoreError::Reply(format!("statistics: {err}"))
}

/// Adds one bucket's fields, as common.lua writes them: `g<mode code>`
/// (grants), `r<code>`, `x<code>`, `a<code>` (holds released, expired and
/// abandoned), `hm` (their summed hold time) and `w` (waiting); `f` (the
/// token floor) and `q`, `o` (the quarantine's end, the token offset) are not counters. Live leases are grants less ended holds.
fn add_bucket(totals: &mut StatsDelta, fields: Counters) {
    for (field, n) in fields {
        let unsigned = n.max(0) as u64;
        if let Some((kind, code)) = field.split_at_checked(1)
            && let Some(i) = code
                .parse::<i32>()
                .ok()
                .and_then(LockMode::from_code)
                .map(LockMode::index)
        {
            let ended = match kind {
                "g" => {
                    totals.grants_by_mode[i] += unsigned;
                    totals.active_by_mode[i] += n;
                    continue;
                }
                "r" => &mut totals.released,
                "x" => &mut totals.expired,
                "a" => &mut totals.abandoned,
                _ => continue,
            };
            *ended += unsigned;
            totals.holds_ended += unsigned;
            totals.active_by_mode[i] -= n;
            continue;
        }
        match field.as_str() {
            "hm" => totals.hold_ms_sum += unsigned,
            "w" => totals.waiting += n,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_fields_add_up() {
        let mut totals = StatsDelta::default();
        let fields = |pairs: &[(&str, i64)]| -> Counters {
            pairs.iter().map(|(f, n)| ((*f).to_owned(), *n)).collect()
        };
        add_bucket(
            &mut totals,
            fields(&[("g1", 4), ("a1", 2), ("r1", 1), ("f", 99), ("w", 4)]),
        );
        add_bucket(&mut totals, fields(&[("g2", 1), ("x2", 0), ("w", -1)]));
        assert_eq!(totals.grants_by_mode, [4, 1, 0, 0]);
        assert_eq!(totals.active_by_mode, [1, 1, 0, 0]);
        assert_eq!(totals.abandoned, 2);
        assert_eq!(totals.released, 1);
        assert_eq!(totals.holds_ended, 3);
        assert_eq!(totals.waiting, 3);
    }
}
