//! Start-up configuration, read once from environment variables and validated up front.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use axum::http::HeaderValue;
use sqlx::postgres::PgConnectOptions;
use timemanager_shutdown::{DEFAULT_SHUTDOWN_DRAIN, InvalidDrainSeconds, parse_drain_seconds};

use crate::auth::AuthSettings;
use crate::auth::session::Lifetime;
use crate::migrations::Timeouts;

/// Port served (and probed by `healthcheck`) when `APP_PORT` is unset or empty.
const DEFAULT_PORT: u16 = 8080;

/// Service name reported to the trace backend when `OTEL_SERVICE_NAME` is unset.
pub const DEFAULT_SERVICE_NAME: &str = "timemanager-backend";

/// Everything the server needs to start, already validated.
#[derive(Clone)]
pub struct Config {
    pub host: IpAddr,
    pub port: u16,
    pub database: DatabaseUrl,
    pub log_filter: String,
    pub cors: CorsOrigins,
    pub otel: Option<OtelConfig>,
    /// How long `/health` answers 503 after SIGTERM/SIGINT before the server stops
    /// accepting connections (`SHUTDOWN_DRAIN_SECONDS`).
    pub shutdown_drain: Duration,
    /// Sessions and sign-in (`SESSION_IDLE_TIMEOUT`, `SESSION_ABSOLUTE_TIMEOUT`,
    /// `SESSION_COOKIE_SECURE`, `TRUST_FORWARDED_FOR`).
    pub auth: AuthSettings,
}

/// A PostgreSQL URL whose password never appears in `Debug`/`Display` output.
#[derive(Clone)]
pub struct DatabaseUrl {
    options: PgConnectOptions,
    redacted: String,
}

impl DatabaseUrl {
    pub fn connect_options(&self) -> PgConnectOptions {
        self.options.clone()
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted)
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // PgConnectOptions' own Debug prints the password, so never delegate to it.
        f.debug_tuple("DatabaseUrl").field(&self.redacted).finish()
    }
}

/// Which browser origins may call the API.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum CorsOrigins {
    /// No CORS layer at all: browsers only allow same-origin calls (the production
    /// setup, where Traefik serves the frontend and the API on one origin).
    #[default]
    Disabled,
    /// `*`: any origin.
    Any,
    /// An explicit allow-list.
    List(Vec<HeaderValue>),
}

/// Where traces are sent over OTLP/HTTP (protobuf).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OtelConfig {
    /// Full URL of the traces endpoint, i.e. the configured base plus `/v1/traces`.
    pub traces_endpoint: String,
    pub service_name: String,
}

/// A configuration problem, rendered as one line naming the variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub variable: &'static str,
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.variable, self.problem)
    }
}

impl std::error::Error for ConfigError {}

