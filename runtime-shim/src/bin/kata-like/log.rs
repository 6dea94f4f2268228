//! Where the CLI's log goes: stderr, or runc's `--log FILE` in
//! `--log-format text|json`. The JSON lines are logrus's, as runc writes
//! them (`{"level":"error","msg":"…","time":"…"}`): containerd's runc shim
//! reads the last error line of that file to report why a command failed.

use std::fmt::Write as _;
use std::path::Path;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// `--log-format`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// logrus's JSON lines.
    Json,
}

/// logrus's level names.
fn level_name(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "error",
        Level::WARN => "warning",
        Level::INFO => "info",
        Level::DEBUG => "debug",
        Level::TRACE => "trace",
    }
}

/// Collects an event's message and fields into one line.
#[derive(Default)]
struct Message(String);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name().starts_with("log.") {
            // The `log` bridge's target/module/file/line: noise here.
        } else if field.name() == "message" {
            let _ = write!(self.0, "{}{value:?}", if self.0.is_empty() { "" } else { " " });
        } else {
            let _ = write!(self.0, "{}{}={value:?}", if self.0.is_empty() { "" } else { " " }, field.name());
        }
    }
}

/// logrus-style JSON lines.
struct RuncJson;

impl<S, N> FormatEvent<S, N> for RuncJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, _ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> std::fmt::Result {
        let mut message = Message::default();
        event.record(&mut message);
        let line = serde_json::json!({
            "level": level_name(event.metadata().level()),
            "msg": message.0,
            "time": kata_like_runtime::standalone::now_rfc3339(),
        });
        writeln!(writer, "{line}")
    }
}

/// Sets the log up: `--log` (appended) in `format`, else stderr; `debug`
/// lowers the level to debug (RUST_LOG overrides both).
pub fn init(log: Option<&Path>, format: LogFormat, debug: bool) {
    let default = if debug { "debug" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let file = log.and_then(|path| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| eprintln!("kata-like: --log {}: {e}; logging to stderr", path.display()))
            .ok()
    });
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(false);
    match (file, format) {
        (Some(file), LogFormat::Json) => {
            builder.event_format(RuncJson).with_writer(std::sync::Mutex::new(file)).init();
        }
        (Some(file), LogFormat::Text) => builder.with_writer(std::sync::Mutex::new(file)).init(),
        (None, _) => builder.with_writer(std::io::stderr).without_time().init(),
    }
}
