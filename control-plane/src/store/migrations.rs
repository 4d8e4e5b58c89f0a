//! The schema's migrations (`migrations/`), compiled into berthd. They are listed here by hand rather than
//! with `sqlx::migrate!`: that macro's crate builds SQLite and both database drivers a second time, for the
//! compiler, which costs every build about a minute. A test checks that this list is the directory.

use std::borrow::Cow;

use sqlx::SqlSafeStr;
use sqlx::migrate::{Migration, MigrationType, Migrator};

/// Each migration: its version and description (the file name's two halves) and its SQL.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (20261122000001, "bots", include_str!("../../../migrations/20261122000001_bots.sql")),
    (20261122000002, "bot network", include_str!("../../../migrations/20261122000002_bot_network.sql")),
    (20261123000003, "operations", include_str!("../../../migrations/20261123000003_operations.sql")),
    (20261123000004, "supervision", include_str!("../../../migrations/20261123000004_supervision.sql")),
    (20261123000005, "egress", include_str!("../../../migrations/20261123000005_egress.sql")),
    (20261123000006, "mcp servers", include_str!("../../../migrations/20261123000006_mcp_servers.sql")),
    (20261206000007, "disk", include_str!("../../../migrations/20261206000007_disk.sql")),
    (20261207000008, "nodes", include_str!("../../../migrations/20261207000008_nodes.sql")),
    (20261207000009, "bot node", include_str!("../../../migrations/20261207000009_bot_node.sql")),
    (20261207000010, "node subnet", include_str!("../../../migrations/20261207000010_node_subnet.sql")),
    (20261207000011, "event order", include_str!("../../../migrations/20261207000011_event_order.sql")),
];

/// The migrator over [`MIGRATIONS`]: versions, descriptions and checksums as `sqlx::migrate!` made them,
/// so databases it migrated carry on.
pub fn migrator() -> Migrator {
    Migrator::with_migrations(
        MIGRATIONS
            .iter()
            .map(|&(version, description, sql)| {
                Migration::new(version, Cow::Borrowed(description), MigrationType::Simple, sql.into_sql_str(), false)
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::MIGRATIONS;

    /// A file added to `migrations/` and not listed here would never run.
    #[test]
    fn the_list_is_the_directory() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations");
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .expect("read migrations/")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        let listed: Vec<String> =
            MIGRATIONS.iter().map(|(v, d, _)| format!("{v}_{}.sql", d.replace(' ', "_"))).collect();
        assert_eq!(files, listed);
        for (file, (_, _, sql)) in files.iter().zip(MIGRATIONS) {
            let on_disk = std::fs::read_to_string(dir.join(file)).expect("read a migration");
            assert_eq!(&on_disk, sql, "{file}");
        }
    }
}