/// The process environment as a lookup: `Err(())` for a value that is set but not UTF-8.
fn process_env(name: &'static str) -> Result<Option<String>, ()> {
    match std::env::var(name) {
        Ok(value) => Ok(Some(value)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(()),
    }
}

/// One setting through `lookup`, trimmed. Empty values count as unset: compose files
/// often write `APP_PORT=`.
fn setting(
    lookup: &impl Fn(&'static str) -> Result<Option<String>, ()>,
    name: &'static str,
) -> Result<Option<String>, ConfigError> {
    match lookup(name) {
        Ok(Some(value)) if !value.trim().is_empty() => Ok(Some(value.trim().to_owned())),
        Ok(_) => Ok(None),
        Err(()) => Err(invalid(name, "must be valid UTF-8")),
    }
}

fn invalid(variable: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        variable,
        problem: problem.into(),
    }
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(process_env)
    }

    /// Reads configuration through `lookup` (`Err(())` meaning "set but not UTF-8"),
    /// so parsing can be tested without touching the process environment.
    pub fn from_lookup(
        lookup: impl Fn(&'static str) -> Result<Option<String>, ()>,
    ) -> Result<Self, ConfigError> {
        let get = |name| setting(&lookup, name);

        let host = match get("APP_HOST")? {
            None => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            Some(raw) => IpAddr::from_str(&raw).map_err(|_| {
                invalid(
                    "APP_HOST",
                    format!(
                        "must be an IP address such as 0.0.0.0 or ::, got {}",
                        quoted(&raw)
                    ),
                )
            })?,
        };
        let port = match get("APP_PORT")? {
            None => DEFAULT_PORT,
            Some(raw) => parse_port(&raw).map_err(|problem| invalid("APP_PORT", problem))?,
        };
        let database = database_url(&get)?;
        let log_filter = get("RUST_LOG")?.unwrap_or_else(|| "info".to_owned());
        if let Err(err) = tracing_subscriber::EnvFilter::try_new(&log_filter) {
            return Err(invalid(
                "RUST_LOG",
                format!("is not a valid log filter: {err}"),
            ));
        }
        let cors = match get("CORS_ALLOWED_ORIGINS")? {
            None => CorsOrigins::Disabled,
            Some(raw) => parse_cors_origins(&raw)?,
        };
        let otel = match get("OTEL_EXPORTER_OTLP_ENDPOINT")? {
            None => None,
            Some(raw) => Some(OtelConfig {
                traces_endpoint: parse_otlp_endpoint(&raw)?,
                service_name: get("OTEL_SERVICE_NAME")?
                    .unwrap_or_else(|| DEFAULT_SERVICE_NAME.to_owned()),
            }),
        };

        let shutdown_drain = match get("SHUTDOWN_DRAIN_SECONDS")? {
            None => DEFAULT_SHUTDOWN_DRAIN,
            Some(raw) => parse_drain_seconds(&raw).map_err(|_| {
                invalid(
                    "SHUTDOWN_DRAIN_SECONDS",
                    format!(
                        "must be {}, got {}",
                        InvalidDrainSeconds::EXPECTED,
                        quoted(&raw)
                    ),
                )
            })?,
        };

        let auth = auth_settings(&get, host)?;

        Ok(Self {
            host,
            port,
            database,
            log_filter,
            cors,
            otel,
            shutdown_drain,
            auth,
        })
    }
}

/// `DATABASE_URL`, else the content of the file `DATABASE_URL_FILE` names (a Docker Swarm
/// secret under `/run/secrets/`, so the password is in no service spec or environment).
fn database_url(
    get: &impl Fn(&'static str) -> Result<Option<String>, ConfigError>,
) -> Result<DatabaseUrl, ConfigError> {
    if let Some(raw) = get("DATABASE_URL")? {
        return parse_database_url(&raw);
    }
    let Some(path) = get("DATABASE_URL_FILE")? else {
        return Err(invalid(
            "DATABASE_URL",
            "is required (e.g. postgres://user:password@db:5432/timemanager), or DATABASE_URL_FILE naming a file that holds it",
        ));
    };
    // The error names the file, never its content.
    let raw = std::fs::read_to_string(&path).map_err(|err| {
        invalid(
            "DATABASE_URL_FILE",
            format!("names {}, which cannot be read: {err}", quoted(&path)),
        )
    })?;
    parse_database_url(raw.trim())
}

fn auth_settings(
    get: &impl Fn(&'static str) -> Result<Option<String>, ConfigError>,
    host: IpAddr,
) -> Result<AuthSettings, ConfigError> {
    let defaults = AuthSettings::default();
    let lifetime = |name: &'static str, default: Duration| match get(name)? {
        None => Ok(default),
        Some(raw) => match parse_timeout(&raw) {
            Ok(duration) if !duration.is_zero() => Ok(duration),
            _ => Err(invalid(
                name,
                format!(
                    "must be a duration such as 30min or 720min, got {}",
                    quoted(&raw)
                ),
            )),
        },
    };
    let lifetime = Lifetime {
        idle: lifetime("SESSION_IDLE_TIMEOUT", defaults.lifetime.idle)?,
        absolute: lifetime("SESSION_ABSOLUTE_TIMEOUT", defaults.lifetime.absolute)?,
    };
    let secure_cookie = match get("SESSION_COOKIE_SECURE")? {
        None => true,
        Some(raw) => parse_bool("SESSION_COOKIE_SECURE", &raw)?,
    };
    if !secure_cookie && !host.is_loopback() {
        return Err(invalid(
            "SESSION_COOKIE_SECURE",
            format!(
                "may be false only for development on loopback (APP_HOST=127.0.0.1 or ::1), \
                 not with APP_HOST={host}: browsers would then send the session over plain HTTP"
            ),
        ));
    }
    let trust_forwarded_for = match get("TRUST_FORWARDED_FOR")? {
        None => false,
        Some(raw) => parse_bool("TRUST_FORWARDED_FOR", &raw)?,
    };
    Ok(AuthSettings {
        lifetime,
        secure_cookie,
        trust_forwarded_for,
    })
}

fn parse_bool(name: &'static str, raw: &str) -> Result<bool, ConfigError> {
    match raw {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(invalid(
            name,
            format!("must be true or false, got {}", quoted(raw)),
        )),
    }
}

/// Address the `healthcheck` subcommand probes: `127.0.0.1:$APP_PORT`. Reads nothing but
/// `APP_PORT`, so the probe works without `DATABASE_URL` or any other setting.
pub fn probe_addr_from_env() -> Result<SocketAddr, ConfigError> {
    probe_addr(std::env::var("APP_PORT").ok().as_deref())
}

fn probe_addr(app_port: Option<&str>) -> Result<SocketAddr, ConfigError> {
    let port = match app_port {
        Some(raw) if !raw.trim().is_empty() => {
            parse_port(raw).map_err(|problem| invalid("APP_PORT", problem))?
        }
        _ => DEFAULT_PORT,
    };
    Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
}

/// Parses a TCP port, shared with the `healthcheck` subcommand.
pub fn parse_port(raw: &str) -> Result<u16, String> {
    match raw.trim().parse::<u16>() {
        Ok(port) if port != 0 => Ok(port),
        _ => Err(format!(
            "must be a port number (1-65535), got {}",
            quoted(raw)
        )),
    }
}

fn parse_database_url(raw: &str) -> Result<DatabaseUrl, ConfigError> {
    let redacted = redact_url(raw);
    if !(raw.starts_with("postgres://") || raw.starts_with("postgresql://")) {
        return Err(invalid(
            "DATABASE_URL",
            format!(
                "must start with postgres:// or postgresql://, got {}",
                quoted(&redacted)
            ),
        ));
    }
    let options = PgConnectOptions::from_str(raw).map_err(|err| {
        // The parser's messages do not quote the URL today; scrub anyway in case that changes.
        let reason = scrub(&err.to_string(), raw, &redacted);
        invalid(
            "DATABASE_URL",
            format!(
                "is not a valid PostgreSQL URL ({reason}): {}",
                quoted(&redacted)
            ),
        )
    })?;
    Ok(DatabaseUrl { options, redacted })
}

/// Replaces the password of a `scheme://user:password@host/...` URL with `***`.
pub fn redact_url(raw: &str) -> String {
    let Some(scheme_end) = raw.find("://") else {
        return raw.to_owned();
    };
    let authority_start = scheme_end + 3;
    let rest = &raw[authority_start..];
    // The userinfo ends at the last '@' before the path/query starts.
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return raw.to_owned();
    };
    let userinfo = &authority[..at];
    match userinfo.find(':') {
        Some(colon) => format!(
            "{}{}:***{}",
            &raw[..authority_start],
            &userinfo[..colon],
            &raw[authority_start + at..]
        ),
        None => raw.to_owned(),
    }
}

/// Removes the secret part of `raw` (anything redaction hid) from a message.
fn scrub(message: &str, raw: &str, redacted: &str) -> String {
    if raw == redacted {
        return message.to_owned();
    }
    let message = message.replace(raw, redacted);
    match password_of(raw) {
        Some(password) if !password.is_empty() => message.replace(password, "***"),
        _ => message,
    }
}

fn password_of(raw: &str) -> Option<&str> {
    let rest = &raw[raw.find("://")? + 3..];
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let userinfo = &authority[..authority.rfind('@')?];
    Some(&userinfo[userinfo.find(':')? + 1..])
}

fn parse_cors_origins(raw: &str) -> Result<CorsOrigins, ConfigError> {
    let entries: Vec<&str> = raw
        .split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .collect();
    if entries.is_empty() {
        return Ok(CorsOrigins::Disabled);
    }
    if entries.contains(&"*") {
        if entries.len() > 1 {
            return Err(invalid(
                "CORS_ALLOWED_ORIGINS",
                "must be either * alone or a list of origins, not both",
            ));
        }
        return Ok(CorsOrigins::Any);
    }
    let mut origins = Vec::with_capacity(entries.len());
    for entry in entries {
        let value = is_origin(entry)
            .then(|| HeaderValue::from_str(entry).ok())
            .flatten()
            .ok_or_else(|| {
                invalid(
                    "CORS_ALLOWED_ORIGINS",
                    format!(
                        "entry {} must be an origin like https://app.example.com (scheme://host[:port], no path)",
                        quoted(entry)
                    ),
                )
            })?;
        origins.push(value);
    }
    Ok(CorsOrigins::List(origins))
}

/// Browsers send `Origin: scheme://host[:port]` exactly, so anything with a path
/// (even a trailing slash) would never match and is almost certainly a typo.
fn is_origin(entry: &str) -> bool {
    let Some(rest) = entry
        .strip_prefix("http://")
        .or_else(|| entry.strip_prefix("https://"))
    else {
        return false;
    };
    let (host, port) = match rest.rsplit_once(':') {
        // A bracketed IPv6 host contains ':' itself; only a trailing ":digits" is a port.
        Some((host, port)) if !port.contains(']') => (host, Some(port)),
        _ => (rest, None),
    };
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '[' | ']' | ':'));
    let port_ok = port.is_none_or(|p| parse_port(p).is_ok());
    host_ok && port_ok
}

