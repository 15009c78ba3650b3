//! The config file, boolean variables and `--print-config`, through the real binary.

use std::process::{Command, Output};

use lockd::config::Config;
use lockd_testkit::TempDir;

/// `lockd ARGS` with only the `LOCKD_*` variables given, so that the test
/// runner's own environment cannot change what the daemon reads.
fn lockd(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_lockd"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("LOCKD_") {
            command.env_remove(name);
        }
    }
    command
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run lockd")
}

/// The effective configuration `--print-config` reports, as a table.
fn printed(args: &[&str], env: &[(&str, &str)]) -> toml::Table {
    let mut all = args.to_vec();
    all.push("--print-config");
    let out = lockd(&all, env);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{args:?} {env:?}: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .parse()
        .unwrap_or_else(|e| panic!("--print-config is not TOML ({e}): {stdout}"))
}

/// `lockd --config FILE --print-config` with FILE holding `text`: its exit
/// status and stderr.
fn refused(dir: &TempDir, text: &str) -> (Option<i32>, String) {
    let path = dir.path().join("refused.toml");
    std::fs::write(&path, text).expect("write config");
    let out = lockd(
        &[
            "--config",
            path.to_str().expect("utf-8 path"),
            "--print-config",
        ],
        &[],
    );
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write(dir: &TempDir, name: &str, text: &str) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, text).expect("write config");
    path.to_str().expect("utf-8 path").to_owned()
}

fn get<'a>(table: &'a toml::Table, key: &str) -> &'a toml::Value {
    table
        .get(key)
        .unwrap_or_else(|| panic!("{key} missing from {table:?}"))
}

#[test]
fn flag_beats_env_beats_file_beats_default() {
    let dir = TempDir::new("config").expect("temp dir");
    let file = write(
        &dir,
        "lockd.toml",
        // Both spellings of a key work.
        "key-prefix = \"from-file\"\ndefault_ttl = \"20s\"\nmax_ttl = \"2h\"\nmax-queue = 7\n",
    );
    let env = [
        ("LOCKD_KEY_PREFIX", "from-env"),
        ("LOCKD_DEFAULT_TTL", "10s"),
    ];
    let config = printed(&["--config", &file, "--key-prefix", "from-flag"], &env);
    assert_eq!(get(&config, "key_prefix").as_str(), Some("from-flag"));
    assert_eq!(get(&config, "default_ttl").as_str(), Some("10s"));
    assert_eq!(get(&config, "max_ttl").as_str(), Some("2h"));
    assert_eq!(get(&config, "max_queue").as_integer(), Some(7));
    assert_eq!(get(&config, "max_wait").as_str(), Some("1h"), "the default");

    // Without the flag the variable wins; without both the file does.
    let config = printed(&["--config", &file], &env);
    assert_eq!(get(&config, "key_prefix").as_str(), Some("from-env"));
    let config = printed(&[], &[("LOCKD_CONFIG", &file)]);
    assert_eq!(get(&config, "key_prefix").as_str(), Some("from-file"));
    assert_eq!(get(&config, "default_ttl").as_str(), Some("20s"));
}

#[test]
fn the_library_reads_the_file_too() {
    let dir = TempDir::new("config").expect("temp dir");
    let file = write(&dir, "lockd.toml", "max_renewals = 3\ndev = true\n");
    let config = Config::try_load_from(["lockd", "--config", &file]).expect("loads");
    assert_eq!(config.max_renewals, 3);
    assert!(config.dev);
}

