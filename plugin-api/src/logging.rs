//! Forwards the plugin's `log` records, `tracing` events and panics to the host as plain data.
//!
//! Each loaded library has its own copy of `log`'s logger, `tracing`'s dispatcher and the
//! panic hook, all empty at load. `install` fills them (once per library, from
//! `initialize`) with forwarders that call `HostVtable::log`; the host re-emits each
//! record in its own `tracing` subscriber with plugin, version and actor fields.
//!
//! What is tricky: the tracing subscriber is installed as the *global* default, never a
//! scoped one — a scoped dispatcher registers a thread-local destructor that would pin the
//! library in memory after `dlclose`. The panic hook captures no backtrace for the same
//! reason. Spans are not forwarded (a plugin callback is short and synchronous; the host
//! wraps it in the actor's own fields).

use crate::export::{current_context, host_log};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU32, Ordering};
use tracing_core::field::{Field, Visit};
use tracing_core::span::{Attributes, Id, Record};
use tracing_core::{Event, Interest, Level, LevelFilter, Metadata, Subscriber};

/// 0 off, 1 error, 2 warn, 3 info, 4 debug, 5 trace.
static MAX_LEVEL: AtomicU32 = AtomicU32::new(3);

fn tracing_level_number(level: &Level) -> u32 {
    match *level {
        Level::ERROR => 1,
        Level::WARN => 2,
        Level::INFO => 3,
        Level::DEBUG => 4,
        Level::TRACE => 5,
    }
}

fn log_level_filter(level: u32) -> log::LevelFilter {
    match level {
        0 => log::LevelFilter::Off,
        1 => log::LevelFilter::Error,
        2 => log::LevelFilter::Warn,
        3 => log::LevelFilter::Info,
        4 => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    }
}

fn tracing_level_filter(level: u32) -> LevelFilter {
    match level {
        0 => LevelFilter::OFF,
        1 => LevelFilter::ERROR,
        2 => LevelFilter::WARN,
        3 => LevelFilter::INFO,
        4 => LevelFilter::DEBUG,
        _ => LevelFilter::TRACE,
    }
}

fn enabled(level: u32) -> bool {
    level <= MAX_LEVEL.load(Ordering::Relaxed)
}

struct ForwardLogger;

impl log::Log for ForwardLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        enabled(metadata.level() as u32)
    }

    fn log(&self, record: &log::Record<'_>) {
        let level = record.level() as u32;
        if enabled(level) {
            let message = record.args().to_string();
            host_log(current_context(), level, record.target(), &message);
        }
    }

    fn flush(&self) {}
}

static LOGGER: ForwardLogger = ForwardLogger;

struct ForwardSubscriber;

#[derive(Default)]
struct MessageVisitor {
    message: String,
    fields: String,
}

impl Visit for MessageVisitor {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={value}", field.name());
        }
    }
}

impl Subscriber for ForwardSubscriber {
    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
        if enabled(tracing_level_number(metadata.level())) {
            Interest::always()
        } else {
            Interest::never()
        }
    }

    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        enabled(tracing_level_number(metadata.level()))
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(tracing_level_filter(MAX_LEVEL.load(Ordering::Relaxed)))
    }

    fn new_span(&self, _span: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }

    fn record(&self, _span: &Id, _values: &Record<'_>) {}

    fn record_follows_from(&self, _span: &Id, _follows: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut visitor = MessageVisitor::default();
        event.record(&mut visitor);
        visitor.message.push_str(&visitor.fields);
        let metadata = event.metadata();
        host_log(
            current_context(),
            tracing_level_number(metadata.level()),
            metadata.target(),
            &visitor.message,
        );
    }

    fn enter(&self, _span: &Id) {}

    fn exit(&self, _span: &Id) {}
}

/// Installs the forwarders in this library's copies of `log`, `tracing` and the panic hook.
pub(crate) fn install(max_level: u32) {
    MAX_LEVEL.store(max_level, Ordering::Relaxed);
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log_level_filter(max_level));
    }
    let _ = tracing::subscriber::set_global_default(ForwardSubscriber);
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|location| format!(" at {}:{}", location.file(), location.line()))
            .unwrap_or_default();
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .map(|text| (*text).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "non-string payload".to_owned());
        host_log(
            current_context(),
            1,
            "panic",
            &format!("plugin panicked{location}: {message}"),
        );
    }));
}

/// Reports a panic payload whose own `Drop` panicked (its memory is leaked).
pub(crate) fn forward_panic_in_drop() {
    host_log(
        current_context(),
        1,
        "panic",
        "a panic payload panicked while being dropped",
    );
}