fn parse_otlp_endpoint(raw: &str) -> Result<String, ConfigError> {
    if raw.starts_with("https://") {
        return Err(invalid(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!(
                "must use http:// (the exporter is built without TLS; send to an in-cluster collector such as http://tempo:4318), got {}",
                quoted(raw)
            ),
        ));
    }
    let valid = raw
        .strip_prefix("http://")
        .is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'))
        && raw.parse::<axum::http::Uri>().is_ok();
    if !valid {
        return Err(invalid(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!(
                "must be an http:// URL such as http://tempo:4318, got {}",
                quoted(raw)
            ),
        ));
    }
    // Per the OTLP spec the variable is a base URL and each signal appends its own path.
    Ok(format!("{}/v1/traces", raw.trim_end_matches('/')))
}

/// `MIGRATE_LOCK_TIMEOUT` when unset: long enough for a busy table, short enough that a
/// migration queued behind a long query does not stall every query queued behind it.
pub const DEFAULT_MIGRATE_LOCK_TIMEOUT: Duration = Duration::from_secs(5);
/// `MIGRATE_STATEMENT_TIMEOUT` when unset.
pub const DEFAULT_MIGRATE_STATEMENT_TIMEOUT: Duration = Duration::from_secs(300);

/// Settings of `timemanager-backend migrate`: only what migrating needs, so the deploy
/// can run it with the server's environment without the server's settings mattering.
#[derive(Clone, Debug)]
pub struct MigrateConfig {
    pub database: DatabaseUrl,
    pub timeouts: Timeouts,
}

