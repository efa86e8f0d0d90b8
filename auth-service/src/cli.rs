//! The command line: `serve` (the default) and the operator commands
//! (users, API keys, migrations), listed in the README.

use crate::Application;
use crate::accounts::{self, Username};
use crate::api_keys;
use crate::config::Config;
use crate::state::AppState;
use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use shared::scope::Scopes;
use shared::secret::Secret;
use std::io::BufRead as _;
use uuid::Uuid;

#[derive(Parser, Debug)]
#[command(
    name = "auth-service",
    version,
    about = "Accounts, sessions, API keys and WebSocket tickets"
)]
pub struct Cli {
    #[command(flatten)]
    pub config: Config,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the HTTP server (the default).
    Serve,
    /// Create the database if needed, apply migrations, and exit.
    Migrate,
    /// Manage users.
    #[command(subcommand)]
    User(UserCommand),
    /// Manage API keys.
    #[command(subcommand, name = "api-key")]
    ApiKey(ApiKeyCommand),
}

#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Create a user; the password comes from AUTH_PASSWORD or the first line of stdin.
    Add {
        username: String,
        /// Scopes the user may give API keys they create themselves over HTTP.
        #[arg(long, default_value = "connect")]
        key_scopes: String,
        /// Succeed without changing anything if the user already exists (for
        /// scripts that set up a deployment and may run again).
        #[arg(long)]
        if_missing: bool,
    },
    /// Disable a user: logins, sessions, API keys and open sockets all stop working.
    Disable { username: String },
    /// Revoke every session of a user (logs them out everywhere).
    RevokeSessions { username: String },
    /// Show a user's failed-login counters as JSON: per address, the hourly
    /// budget for new addresses, and the addresses exempt from it.
    Lockout { username: String },
    /// Lift every login lock-out of a user (per address and hourly budget).
    Unlock { username: String },
}

#[derive(Subcommand, Debug)]
pub enum ApiKeyCommand {
    /// Issue an API key and print it once on stdout.
    Create {
        username: String,
        /// Comma-separated: connect, publish, admin, publish_any (publish to
        /// any channel over HTTP: the backend's scope).
        #[arg(long)]
        scopes: String,
        #[arg(long, default_value = "cli")]
        name: String,
    },
    /// List a user's keys (never the secrets).
    List { username: String },
    /// Revoke a key by id.
    Revoke { id: Uuid },
}

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let app = Application::build(cli.config).await?;
            app.run_until_stopped(shared::net::shutdown_signal()).await
        }
        Command::Migrate => {
            crate::db::connect_and_migrate(cli.config.database_url.expose(), 1).await?;
            tracing::info!("migrations applied");
            Ok(())
        }
        Command::User(command) => user_command(AppState::build(cli.config).await?, command).await,
        Command::ApiKey(command) => {
            api_key_command(AppState::build(cli.config).await?, command).await
        }
    }
}

async fn user_command(state: AppState, command: UserCommand) -> anyhow::Result<()> {
    match command {
        UserCommand::Add {
            username,
            key_scopes,
            if_missing,
        } => {
            let username = Username::parse(&username).map_err(anyhow::Error::msg)?;
            let key_scopes = Scopes::parse_list(&key_scopes)?;
            if let Some(scope) = key_scopes.iter().find(|s| !s.self_issuable()) {
                bail!(
                    "--key-scopes: `{scope}` cannot be self-issued; give it with `api-key create`"
                );
            }
            if if_missing
                && let Some(user) = accounts::find_by_username(&state.db, &username)
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?
            {
                eprintln_info(&format!(
                    "user {} ({}) exists; left as it is",
                    user.username, user.id
                ));
                return Ok(());
            }
            let password = read_password()?;
            let user = accounts::create_user(
                &state.db,
                &state.passwords,
                &username,
                &password,
                key_scopes,
            )
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
            eprintln_info(&format!("created user {} ({})", user.username, user.id));
        }
        UserCommand::Disable { username } => {
            let user = find_user(&state, &username).await?;
            crate::revocation::disable_user(&state, user.id)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            eprintln_info(&format!("disabled user {}", user.username));
        }
        UserCommand::RevokeSessions { username } => {
            let user = find_user(&state, &username).await?;
            let n = crate::revocation::revoke_all_sessions(&state, user.id)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            eprintln_info(&format!("revoked {n} session(s) of {}", user.username));
        }
        UserCommand::Lockout { username } => {
            let username = Username::parse(&username).map_err(anyhow::Error::msg)?;
            let report = crate::login_limits::report(&state, &username)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            print_stdout(&serde_json::to_string_pretty(&report)?);
        }
        UserCommand::Unlock { username } => {
            let username = Username::parse(&username).map_err(anyhow::Error::msg)?;
            let cleared = crate::login_limits::unlock(&state, &username)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            eprintln_info(&format!(
                "unlocked {username}: cleared {cleared} failed-login counter(s)"
            ));
        }
    }
    Ok(())
}

async fn api_key_command(state: AppState, command: ApiKeyCommand) -> anyhow::Result<()> {
    match command {
        ApiKeyCommand::Create {
            username,
            scopes,
            name,
        } => {
            let user = find_user(&state, &username).await?;
            let scopes = Scopes::parse_list(&scopes)?;
            let (key, info) = api_keys::create(&state.db, user.id, &name, scopes)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            eprintln_info(&format!(
                "created API key {} ({}) for {} with scopes {:?}; it is shown only now:",
                info.id,
                info.prefix,
                user.username,
                scopes.to_strings()
            ));
            print_stdout(key.expose());
        }
        ApiKeyCommand::List { username } => {
            let user = find_user(&state, &username).await?;
            let keys = api_keys::list(&state.db, user.id)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            print_stdout(&serde_json::to_string_pretty(&keys)?);
        }
        ApiKeyCommand::Revoke { id } => {
            if !crate::revocation::revoke_api_key(&state, id, None)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?
            {
                bail!("no API key with id {id}");
            }
            eprintln_info(&format!("revoked API key {id}"));
        }
    }
    Ok(())
}

async fn find_user(state: &AppState, username: &str) -> anyhow::Result<accounts::User> {
    let username = Username::parse(username).map_err(anyhow::Error::msg)?;
    accounts::find_by_username(&state.db, &username)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .with_context(|| format!("no user {username}"))
}

/// `AUTH_PASSWORD`, or the first line of stdin (so it never appears in `ps` or shell history).
fn read_password() -> anyhow::Result<Secret> {
    if let Ok(password) = std::env::var("AUTH_PASSWORD") {
        return Ok(Secret::new(password));
    }
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the password from stdin")?;
    let password = line.trim_end_matches(['\r', '\n']).to_owned();
    if password.is_empty() {
        bail!("no password: set AUTH_PASSWORD or pipe it on stdin");
    }
    Ok(Secret::new(password))
}

/// Command output for people goes to stderr, so stdout carries only data
/// (`KEY=$(auth-service api-key create …)` captures just the key).
#[allow(clippy::print_stderr)]
fn eprintln_info(message: &str) {
    eprintln!("{message}");
}

#[allow(clippy::print_stdout)]
fn print_stdout(data: &str) {
    println!("{data}");
}
