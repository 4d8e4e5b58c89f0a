//! Durable state with sqlx: a SQLite file by default, PostgreSQL by URL, one set of portable migrations
//! (`migrations/`). This is the only module that runs SQL.

mod bots;
mod events;
mod mcp;
mod migrations;
mod nodes;
mod ops;
pub mod records;

pub use bots::BotPages;
pub use events::EventListener;
pub use nodes::{Beat, BotOwner, NameTaken};

use sqlx::AnyPool;
use sqlx::any::{AnyPoolOptions, install_default_drivers};

/// SQLite connections for reads.
const READERS: u32 = 4;

/// Why a store call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{what} not found")]
    NotFound { what: String },
    #[error("{what} already exists")]
    AlreadyExists { what: String },
    #[error("the database is unavailable while trying to {op}")]
    Unavailable {
        op: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("the database holds a corrupt row: {0}")]
    Corrupt(String),
    #[error("migrating the database failed")]
    Migrate(#[source] sqlx::migrate::MigrateError),
}

/// Connection pools to the control plane's database: one for writes and one for reads. With SQLite the
/// writer is a single connection (SQLite serialises writers anyway, and one connection never meets
/// "database is locked" from another of ours), while reads get their own connections: in WAL mode readers
/// neither wait for the writer nor for each other, so `GetBot` from many clients is not serialised
/// behind one connection. With PostgreSQL both are the same pool.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    reader: AnyPool,
    /// The PostgreSQL URL, for connections of their own (LISTEN); `None` with SQLite.
    postgres: Option<String>,
}

impl Store {
    /// Connects to `url` (`sqlite://PATH?mode=rwc` or `postgres://…`) and runs pending migrations.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        install_default_drivers();
        // SQLite serialises writers anyway; one connection avoids "database is locked" between our own.
        let max = if url.starts_with("sqlite:") { 1 } else { 8 };
        let pool = AnyPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(std::time::Duration::from_secs(10))
            .connect(url)
            .await
            .map_err(|source| StoreError::Unavailable { op: "connect".into(), source })?;
        if url.starts_with("sqlite:") {
            // Write-ahead logging: one fsync per commit instead of several (synchronous stays FULL, so a
            // committed write survives a crash of berthd or of the machine), and readers never block it.
            sqlx::query("PRAGMA journal_mode = WAL")
                .execute(&pool)
                .await
                .map_err(|source| StoreError::Unavailable { op: "enable write-ahead logging".into(), source })?;
        }
        migrations::migrator().run(&pool).await.map_err(StoreError::Migrate)?;
        let reader = if url.starts_with("sqlite:") {
            AnyPoolOptions::new()
                .max_connections(READERS)
                .acquire_timeout(std::time::Duration::from_secs(10))
                .connect(url)
                .await
                .map_err(|source| StoreError::Unavailable { op: "connect a reader".into(), source })?
        } else {
            pool.clone()
        };
        let postgres = url.starts_with("postgres").then(|| url.to_string());
        Ok(Store { pool, reader, postgres })
    }

    /// The pool for statements that write.
    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// The pool for statements that only read.
    pub(crate) fn reader(&self) -> &AnyPool {
        &self.reader
    }
}

impl StoreError {
    /// Whether the database refused the statement's data (a value it cannot hold, a NOT NULL or CHECK
    /// constraint), rather than failed to run it: trying the same again will not help. A unique violation
    /// is not counted: it can be a race that a second try wins.
    pub fn is_refused_data(&self) -> bool {
        use sqlx::error::ErrorKind;
        let StoreError::Unavailable { source: sqlx::Error::Database(e), .. } = self else { return false };
        matches!(e.kind(), ErrorKind::NotNullViolation | ErrorKind::CheckViolation)
            || e.code().is_some_and(|c| c.len() == 5 && c.starts_with("22"))
    }
}

fn unavailable(op: &str) -> impl FnOnce(sqlx::Error) -> StoreError + '_ {
    move |source| StoreError::Unavailable { op: op.to_string(), source }
}

/// What a database failure means to a caller.
impl From<StoreError> for crate::error::Error {
    fn from(e: StoreError) -> crate::error::Error {
        use crate::error::Error;
        match e {
            StoreError::NotFound { what } => Error::NotFound(format!("{what} not found")),
            StoreError::AlreadyExists { what } => Error::AlreadyExists(format!("{what} already exists")),
            e @ StoreError::Unavailable { .. } => Error::Unavailable(crate::error::with_id(&e)),
            e => Error::internal("database failure", e),
        }
    }
}
