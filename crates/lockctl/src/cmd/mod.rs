//! One module per subcommand, each an `async fn run`; `dispatch` picks one.

mod acquire;
mod health;
mod held;
mod queue;
mod release;
mod renew;
mod run;
mod stats;
mod status;
mod watch;

use lockd_client::{Client, LockBuilder};

use crate::cli::{Cli, Command, LockArgs};
use crate::exit::Failure;
use crate::output::Output;

/// What every command needs: where the daemon is, who we are, how to print.
pub struct Ctx {
    pub endpoint: String,
    pub client_id: String,
    pub out: Output,
}

impl Ctx {
    /// Connects to the daemon, presenting this lockctl's client id.
    pub async fn connect(&self) -> Result<Client, Failure> {
        let client = Client::connect(&self.endpoint).await?;
        Ok(client.with_client_id(self.client_id.clone()))
    }
}

/// A lock request from the shared lock flags.
pub fn lock_request(client: &Client, args: &LockArgs) -> LockBuilder {
    let mut builder = client.lock(args.resource.clone()).mode(args.mode.into());
    if let Some(ttl) = args.ttl {
        builder = builder.ttl(ttl);
    }
    if let Some(wait) = args.wait {
        builder = builder.wait(wait);
    }
    if let Some(max) = args.max_renewals {
        builder = builder.max_renewals(max);
    }
    builder
}

/// Runs the chosen command; `Ok` carries the exit status.
pub async fn dispatch(cli: Cli) -> Result<u8, Failure> {
    let ctx = Ctx {
        endpoint: cli.endpoint,
        client_id: cli.client_id.unwrap_or_else(default_client_id),
        out: Output { json: cli.json },
    };
    match cli.command {
        Command::Acquire(args) => acquire::run(&ctx, args).await.map(|()| 0),
        Command::Release { lock_id } => release::run(&ctx, &lock_id).await.map(|()| 0),
        Command::Renew { lock_id, ttl } => renew::run(&ctx, &lock_id, ttl).await.map(|()| 0),
        Command::Status { lock_id } => status::run(&ctx, &lock_id).await.map(|()| 0),
        Command::Held { client_id } => held::run(&ctx, client_id).await.map(|()| 0),
        Command::Queue { resource } => queue::run(&ctx, &resource).await.map(|()| 0),
        Command::Stats => stats::run(&ctx).await.map(|()| 0),
        Command::Health { service } => health::run(&ctx, &service).await.map(|()| 0),
        Command::Run(args) => run::run(&ctx, args).await,
        Command::Watch { resource, interval } => {
            watch::run(&ctx, &resource, interval).await.map(|()| 0)
        }
    }
}

/// `<user>@<hostname>`: the same for every lockctl run by one user on one
/// machine, so that `lockctl release` works on what `lockctl acquire` took.
fn default_client_id() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .ok()
        .filter(|u| !u.is_empty() && !u.chars().any(char::is_control))
        .or_else(login_name)
        // SAFETY: getuid has no preconditions and cannot fail.
        .unwrap_or_else(|| format!("uid{}", unsafe { libc::getuid() }));
    format!("{user}@{}", lockd_client::client::hostname())
}

/// The login name of the real user, from the password database.
fn login_name() -> Option<String> {
    let mut buf = vec![0 as libc::c_char; 4096];
    // SAFETY: all-zero is a valid `passwd` (null pointers and zero ids).
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the stated length; getpwuid_r
    // writes only into `pwd` and `buf`, and `found` is null or `&pwd`.
    let rc = unsafe {
        libc::getpwuid_r(
            libc::getuid(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut found,
        )
    };
    if rc != 0 || found.is_null() || pwd.pw_name.is_null() {
        return None;
    }
    // SAFETY: on success pw_name points to a NUL-terminated string in `buf`.
    let name = unsafe { std::ffi::CStr::from_ptr(pwd.pw_name) };
    let name = name.to_str().ok()?;
    (!name.is_empty() && !name.chars().any(char::is_control)).then(|| name.to_owned())
}
