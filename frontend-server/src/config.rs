//! Runtime configuration read from environment variables, validated up front.

use std::ffi::OsString;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use timemanager_shutdown::{DEFAULT_SHUTDOWN_DRAIN, InvalidDrainSeconds, parse_drain_seconds};
use tracing_subscriber::EnvFilter;

/// Directory holding the built SPA (`index.html` plus `assets/`).
pub const STATIC_DIR: &str = "STATIC_DIR";
/// IP address to bind.
pub const APP_HOST: &str = "APP_HOST";
/// TCP port to bind (1-65535).
pub const APP_PORT: &str = "APP_PORT";
/// `tracing-subscriber` `EnvFilter` directives, e.g. `info` or `warn,timemanager_frontend_server=debug`.
pub const RUST_LOG: &str = "RUST_LOG";
/// Seconds `/health` answers 503 after SIGTERM/SIGINT before connections are refused.
pub const SHUTDOWN_DRAIN_SECONDS: &str = "SHUTDOWN_DRAIN_SECONDS";

const DEFAULT_STATIC_DIR: &str = "/app/public";
const DEFAULT_HOST: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
const DEFAULT_PORT: u16 = 3000;
const DEFAULT_LOG_FILTER: &str = "info";

/// Validated server configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Root of the static files; must contain `index.html`.
    pub static_dir: PathBuf,
    /// Address to bind.
    pub host: IpAddr,
    /// Port to bind.
    pub port: u16,
    /// Log filter directives (already validated).
    pub log_filter: String,
    /// How long `/health` answers 503 after SIGTERM/SIGINT while everything else is
    /// still served.
    pub shutdown_drain: Duration,
}

