//! The host's log output (`graft start`, `graft dev`): `tracing` to stderr, filtered by
//! `RUST_LOG`, in colour only on a terminal.
//!
//! Plugins' log records all arrive under one target, `graft::plugin`, with the plugin's
//! name in the `plugin` field (a `tracing` target is fixed where the event is written, so
//! it cannot carry a name known only at run time). To let `RUST_LOG` pick one plugin, a
//! directive `graft::plugin::NAME=LEVEL` is taken out of `RUST_LOG` here and applied to
//! the records whose `plugin` field is `NAME`; every other directive is `tracing`'s own
//! `EnvFilter` syntax, and plugins without a directive of their own follow it (so
//! `graft::plugin=debug` still selects every plugin).
//!
//! Tricky: `tracing` caches whether a call site is enabled. The plugin call site must stay
//! "sometimes" so that the per-record decision ([`Filter::event_enabled`]) is asked each
//! time, and the global maximum level must include the most verbose plugin directive (it
//! is also the level the host asks plugins to log at).

use std::collections::BTreeMap;
use std::io::IsTerminal;
use tracing::level_filters::LevelFilter;
use tracing::subscriber::Interest;
use tracing::{Event, Metadata, Subscriber, field::Field, field::Visit, span};
use tracing_subscriber::layer::{Context, Filter, SubscriberExt as _};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

/// The target every plugin log record is emitted under.
const PLUGIN_TARGET: &str = "graft::plugin";

/// Installs the subscriber (once; later calls do nothing).
pub fn init() {
    let directives = std::env::var("RUST_LOG").ok();
    let levels = PluginLevels::parse(directives.as_deref());
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .with_filter(levels);
    let _ = tracing_subscriber::registry().with(layer).try_init();
}

/// `RUST_LOG`'s directives: per-plugin levels, and `EnvFilter` for everything else.
struct PluginLevels {
    base: EnvFilter,
    plugins: BTreeMap<String, LevelFilter>,
}

impl PluginLevels {
    /// Splits `RUST_LOG` (unset or empty: `info`). A directive `graft::plugin::NAME` with
    /// no level means every level, as `EnvFilter` reads a bare target.
    fn parse(directives: Option<&str>) -> PluginLevels {
        let Some(directives) = directives.filter(|text| !text.trim().is_empty()) else {
            return PluginLevels {
                base: EnvFilter::new("info"),
                plugins: BTreeMap::new(),
            };
        };
        let prefix = format!("{PLUGIN_TARGET}::");
        let mut plugins = BTreeMap::new();
        let mut rest = Vec::new();
        for directive in directives.split(',').map(str::trim) {
            let plugin = directive.strip_prefix(&prefix).and_then(|selected| {
                let (name, level) = selected.split_once('=').unwrap_or((selected, "trace"));
                let level: LevelFilter = level.trim().parse().ok()?;
                let name = name.trim();
                (!name.is_empty() && !name.contains(['[', '{'])).then(|| (name.to_owned(), level))
            });
            match plugin {
                Some((name, level)) => {
                    plugins.insert(name, level);
                }
                None if !directive.is_empty() => rest.push(directive),
                None => {}
            }
        }
        PluginLevels {
            base: EnvFilter::builder().parse_lossy(rest.join(",")),
            plugins,
        }
    }

    /// The most verbose level any plugin directive asks for.
    fn most_verbose_plugin(&self) -> Option<LevelFilter> {
        self.plugins.values().copied().max()
    }
}

/// Reads the `plugin` field of a plugin log record.
#[derive(Default)]
struct PluginName(String);

impl Visit for PluginName {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "plugin" {
            value.clone_into(&mut self.0);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "plugin" {
            self.0 = format!("{value:?}");
        }
    }
}

impl<S: Subscriber + for<'lookup> LookupSpan<'lookup>> Filter<S> for PluginLevels {
    fn enabled(&self, metadata: &Metadata<'_>, context: &Context<'_, S>) -> bool {
        if metadata.target() == PLUGIN_TARGET
            && self
                .most_verbose_plugin()
                .is_some_and(|level| *metadata.level() <= level)
        {
            return true;
        }
        Filter::enabled(&self.base, metadata, context)
    }

    fn callsite_enabled(&self, metadata: &'static Metadata<'static>) -> Interest {
        if metadata.target() == PLUGIN_TARGET && !self.plugins.is_empty() {
            return Interest::sometimes();
        }
        Filter::<S>::callsite_enabled(&self.base, metadata)
    }

    fn event_enabled(&self, event: &Event<'_>, context: &Context<'_, S>) -> bool {
        let metadata = event.metadata();
        if metadata.target() != PLUGIN_TARGET || self.plugins.is_empty() {
            return Filter::event_enabled(&self.base, event, context);
        }
        let mut name = PluginName::default();
        event.record(&mut name);
        match self.plugins.get(&name.0) {
            Some(level) => *metadata.level() <= *level,
            None => Filter::enabled(&self.base, metadata, context),
        }
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        match (
            Filter::<S>::max_level_hint(&self.base),
            self.most_verbose_plugin(),
        ) {
            (Some(base), Some(plugin)) => Some(base.max(plugin)),
            (None, _) => None,
            (base, None) => base,
        }
    }

    fn on_new_span(
        &self,
        attributes: &span::Attributes<'_>,
        id: &span::Id,
        context: Context<'_, S>,
    ) {
        Filter::on_new_span(&self.base, attributes, id, context);
    }

    fn on_record(&self, id: &span::Id, values: &span::Record<'_>, context: Context<'_, S>) {
        Filter::on_record(&self.base, id, values, context);
    }

    fn on_enter(&self, id: &span::Id, context: Context<'_, S>) {
        Filter::on_enter(&self.base, id, context);
    }

    fn on_exit(&self, id: &span::Id, context: Context<'_, S>) {
        Filter::on_exit(&self.base, id, context);
    }

    fn on_close(&self, id: span::Id, context: Context<'_, S>) {
        Filter::on_close(&self.base, id, context);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plugin_directive_is_taken_out_of_the_env_filter() {
        let levels =
            PluginLevels::parse(Some("warn,graft::plugin::counter=debug, graft::plugin::kv"));
        assert_eq!(levels.plugins.get("counter"), Some(&LevelFilter::DEBUG));
        assert_eq!(levels.plugins.get("kv"), Some(&LevelFilter::TRACE));
        assert_eq!(levels.base.to_string(), "warn");
    }

    #[test]
    fn without_rust_log_the_level_is_info() {
        let levels = PluginLevels::parse(None);
        assert!(levels.plugins.is_empty());
        assert_eq!(levels.base.to_string(), "info");
    }
}
