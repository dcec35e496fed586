//! Configuration: every option is a flag and an environment variable (see `comments --help`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};

use crate::store::sqlite::Synchronous;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "comments",
    version,
    about = "Comment API for content items, with Prometheus metrics and OpenTelemetry traces",
    long_about = None,
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub config: Config,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Serve the API (what runs with no subcommand).
    Serve,
    /// Probe /readyz of a running server and exit 0 when it is ready, 1 when not (for Docker's
    /// HEALTHCHECK; the image has no shell or curl).
    Healthcheck {
        /// Address to probe; defaults to --listen with 0.0.0.0 read as 127.0.0.1.
        #[arg(long)]
        addr: Option<SocketAddr>,
        /// Give up after this long.
        #[arg(long, default_value = "2s", value_parser = parse_duration)]
        timeout: Duration,
    },
}

#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Address of the API listener.
    #[arg(long, env = "COMMENTS_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// Address of the metrics listener (/metrics only, kept off the public port).
    #[arg(long, env = "COMMENTS_METRICS_LISTEN", default_value = "0.0.0.0:9090")]
    pub metrics_listen: SocketAddr,

    /// Storage: sqlite://<path> (embedded, one replica) or postgres://... (many replicas).
    #[arg(
        long,
        env = "COMMENTS_DATABASE_URL",
        default_value = "sqlite://data/comments.db",
        hide_env_values = true
    )]
    pub database_url: String,

    /// File holding the database URL (a mounted Kubernetes Secret, so a password never sits in
    /// the environment); overrides --database-url. Surrounding whitespace is ignored.
    #[arg(long, env = "COMMENTS_DATABASE_URL_FILE")]
    pub database_url_file: Option<PathBuf>,

    /// Most database connections (PostgreSQL) or read connections (SQLite).
    #[arg(long, env = "COMMENTS_DATABASE_MAX_CONNECTIONS", default_value_t = 8,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub database_max_connections: u32,

    /// Longest a storage operation may take before the request gets a 503. Under 1 s by default,
    /// so a database outage answers every request within a second.
    #[arg(long, env = "COMMENTS_STORAGE_TIMEOUT", default_value = "800ms", value_parser = parse_duration)]
    pub storage_timeout: Duration,

    /// SQLite durability: full fsyncs every commit (survives power loss); normal fsyncs at
    /// checkpoints only (survives a crash of the process, not of the machine).
    #[arg(long, env = "COMMENTS_SQLITE_SYNCHRONOUS", value_enum, default_value_t = Synchronous::Full)]
    pub sqlite_synchronous: Synchronous,

    /// Log format on stdout.
    #[arg(long, env = "COMMENTS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,

    /// After SIGTERM, how long to keep serving (with /readyz failing) so load balancers stop
    /// sending traffic before the listener closes.
    #[arg(long, env = "COMMENTS_SHUTDOWN_DELAY", default_value = "5s", value_parser = parse_duration)]
    pub shutdown_delay: Duration,

    /// After the delay, how long in-flight requests get to finish.
    #[arg(long, env = "COMMENTS_SHUTDOWN_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,

    /// Longest the server may take to answer a request before it gets a 503 (its time to send
    /// the body counts too, bounded separately by the body read timeout).
    #[arg(long, env = "COMMENTS_REQUEST_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub request_timeout: Duration,

    /// Longest a client may take to send a request body; slower clients get a 408.
    #[arg(long, env = "COMMENTS_BODY_READ_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub body_read_timeout: Duration,

    /// Largest request body accepted; larger ones get a 413.
    #[arg(long, env = "COMMENTS_MAX_BODY_BYTES", default_value_t = 64 * 1024,
          value_parser = clap::value_parser!(u64).range(1024..=16 * 1024 * 1024))]
    pub max_body_bytes: u64,

    /// Most API requests handled at once, reads and writes each; beyond it requests get a 503
    /// with Retry-After at once instead of queueing. Probes are never limited.
    #[arg(long, env = "COMMENTS_MAX_CONCURRENCY", default_value_t = 1024,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_concurrency: u64,

    /// Most open connections; beyond it new connections are closed at once (bounds memory under
    /// connection floods).
    #[arg(long, env = "COMMENTS_MAX_CONNECTIONS", default_value_t = 2048,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_connections: u64,

    /// Longest a connection may take to send a request head, counted from when the server waits
    /// for one: bounds slow clients and idle keep-alive connections. Keep it above the idle
    /// timeout of the load balancer in front (60s for AWS ALB and ingress-nginx).
    #[arg(long, env = "COMMENTS_HEADER_READ_TIMEOUT", default_value = "65s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,

    /// Connections older than this are closed after their current request, so keep-alive
    /// clients spread over new replicas.
    #[arg(long, env = "COMMENTS_MAX_CONNECTION_AGE", default_value = "10m", value_parser = parse_duration)]
    pub max_connection_age: Duration,

    /// Per-client limit on writes (POST and DELETE), in requests per second; 0 turns it off.
    /// Beyond it a client gets 429 with Retry-After.
    #[arg(long, env = "COMMENTS_WRITE_RATE_LIMIT", default_value_t = 0.0, value_parser = parse_rate)]
    pub write_rate_limit: f64,

    /// Writes a client may make at once before the rate limit applies.
    #[arg(long, env = "COMMENTS_WRITE_RATE_BURST", default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub write_rate_burst: u32,

    /// Identify rate-limited clients by the last X-Forwarded-For entry (set by the proxy in
    /// front) instead of the peer address. Only behind a proxy that sets the header.
    #[arg(long, env = "COMMENTS_TRUST_FORWARDED_FOR", default_value_t = false)]
    pub trust_forwarded_for: bool,

    /// Bearer token for admin endpoints (DELETE). Without one, deleting is off.
    #[arg(
        long,
        env = "COMMENTS_ADMIN_TOKEN",
        hide_env_values = true,
        conflicts_with = "admin_token_file"
    )]
    pub admin_token: Option<String>,

    /// File holding the admin token (a mounted Kubernetes Secret); surrounding whitespace is
    /// ignored.
    #[arg(long, env = "COMMENTS_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,

    #[command(flatten)]
    pub otel: OtelConfig,
}