/// A configuration variable with an unusable value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// Name of the offending variable.
    pub var: &'static str,
    /// The value as given (lossily decoded).
    pub value: String,
    /// What a valid value looks like.
    pub expected: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid {}={:?}: expected {}",
            self.var, self.value, self.expected
        )
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads the configuration from the process environment.
    ///
    /// # Errors
    /// Returns the first variable whose value is unusable.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var_os(name))
    }

    /// Reads the configuration through `lookup` (the environment, or a map in tests).
    ///
    /// Unset and empty variables take their defaults.
    ///
    /// # Errors
    /// Returns the first variable whose value is unusable.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<OsString>) -> Result<Self, ConfigError> {
        let get = |var: &'static str| lookup(var).filter(|value| !value.is_empty());
        let utf8 = |var: &'static str, value: OsString, expected: &str| {
            value.into_string().map_err(|value| ConfigError {
                var,
                value: value.to_string_lossy().into_owned(),
                expected: format!("{expected} (valid UTF-8)"),
            })
        };

        let static_dir =
            get(STATIC_DIR).map_or_else(|| PathBuf::from(DEFAULT_STATIC_DIR), PathBuf::from);

        let host = match get(APP_HOST) {
            None => DEFAULT_HOST,
            Some(raw) => {
                let expected = "an IP address such as 0.0.0.0, 127.0.0.1 or ::";
                let text = utf8(APP_HOST, raw, expected)?;
                text.parse().map_err(|_| ConfigError {
                    var: APP_HOST,
                    value: text.clone(),
                    expected: expected.to_owned(),
                })?
            }
        };

        let port = match get(APP_PORT) {
            None => DEFAULT_PORT,
            Some(raw) => {
                let expected = "a TCP port number from 1 to 65535";
                let text = utf8(APP_PORT, raw, expected)?;
                match text.parse::<u16>() {
                    Ok(port) if port != 0 => port,
                    _ => {
                        return Err(ConfigError {
                            var: APP_PORT,
                            value: text,
                            expected: expected.to_owned(),
                        });
                    }
                }
            }
        };

        let log_filter = match get(RUST_LOG) {
            None => DEFAULT_LOG_FILTER.to_owned(),
            Some(raw) => {
                let expected = "log filter directives such as `info` or `warn,timemanager_frontend_server=debug`";
                let text = utf8(RUST_LOG, raw, expected)?;
                if let Err(err) = EnvFilter::builder().parse(&text) {
                    return Err(ConfigError {
                        var: RUST_LOG,
                        value: text,
                        expected: format!("{expected} ({err})"),
                    });
                }
                text
            }
        };

        let shutdown_drain = match get(SHUTDOWN_DRAIN_SECONDS) {
            None => DEFAULT_SHUTDOWN_DRAIN,
            Some(raw) => {
                let expected = InvalidDrainSeconds::EXPECTED;
                let text = utf8(SHUTDOWN_DRAIN_SECONDS, raw, expected)?;
                parse_drain_seconds(&text).map_err(|_| ConfigError {
                    var: SHUTDOWN_DRAIN_SECONDS,
                    value: text.clone(),
                    expected: expected.to_owned(),
                })?
            }
        };

        Ok(Self {
            static_dir,
            host,
            port,
            log_filter,
            shutdown_drain,
        })
    }

    /// Path of the SPA entry point, `$STATIC_DIR/index.html`.
    #[must_use]
    pub fn index_html(&self) -> PathBuf {
        self.static_dir.join("index.html")
    }

    /// Address the server binds.
    #[must_use]
    pub fn bind_addr(&self) -> SocketAddr {
        SocketAddr::new(self.host, self.port)
    }

    /// Address the `healthcheck` subcommand connects to: loopback when bound to a
    /// wildcard address, the bound address otherwise.
    #[must_use]
    pub fn probe_addr(&self) -> SocketAddr {
        let ip = match self.host {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        SocketAddr::new(ip, self.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, OsString> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), OsString::from(v)))
            .collect();
        Config::from_lookup(|name| map.get(name).cloned())
    }

    #[test]
    fn defaults() {
        let config = parse(&[]).unwrap();
        assert_eq!(config.static_dir, PathBuf::from("/app/public"));
        assert_eq!(config.bind_addr(), "0.0.0.0:3000".parse().unwrap());
        assert_eq!(config.probe_addr(), "127.0.0.1:3000".parse().unwrap());
        assert_eq!(config.log_filter, "info");
        assert_eq!(config.shutdown_drain, Duration::from_secs(12));
        assert_eq!(config.index_html(), PathBuf::from("/app/public/index.html"));
    }

    #[test]
    fn empty_values_mean_default() {
        let config = parse(&[
            (APP_PORT, ""),
            (APP_HOST, ""),
            (RUST_LOG, ""),
            (STATIC_DIR, ""),
            (SHUTDOWN_DRAIN_SECONDS, ""),
        ]);
        assert_eq!(config.unwrap(), parse(&[]).unwrap());
    }

    #[test]
    fn explicit_values() {
        let config = parse(&[
            (STATIC_DIR, "/srv/www"),
            (APP_HOST, "::"),
            (APP_PORT, "8080"),
            (RUST_LOG, "warn,timemanager_frontend_server=debug"),
            (SHUTDOWN_DRAIN_SECONDS, "0.3"),
        ])
        .unwrap();
        assert_eq!(config.shutdown_drain, Duration::from_millis(300));
        assert_eq!(
            parse(&[(SHUTDOWN_DRAIN_SECONDS, "0")])
                .unwrap()
                .shutdown_drain,
            Duration::ZERO
        );
        assert_eq!(config.bind_addr(), "[::]:8080".parse().unwrap());
        assert_eq!(config.probe_addr(), "[::1]:8080".parse().unwrap());
        assert_eq!(config.static_dir, PathBuf::from("/srv/www"));

        let specific = parse(&[(APP_HOST, "10.1.2.3")]).unwrap();
        assert_eq!(specific.probe_addr(), "10.1.2.3:3000".parse().unwrap());
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (var, value) in [
            (APP_PORT, "abc"),
            (APP_PORT, "0"),
            (APP_PORT, "65536"),
            (APP_PORT, "-1"),
            (APP_HOST, "localhost"),
            (APP_HOST, "1.2.3"),
            (RUST_LOG, "info,foo=loud"),
            (SHUTDOWN_DRAIN_SECONDS, "abc"),
            (SHUTDOWN_DRAIN_SECONDS, "-1"),
            (SHUTDOWN_DRAIN_SECONDS, "300.5"),
            (SHUTDOWN_DRAIN_SECONDS, "12s"),
            (SHUTDOWN_DRAIN_SECONDS, "1e3"),
            (SHUTDOWN_DRAIN_SECONDS, "inf"),
        ] {
            let err = parse(&[(var, value)]).unwrap_err();
            assert_eq!(err.var, var);
            let message = err.to_string();
            assert!(message.starts_with(&format!("invalid {var}=")), "{message}");
            assert!(!message.contains('\n'), "{message}");
        }
    }
}