impl MigrateConfig {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(process_env)
    }

    /// Reads configuration through `lookup`, like [`Config::from_lookup`].
    pub fn from_lookup(
        lookup: impl Fn(&'static str) -> Result<Option<String>, ()>,
    ) -> Result<Self, ConfigError> {
        let get = |name| setting(&lookup, name);
        let database = database_url(&get)?;
        let timeout = |name: &'static str, default: Duration| match get(name)? {
            None => Ok(default),
            Some(raw) => parse_timeout(&raw).map_err(|problem| invalid(name, problem)),
        };
        Ok(Self {
            database,
            timeouts: Timeouts {
                lock: timeout("MIGRATE_LOCK_TIMEOUT", DEFAULT_MIGRATE_LOCK_TIMEOUT)?,
                statement: timeout(
                    "MIGRATE_STATEMENT_TIMEOUT",
                    DEFAULT_MIGRATE_STATEMENT_TIMEOUT,
                )?,
            },
        })
    }
}

/// Parses `500ms`, `5s` or `5min` (PostgreSQL's units, but the unit is required so that
/// `5` cannot mean milliseconds to one reader and seconds to another); `0` disables.
fn parse_timeout(raw: &str) -> Result<Duration, String> {
    let problem = || {
        format!(
            "must be a duration such as 500ms, 5s or 5min (0 disables it), got {}",
            quoted(raw)
        )
    };
    let raw = raw.trim();
    if raw == "0" {
        return Ok(Duration::ZERO);
    }
    let split = raw
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(problem)?;
    let number: u64 = raw[..split].parse().map_err(|_| problem())?;
    let millis = match &raw[split..] {
        "ms" => Some(number),
        "s" => number.checked_mul(1_000),
        "min" => number.checked_mul(60_000),
        _ => None,
    };
    // PostgreSQL keeps these settings as a 32-bit count of milliseconds.
    match millis {
        Some(millis) if i32::try_from(millis).is_ok() => Ok(Duration::from_millis(millis)),
        _ => Err(problem()),
    }
}

