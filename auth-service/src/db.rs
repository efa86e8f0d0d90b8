//! The Postgres pool: created database, applied migrations.

use anyhow::Context as _;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{AssertSqlSafe, Connection as _, Executor as _, PgConnection, PgPool};
use std::str::FromStr as _;
use std::time::Duration;

/// Opens the pool, first creating the database if it does not exist, then
/// applies the migrations in `migrations/` (serialised across processes by
/// sqlx's advisory lock, so several instances may start at once).
pub async fn connect_and_migrate(url: &str, pool_size: u32) -> anyhow::Result<PgPool> {
    let options =
        PgConnectOptions::from_str(url).context("DATABASE_URL is not a valid Postgres URL")?;
    ensure_database_exists(&options).await?;
    let pool = PgPoolOptions::new()
        .max_connections(pool_size.max(1))
        .acquire_timeout(Duration::from_secs(3))
        .connect_with(options)
        .await
        .context("connecting to Postgres")?;
    sqlx::migrate!("../migrations")
        .run(&pool)
        .await
        .context("applying migrations")?;
    Ok(pool)
}

async fn ensure_database_exists(options: &PgConnectOptions) -> anyhow::Result<()> {
    let Some(name) = options.get_database().map(str::to_owned) else {
        return Ok(());
    };
    let mut conn = PgConnection::connect_with(&options.clone().database("postgres"))
        .await
        .context("connecting to Postgres (database `postgres`) to check the database exists")?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut conn)
            .await?;
    if !exists {
        let quoted = name.replace('"', "\"\"");
        match conn
            .execute(AssertSqlSafe(format!("CREATE DATABASE \"{quoted}\"")))
            .await
        {
            Ok(_) => tracing::info!(database = %name, "created database"),
            // Another instance created it between our check and our CREATE.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => {}
            Err(e) => return Err(e).context("creating the database"),
        }
    }
    Ok(())
}
