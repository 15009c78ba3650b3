//! The testkit's starters for shell scripts such as `tests/run.sh`.
//!
//! Prints where the started processes listen, then keeps them until its
//! stdin closes.

use std::io::{Read, Write};

use lockd_testkit::{Lockd, RedisServer};

const USAGE: &str = "usage: lockd-testkit lockd-on-redis LOCKD_BIN
  Starts a redis-server and LOCKD_BIN on it (both on free loopback ports),
  prints the daemon's 127.0.0.1:PORT, and stops both when stdin closes.";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [command, bin] = args.as_slice() else {
        eprintln!("{USAGE}");
        std::process::exit(2);
    };
    if command != "lockd-on-redis" {
        eprintln!("{USAGE}");
        std::process::exit(2);
    }
    let redis = RedisServer::start();
    let daemon = Lockd::command(bin)
        .env("RUST_LOG", "warn")
        .args(&["--redis-url", &redis.url()])
        .start();
    let mut stdout = std::io::stdout();
    if writeln!(stdout, "{}", daemon.endpoint())
        .and_then(|()| stdout.flush())
        .is_err()
    {
        std::process::exit(1);
    }
    // Whoever started us is done when it closes our stdin (or exits); the
    // content does not matter.
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    drop(daemon);
    drop(redis);
}