/// The standard OpenTelemetry variables, listed here so `--help` documents them and a bad value
/// stops start-up.
#[derive(Debug, Clone, Args)]
pub struct OtelConfig {
    /// OTLP collector endpoint; traces are off when unset.
    #[arg(long = "otlp-endpoint", env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub endpoint: Option<String>,

    /// OTLP protocol: grpc (port 4317) or http/protobuf (port 4318).
    #[arg(long = "otlp-protocol", env = "OTEL_EXPORTER_OTLP_PROTOCOL", default_value = "grpc",
          value_parser = ["grpc", "http/protobuf"])]
    pub protocol: String,

    /// service.name of the exported spans.
    #[arg(
        long = "otel-service-name",
        env = "OTEL_SERVICE_NAME",
        default_value = "comments"
    )]
    pub service_name: String,

    /// Extra resource attributes, key=value,key=value.
    #[arg(long = "otel-resource-attributes", env = "OTEL_RESOURCE_ATTRIBUTES")]
    pub resource_attributes: Option<String>,

    /// Sampler: always_on, always_off, traceidratio, parentbased_always_on,
    /// parentbased_always_off, parentbased_traceidratio.
    #[arg(long = "otel-traces-sampler", env = "OTEL_TRACES_SAMPLER", default_value = "parentbased_always_on",
          value_parser = ["always_on", "always_off", "traceidratio", "parentbased_always_on",
                          "parentbased_always_off", "parentbased_traceidratio"])]
    pub sampler: String,

    /// Sampler argument: the ratio (0 to 1) for the traceidratio samplers.
    #[arg(long = "otel-traces-sampler-arg", env = "OTEL_TRACES_SAMPLER_ARG", value_parser = parse_ratio)]
    pub sampler_arg: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Json,
    Pretty,
}

impl Config {
    /// Defaults for tests and embedding: both listeners on 127.0.0.1, port 0.
    pub fn for_tests(database_url: impl Into<String>) -> Self {
        let cli = Cli::parse_from([
            "comments",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--shutdown-delay",
            "0s",
        ]);
        Config {
            database_url: database_url.into(),
            ..cli.config
        }
    }

