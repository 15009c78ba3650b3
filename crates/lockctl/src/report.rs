//! lockctl's own messages on stderr, all in one format: `lockctl: <level>: <message>`.
//!
//! Everything lockctl says about itself goes through [`say`] (or the
//! [`error`], [`warning`] and [`note`] shorthands), and the warnings of the
//! client library are formatted the same way by [`LogFormat`], so scripts
//! can grep one prefix. Results go to stdout (see `output`), never here.

use std::fmt;
use std::io::Write as _;

use tracing::{Event, Level as TraceLevel, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// How bad a message is; its name is the second part of the prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// lockctl gives up; printed once, right before it exits non-zero.
    Error,
    /// Something went wrong that lockctl works around or that needs a look.
    Warning,
    /// Something worth knowing that is not wrong, such as a recovery.
    Note,
}

impl Level {
    fn as_str(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warning => "warning",
            Level::Note => "note",
        }
    }
}

/// The one line for `message` at `level`, without the newline.
pub fn line(level: Level, message: impl fmt::Display) -> String {
    format!("lockctl: {}: {message}", level.as_str())
}

/// Prints `message` at `level` on stderr; a closed stderr is not an error.
pub fn say(level: Level, message: impl fmt::Display) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{}", line(level, message));
    let _ = err.flush();
}

pub fn error(message: impl fmt::Display) {
    say(Level::Error, message);
}

pub fn warning(message: impl fmt::Display) {
    say(Level::Warning, message);
}

pub fn note(message: impl fmt::Display) {
    say(Level::Note, message);
}

/// Formats the client library's tracing events as lockctl's own lines:
/// `lockctl: warning: <message> <field>=<value> ...`.
pub struct LogFormat;

impl<S, N> FormatEvent<S, N> for LogFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let level = match *event.metadata().level() {
            TraceLevel::ERROR => Level::Error.as_str(),
            TraceLevel::WARN => Level::Warning.as_str(),
            TraceLevel::INFO => Level::Note.as_str(),
            // Only shown with RUST_LOG=...=debug: say which.
            TraceLevel::DEBUG => "debug",
            TraceLevel::TRACE => "trace",
        };
        write!(writer, "lockctl: {level}: ")?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_level_has_the_same_prefix() {
        assert_eq!(line(Level::Error, "x"), "lockctl: error: x");
        assert_eq!(line(Level::Warning, "y"), "lockctl: warning: y");
        assert_eq!(line(Level::Note, "z"), "lockctl: note: z");
    }
}
