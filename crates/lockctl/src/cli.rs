//! The command line: global flags and one subcommand struct per command.

use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use lockd_client::Mode;

/// Printed after `--help`: what the exit status of lockctl means.
const EXIT_CODES: &str = "\
Exit status:
  0    success
  1    unexpected error
  2    bad usage, or a value the daemon refused (INVALID_ARGUMENT)
  3    the daemon is unreachable (UNAVAILABLE)
  4    no such lock: unknown, released or expired (NOT_FOUND)
  5    the lock belongs to another client id (PERMISSION_DENIED)
  6    the lock was not granted within --wait (DEADLINE_EXCEEDED)
  7    the renewal limit was reached (FAILED_PRECONDITION)
  8    a daemon limit was reached, such as the queue length (RESOURCE_EXHAUSTED)
  9    run: the lease was lost while COMMAND ran; COMMAND was sent SIGTERM
  10   health: the service is not SERVING
  126  run: COMMAND could not be executed
  127  run: COMMAND was not found
  130  interrupted while waiting for the lock
  Otherwise `run` exits with COMMAND's own status (128+N if a signal N killed it).";

/// Take, inspect and release lockd locks, and run commands while holding one.
#[derive(Debug, Parser)]
#[command(name = "lockctl", version, after_help = EXIT_CODES)]
pub struct Cli {
    /// Address of the lockd daemon: host:port or http://host:port. https://
    /// is refused: TLS is not supported yet.
    #[arg(
        long,
        env = "LOCKD_ENDPOINT",
        default_value = "127.0.0.1:50051",
        global = true
    )]
    pub endpoint: String,

    /// Print JSON on stdout instead of text (one object per result; one per
    /// line for `watch`).
    #[arg(long, global = true)]
    pub json: bool,

    /// Client id presented to the daemon; release and renew must present the
    /// one the lock was taken with [default: <user>@<hostname>].
    #[arg(long, env = "LOCKD_CLIENT_ID", global = true)]
    pub client_id: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Take a lease and print it; it lasts until its ttl runs out, or until
    /// `renew` or `release` with the same client id.
    Acquire(AcquireArgs),
    /// End a lease.
    Release {
        /// The lock_id printed by `acquire`.
        // Lock ids are base64url, so one in 64 starts with '-'.
        #[arg(allow_hyphen_values = true)]
        lock_id: String,
    },
    /// Extend a lease to now + ttl.
    Renew {
        /// The lock_id printed by `acquire`.
        // Lock ids are base64url, so one in 64 starts with '-'.
        #[arg(allow_hyphen_values = true)]
        lock_id: String,
        /// New time to live, e.g. 30s or 1500ms [default: the lease's own ttl].
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<Duration>,
    },
    /// Show a live lease by its lock_id.
    Status {
        /// The lock_id printed by `acquire`.
        // Lock ids are base64url, so one in 64 starts with '-'.
        #[arg(allow_hyphen_values = true)]
        lock_id: String,
    },
    /// List the live leases of a client id.
    Held {
        /// Whose leases [default: this lockctl's client id].
        client_id: Option<String>,
    },
    /// Show the holders and waiters of a resource.
    Queue {
        /// The resource name.
        resource: String,
    },
    /// Show deployment-wide statistics.
    Stats,
    /// Ask the gRPC health service; exits 10 unless the answer is SERVING.
    Health {
        /// Service to ask about; empty means the daemon as a whole.
        #[arg(long, default_value = "")]
        service: String,
    },
    /// Wait for a lock, run COMMAND while holding it, then release it.
    ///
    /// The lease is renewed every third of its ttl while COMMAND runs.
    /// COMMAND gets LOCKD_LOCK_ID, LOCKD_FENCING_TOKEN and LOCKD_RESOURCE in
    /// its environment. lockctl exits with COMMAND's status. If the lease is
    /// lost, COMMAND is sent SIGTERM (SIGKILL after --grace) and lockctl exits 9.
    /// SIGTERM, SIGHUP and SIGINT sent to lockctl are passed on to COMMAND.
    ///
    /// COMMAND never outlives the lease: it runs in a process group of its
    /// own (the terminal's foreground group, when lockctl has the terminal),
    /// whatever is left of that group is killed when COMMAND exits or is
    /// stopped, and the whole group is killed if lockctl itself dies, even
    /// by kill -9.
    Run(RunArgs),
    /// Show the holders and waiters of a resource, refreshed live until Ctrl-C.
    Watch {
        /// The resource name.
        resource: String,
        /// How often to refresh.
        #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
        interval: Duration,
    },
}