#[test]
fn booleans_take_the_usual_words() {
    for (value, dev) in [
        ("1", true),
        ("0", false),
        ("true", true),
        ("FALSE", false),
        ("yes", true),
        ("No", false),
        ("on", true),
        ("off", false),
    ] {
        let config = printed(
            &[],
            &[("LOCKD_DEV", value), ("LOCKD_LIST_HELD_INDEX", value)],
        );
        assert_eq!(
            get(&config, "dev").as_bool(),
            Some(dev),
            "LOCKD_DEV={value}"
        );
        assert_eq!(
            get(&config, "list_held_index").as_bool(),
            Some(dev),
            "LOCKD_LIST_HELD_INDEX={value}"
        );
    }
    assert_eq!(get(&printed(&["--dev"], &[]), "dev").as_bool(), Some(true));
    let off = printed(&["--list-held-index", "no"], &[]);
    assert_eq!(get(&off, "list_held_index").as_bool(), Some(false));

    let out = lockd(&["--print-config"], &[("LOCKD_DEV", "maybe")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--dev"));

    // A bare --dev and a variable both beat a file.
    let dir = TempDir::new("config").expect("temp dir");
    let on = write(&dir, "on.toml", "dev = true\n");
    let off = write(&dir, "off.toml", "dev = false\n");
    let config = printed(&["--config", &off, "--dev"], &[]);
    assert_eq!(get(&config, "dev").as_bool(), Some(true));
    let config = printed(&["--config", &on], &[("LOCKD_DEV", "0")]);
    assert_eq!(get(&config, "dev").as_bool(), Some(false));
}

#[test]
fn a_bad_file_is_refused_naming_the_key() {
    let dir = TempDir::new("config").expect("temp dir");
    for (text, named) in [
        ("max_tll = \"1h\"\n", vec!["unknown key `max_tll`"]),
        ("max-ttl = \"soon\"\n", vec!["key `max-ttl`", "soon"]),
        ("max_queue = -1\n", vec!["key `max_queue`"]),
        ("listen = 50051\n", vec!["key `listen`", "socket address"]),
        (
            "log_format = \"xml\"\n",
            vec!["key `log_format`", "text, json"],
        ),
        ("dev = \"maybe\"\n", vec!["key `dev`", "boolean"]),
        ("max_ttl = [\"1h\"]\n", vec!["key `max_ttl`", "array"]),
        (
            "max_ttl = \"1h\"\nmax-ttl = \"2h\"\n",
            vec!["`max-ttl`", "`max_ttl`"],
        ),
        ("config = \"other.toml\"\n", vec!["key `config`"]),
        ("max_ttl = \n", vec!["not valid TOML"]),
        // Checked as a whole, against each other, once merged.
        (
            "default_ttl = \"48h\"\n",
            vec!["--default-ttl 48h", "--max-ttl 5m"],
        ),
    ] {
        let (status, stderr) = refused(&dir, text);
        assert_eq!(status, Some(2), "{text:?}: {stderr}");
        for piece in named {
            assert!(stderr.contains(piece), "{text:?}: {piece:?} in {stderr}");
        }
    }
    // A relation the file breaks, the flags can mend.
    let file = write(&dir, "long.toml", "default_ttl = \"48h\"\n");
    let config = printed(&["--config", &file, "--max-ttl", "72h"], &[]);
    assert_eq!(get(&config, "default_ttl").as_str(), Some("48h"));

    let out = lockd(
        &["--config", "/nonexistent/lockd.toml", "--print-config"],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/lockd.toml"));
}

#[test]
fn print_config_masks_the_password_and_reads_back() {
    let url = "redis://app:hunter2@10.0.0.5:6380/2";
    let out = lockd(
        &[
            "--print-config",
            "--redis-url",
            url,
            "--http-listen",
            "127.0.0.1:9090",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!stdout.contains("hunter2"), "{stdout}");
    assert!(
        stdout.contains("redis_url = \"redis://app:***@10.0.0.5:6380/2\""),
        "{stdout}"
    );
    // What it prints is a config file that gives the same configuration.
    let dir = TempDir::new("config").expect("temp dir");
    let file = write(&dir, "printed.toml", &stdout);
    let again = lockd(&["--config", &file, "--print-config"], &[]);
    assert_eq!(String::from_utf8_lossy(&again.stdout), stdout);
}

#[test]
fn failover_defaults_are_safe_and_follow_the_url() {
    let single = printed(&[], &[]);
    assert_eq!(get(&single, "min_replicas_ack").as_integer(), Some(0));
    assert_eq!(get(&single, "failover_quarantine").as_str(), Some("5m"));
    assert_eq!(get(&single, "min_replicas_timeout").as_str(), Some("1s"));
    for url in [
        "redis+sentinel://127.0.0.1:26379,127.0.0.1:26380/mymaster",
        "redis+cluster://127.0.0.1:7000,127.0.0.1:7001",
    ] {
        let replicated = printed(&["--redis-url", url, "--max-ttl", "90s"], &[]);
        assert_eq!(
            get(&replicated, "min_replicas_ack").as_integer(),
            Some(1),
            "{url}"
        );
        // The quarantine follows the longest lease unless set.
        assert_eq!(
            get(&replicated, "failover_quarantine").as_str(),
            Some("90s"),
            "{url}"
        );
    }
    let traded = printed(
        &["--failover-quarantine", "0s", "--min-replicas-ack", "0"],
        &[("LOCKD_REDIS_URL", "redis+cluster://127.0.0.1:7000")],
    );
    assert_eq!(get(&traded, "min_replicas_ack").as_integer(), Some(0));
    assert_eq!(get(&traded, "failover_quarantine").as_str(), Some("0s"));
}