    /// What clap cannot check alone: settings that must agree with each other.
    pub fn validate(&self) -> Result<(), String> {
        // The request timeout abandons a request without waiting for its storage call: if it came
        // first, a write answered 503 could still commit (the storage timeout is the exact one).
        if self.request_timeout <= self.storage_timeout {
            return Err(format!(
                "COMMENTS_REQUEST_TIMEOUT ({:?}) must be longer than COMMENTS_STORAGE_TIMEOUT ({:?}): \
                 a write cut off by the request timeout could still be stored",
                self.request_timeout, self.storage_timeout
            ));
        }
        Ok(())
    }

    /// The database URL, from the file when one is given.
    pub fn database_url(&self) -> Result<String, String> {
        match &self.database_url_file {
            Some(path) => read_secret_file("COMMENTS_DATABASE_URL_FILE", path),
            None => Ok(self.database_url.clone()),
        }
    }

    /// The admin token, from the flag or the file; an unreadable or empty file is an error.
    pub fn admin_token(&self) -> Result<Option<String>, String> {
        if let Some(path) = &self.admin_token_file {
            return read_secret_file("COMMENTS_ADMIN_TOKEN_FILE", path).map(Some);
        }
        match &self.admin_token {
            Some(token) if token.trim().is_empty() => {
                Err("COMMENTS_ADMIN_TOKEN: must not be empty".into())
            }
            other => Ok(other.clone()),
        }
    }
}

/// A secret mounted as a file: its content without surrounding whitespace, never empty. Errors
/// name the variable and the path, never the content.
fn read_secret_file(variable: &str, path: &std::path::Path) -> Result<String, String> {
    let content = std::fs::read_to_string(path)
        .map_err(|err| format!("{variable}: cannot read {}: {err}", path.display()))?;
    let value = content.trim();
    if value.is_empty() {
        return Err(format!("{variable}: {} is empty", path.display()));
    }
    Ok(value.to_owned())
}

impl Cli {
    /// Parses flags and environment. A bad value prints one line naming the flag and its
    /// variable and exits 2; `--help` and `--version` print and exit 0.
    pub fn parse_or_exit() -> Self {
        Self::try_parse().unwrap_or_else(|err| exit_with(err))
    }
}

fn exit_with(err: clap::Error) -> ! {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if matches!(
        err.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        err.exit();
    }
    let rendered = err.to_string();
    let first = rendered
        .lines()
        .next()
        .unwrap_or("invalid arguments")
        .trim_start_matches("error: ");
    // Name the environment variable too, since in a pod that is where values come from.
    let env = match err.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(arg)) => env_of(arg),
        _ => None,
    };
    match env {
        Some(var) => eprintln!("comments: {first} (environment variable {var})"),
        None => eprintln!("comments: {first}"),
    }
    std::process::exit(2);
}

/// The environment variable behind a flag as clap prints it (`--listen <LISTEN>`).
fn env_of(arg: &str) -> Option<String> {
    let long = arg.trim_start_matches("--").split([' ', '=']).next()?;
    Cli::command()
        .get_arguments()
        .find(|a| a.get_long() == Some(long))
        .and_then(|a| a.get_env())
        .map(|env| env.to_string_lossy().into_owned())
}

fn parse_duration(raw: &str) -> Result<Duration, String> {
    humantime::parse_duration(raw.trim())
        .map_err(|err| format!("{err}; expected a duration such as 5s, 500ms or 1m"))
}

fn parse_rate(raw: &str) -> Result<f64, String> {
    match raw.trim().parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate >= 0.0 => Ok(rate),
        _ => Err("expected requests per second, 0 or more (0 turns the limit off)".into()),
    }
}

fn parse_ratio(raw: &str) -> Result<f64, String> {
    match raw.trim().parse::<f64>() {
        Ok(ratio) if (0.0..=1.0).contains(&ratio) => Ok(ratio),
        _ => Err("expected a number from 0 to 1".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn flags_name_their_environment_variables() {
        assert_eq!(
            env_of("--shutdown-delay <SHUTDOWN_DELAY>").as_deref(),
            Some("COMMENTS_SHUTDOWN_DELAY")
        );
        assert_eq!(
            env_of("--otel-traces-sampler-arg <SAMPLER_ARG>").as_deref(),
            Some("OTEL_TRACES_SAMPLER_ARG")
        );
    }

    #[test]
    fn durations_read_like_humans_write_them() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert!(parse_duration("soon").is_err());
    }
}