/// What to ask for when taking a lock.
#[derive(Debug, Args)]
pub struct LockArgs {
    /// The resource to lock.
    pub resource: String,

    /// Who else may hold the resource at the same time.
    #[arg(long, value_enum, default_value_t = ModeArg::Exclusive)]
    pub mode: ModeArg,

    /// Lease time to live, e.g. 30s or 1500ms [default: the daemon's, 30s].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub ttl: Option<Duration>,

    /// How long to wait in line; 0s means try once [default: the daemon's, 5s].
    /// A daemon that answers UNAVAILABLE (shutting down, or Redis not
    /// answering for a moment) is asked again within this time.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub wait: Option<Duration>,

    /// How many times the lease may be renewed [default: the daemon's limit].
    #[arg(long)]
    pub max_renewals: Option<u32>,
}

#[derive(Debug, Args)]
pub struct AcquireArgs {
    #[command(flatten)]
    pub lock: LockArgs,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub lock: LockArgs,

    /// After the lease is lost, how long COMMAND has to exit after SIGTERM
    /// before it is sent SIGKILL.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub grace: Duration,

    /// The command to run and its arguments (put `--` before it).
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true, num_args = 1..)]
    pub command: Vec<String>,
}

/// The lock modes, as command-line values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    /// One holder at a time.
    Exclusive,
    /// Any number of shared or read holders.
    Shared,
    /// Reader side of a read-write lock (like shared).
    Read,
    /// Writer side of a read-write lock (like exclusive).
    Write,
}

impl From<ModeArg> for Mode {
    fn from(mode: ModeArg) -> Self {
        match mode {
            ModeArg::Exclusive => Mode::Exclusive,
            ModeArg::Shared => Mode::Shared,
            ModeArg::Read => Mode::Read,
            ModeArg::Write => Mode::Write,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_takes_the_command_after_the_flags() {
        let cli = Cli::try_parse_from([
            "lockctl", "run", "res", "--ttl", "1500ms", "--mode", "shared", "--", "sh", "-c",
            "exit 3",
        ])
        .unwrap();
        let Command::Run(run) = cli.command else {
            panic!("not run")
        };
        assert_eq!(run.lock.resource, "res");
        assert_eq!(run.lock.ttl, Some(Duration::from_millis(1500)));
        assert_eq!(run.lock.mode, ModeArg::Shared);
        assert_eq!(run.command, ["sh", "-c", "exit 3"]);
    }

    #[test]
    fn global_flags_work_after_the_subcommand() {
        let cli = Cli::try_parse_from([
            "lockctl",
            "stats",
            "--json",
            "--endpoint",
            "http://localhost:9",
        ])
        .unwrap();
        assert!(cli.json);
        assert_eq!(cli.endpoint, "http://localhost:9");
    }

    #[test]
    fn a_lock_id_may_start_with_a_dash() {
        for command in ["release", "status", "renew"] {
            let cli = Cli::try_parse_from(["lockctl", command, "-Ux2_a", "--json"])
                .unwrap_or_else(|e| panic!("{command}: {e}"));
            let (Command::Release { lock_id }
            | Command::Status { lock_id }
            | Command::Renew { lock_id, .. }) = cli.command
            else {
                panic!("{command} parsed as another command")
            };
            assert_eq!(lock_id, "-Ux2_a");
            assert!(cli.json);
        }
    }

    #[test]
    fn bad_durations_are_refused() {
        assert!(Cli::try_parse_from(["lockctl", "acquire", "r", "--ttl", "soon"]).is_err());
    }
}
