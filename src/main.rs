use std::process::ExitCode;

use comments::config::{Cli, Command};
use comments::{App, healthcheck, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse_or_exit();
    match cli.command {
        Some(Command::Healthcheck { addr, timeout }) => {
            let addr = addr.unwrap_or_else(|| healthcheck::probe_addr(cli.config.listen));
            match healthcheck::check(addr, timeout) {
                Ok(()) => ExitCode::SUCCESS,
                Err(reason) => {
                    eprintln!("comments healthcheck: {reason}");
                    ExitCode::FAILURE
                }
            }
        }
        Some(Command::Serve) | None => serve(cli.config).await,
    }
}

async fn serve(config: comments::config::Config) -> ExitCode {
    let telemetry = match telemetry::init(config.log_format, &config.otel) {
        Ok(telemetry) => telemetry,
        Err(err) => {
            eprintln!("comments: {err}");
            return ExitCode::from(2);
        }
    };
    let outcome = match App::build(&config).await {
        Ok(app) => app.run().await,
        Err(err) => Err(err),
    };
    if let Err(err) = &outcome {
        tracing::error!(error = %err, "comments stopped with an error");
    }
    telemetry.shutdown().await;
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("comments: {err}");
            ExitCode::FAILURE
        }
    }
}