/// Quotes a user-supplied value for an error message, shortening very long input.
fn quoted(value: &str) -> String {
    const MAX_CHARS: usize = 80;
    if value.chars().count() > MAX_CHARS {
        let head: String = value.chars().take(MAX_CHARS).collect();
        format!("{head:?}...")
    } else {
        format!("{value:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&'static str, &str)]) -> Result<Config, ConfigError> {
        let vars: HashMap<&'static str, String> =
            vars.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
        Config::from_lookup(|name| Ok(vars.get(name).cloned()))
    }

    const DB: (&str, &str) = ("DATABASE_URL", "postgres://app:s3cret@db:5432/tm");

    #[test]
    fn defaults() {
        let c = config(&[DB]).unwrap();
        assert_eq!(c.host, IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        assert_eq!(c.port, 8080);
        assert_eq!(c.log_filter, "info");
        assert_eq!(c.cors, CorsOrigins::Disabled);
        assert_eq!(c.otel, None);
        assert_eq!(c.shutdown_drain, Duration::from_secs(12));
        assert_eq!(c.database.to_string(), "postgres://app:***@db:5432/tm");
        assert!(!format!("{:?}", c.database).contains("s3cret"));
    }

    #[test]
    fn bad_port_names_variable_and_value() {
        for bad in ["abc", "0", "65536", "-1"] {
            let err = config(&[DB, ("APP_PORT", bad)]).err().unwrap();
            assert_eq!(
                err.to_string(),
                format!("APP_PORT must be a port number (1-65535), got \"{bad}\"")
            );
        }
    }

    #[test]
    fn probe_addr_is_loopback_on_app_port() {
        let loopback = |port: u16| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        assert_eq!(probe_addr(None).unwrap(), loopback(8080));
        assert_eq!(probe_addr(Some(" ")).unwrap(), loopback(8080));
        assert_eq!(probe_addr(Some(" 9000 ")).unwrap(), loopback(9000));
        assert_eq!(
            probe_addr(Some("0")).unwrap_err().to_string(),
            "APP_PORT must be a port number (1-65535), got \"0\""
        );
    }

    #[test]
    fn empty_values_count_as_unset() {
        let c = config(&[DB, ("APP_PORT", ""), ("CORS_ALLOWED_ORIGINS", " ")]).unwrap();
        assert_eq!(c.port, 8080);
        assert_eq!(c.cors, CorsOrigins::Disabled);
    }

    #[test]
    fn database_url_required_and_never_leaks_password() {
        assert_eq!(config(&[]).err().unwrap().variable, "DATABASE_URL");
        let err = config(&[("DATABASE_URL", "mysql://u:hunter2@h/db")])
            .err()
            .unwrap();
        assert_eq!(err.variable, "DATABASE_URL");
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let err = config(&[("DATABASE_URL", "postgres://u:hunter2@h:notaport/db")])
            .err()
            .unwrap();
        assert_eq!(err.variable, "DATABASE_URL");
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn database_url_from_a_file() {
        let path = std::env::temp_dir().join(format!("tm-config-db-url-{}", std::process::id()));
        std::fs::write(&path, "postgres://app:s3cret@db:5432/tm\n").unwrap();
        let file = path.to_str().unwrap();
        let c = config(&[("DATABASE_URL_FILE", file)]).unwrap();
        assert_eq!(c.database.to_string(), "postgres://app:***@db:5432/tm");
        // DATABASE_URL wins when both are set.
        let c = config(&[
            ("DATABASE_URL_FILE", file),
            ("DATABASE_URL", "postgres://u@other/x"),
        ])
        .unwrap();
        assert_eq!(c.database.to_string(), "postgres://u@other/x");
        std::fs::write(&path, "mysql://u:hunter2@h/db").unwrap();
        let err = config(&[("DATABASE_URL_FILE", file)]).err().unwrap();
        assert_eq!(err.variable, "DATABASE_URL");
        assert!(!err.to_string().contains("hunter2"), "{err}");
        std::fs::remove_file(&path).unwrap();
        let err = config(&[("DATABASE_URL_FILE", file)]).err().unwrap();
        assert_eq!(err.variable, "DATABASE_URL_FILE");
        assert!(err.to_string().contains(file), "{err}");
    }

    #[test]
    fn redaction() {
        assert_eq!(redact_url("postgres://u:p@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_url("postgres://h/db"), "postgres://h/db");
        assert_eq!(
            redact_url("postgres://u:p@ss@h:5/db?x=@"),
            "postgres://u:***@h:5/db?x=@"
        );
    }

    #[test]
    fn host_and_log_filter() {
        let c = config(&[DB, ("APP_HOST", "::1"), ("RUST_LOG", "debug,sqlx=warn")]).unwrap();
        assert_eq!(c.host.to_string(), "::1");
        assert_eq!(
            config(&[DB, ("APP_HOST", "localhost")])
                .err()
                .unwrap()
                .variable,
            "APP_HOST"
        );
        assert_eq!(
            config(&[DB, ("RUST_LOG", "info,[")])
                .err()
                .unwrap()
                .variable,
            "RUST_LOG"
        );
    }

    #[test]
    fn cors_origins() {
        let c = config(&[
            DB,
            (
                "CORS_ALLOWED_ORIGINS",
                "http://localhost:5173, https://tm.example.com",
            ),
        ])
        .unwrap();
        assert_eq!(
            c.cors,
            CorsOrigins::List(vec![
                HeaderValue::from_static("http://localhost:5173"),
                HeaderValue::from_static("https://tm.example.com"),
            ])
        );
        assert_eq!(
            config(&[DB, ("CORS_ALLOWED_ORIGINS", "*")]).unwrap().cors,
            CorsOrigins::Any
        );
        for bad in [
            "localhost:5173",
            "https://x.com/",
            "*,http://a",
            "http://a:99999",
        ] {
            let err = config(&[DB, ("CORS_ALLOWED_ORIGINS", bad)]).err().unwrap();
            assert_eq!(err.variable, "CORS_ALLOWED_ORIGINS", "{bad}");
        }
    }

    #[test]
    fn otel_endpoint() {
        let c = config(&[DB, ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://tempo:4318/")]).unwrap();
        assert_eq!(
            c.otel,
            Some(OtelConfig {
                traces_endpoint: "http://tempo:4318/v1/traces".to_owned(),
                service_name: DEFAULT_SERVICE_NAME.to_owned(),
            })
        );
        let c = config(&[
            DB,
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://otel:4318"),
            ("OTEL_SERVICE_NAME", "tm-api"),
        ])
        .unwrap();
        assert_eq!(c.otel.unwrap().service_name, "tm-api");
        for bad in ["tempo:4318", "https://tempo:4318", "http://", "http:// x"] {
            let err = config(&[DB, ("OTEL_EXPORTER_OTLP_ENDPOINT", bad)])
                .err()
                .unwrap();
            assert_eq!(err.variable, "OTEL_EXPORTER_OTLP_ENDPOINT", "{bad}");
        }
    }

    #[test]
    fn migrate_config_needs_only_the_database_and_has_default_timeouts() {
        let vars = |vars: &[(&'static str, &'static str)]| {
            let vars: HashMap<&'static str, String> =
                vars.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
            MigrateConfig::from_lookup(move |name| Ok(vars.get(name).cloned()))
        };
        // Server settings do not matter, even invalid ones.
        let c = vars(&[DB, ("APP_PORT", "abc")]).unwrap();
        assert_eq!(c.timeouts.lock, Duration::from_secs(5));
        assert_eq!(c.timeouts.statement, Duration::from_secs(300));
        assert_eq!(c.database.to_string(), "postgres://app:***@db:5432/tm");
        assert_eq!(vars(&[]).unwrap_err().variable, "DATABASE_URL");

        let c = vars(&[
            DB,
            ("MIGRATE_LOCK_TIMEOUT", "750ms"),
            ("MIGRATE_STATEMENT_TIMEOUT", "10min"),
        ])
        .unwrap();
        assert_eq!(c.timeouts.lock, Duration::from_millis(750));
        assert_eq!(c.timeouts.statement, Duration::from_secs(600));
        let c = vars(&[DB, ("MIGRATE_STATEMENT_TIMEOUT", "0")]).unwrap();
        assert_eq!(c.timeouts.statement, Duration::ZERO);

        for bad in ["5", "5 s", "-1s", "1h", "s", "99999999min"] {
            let err = vars(&[DB, ("MIGRATE_LOCK_TIMEOUT", bad)]).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    "MIGRATE_LOCK_TIMEOUT must be a duration such as 500ms, 5s or 5min (0 disables it), got {bad:?}"
                )
            );
        }
    }

    #[test]
    fn shutdown_drain_seconds() {
        let drain = |raw: &str| config(&[DB, ("SHUTDOWN_DRAIN_SECONDS", raw)]);
        assert_eq!(drain("0").unwrap().shutdown_drain, Duration::ZERO);
        assert_eq!(
            drain(" 0.3 ").unwrap().shutdown_drain,
            Duration::from_millis(300)
        );
        assert_eq!(
            drain("300").unwrap().shutdown_drain,
            Duration::from_secs(300)
        );
        assert_eq!(drain("").unwrap().shutdown_drain, DEFAULT_SHUTDOWN_DRAIN);
        for bad in [
            "abc", "-1", "300.5", "12s", "1e3", "inf", "NaN", "+5", "1.2.3", ".",
        ] {
            let err = drain(bad).err().unwrap();
            assert_eq!(
                err.to_string(),
                format!(
                    "SHUTDOWN_DRAIN_SECONDS must be a number of seconds from 0 to 300 such as 12 or 0.5, got \"{bad}\""
                )
            );
        }
    }

    #[test]
    fn session_settings() {
        let base = [("DATABASE_URL", "postgres://db/x")];
        let auth = config(&base).unwrap().auth;
        assert_eq!(auth, AuthSettings::default());
        assert!(auth.secure_cookie && !auth.trust_forwarded_for);
        let auth = config(&[
            ("DATABASE_URL", "postgres://db/x"),
            ("SESSION_IDLE_TIMEOUT", "30min"),
            ("SESSION_ABSOLUTE_TIMEOUT", "600min"),
            ("TRUST_FORWARDED_FOR", "true"),
            ("APP_HOST", "127.0.0.1"),
            ("SESSION_COOKIE_SECURE", "false"),
        ])
        .unwrap()
        .auth;
        assert_eq!(auth.lifetime.idle, Duration::from_secs(1800));
        assert_eq!(auth.lifetime.absolute, Duration::from_secs(36_000));
        assert!(!auth.secure_cookie && auth.trust_forwarded_for);
        let err = config(&[
            ("DATABASE_URL", "postgres://db/x"),
            ("SESSION_COOKIE_SECURE", "false"),
        ])
        .err()
        .unwrap();
        assert_eq!(err.variable, "SESSION_COOKIE_SECURE");
        assert!(err.problem.contains("loopback"), "{err}");
        let err = config(&[
            ("DATABASE_URL", "postgres://db/x"),
            ("SESSION_IDLE_TIMEOUT", "0"),
        ])
        .err()
        .unwrap();
        assert_eq!(err.variable, "SESSION_IDLE_TIMEOUT");
    }

    #[test]
    fn non_utf8_is_reported() {
        let err = Config::from_lookup(|name| {
            if name == "APP_PORT" {
                Err(())
            } else {
                Ok(None)
            }
        })
        .err()
        .unwrap();
        assert_eq!(err.to_string(), "APP_PORT must be valid UTF-8");
    }
}
