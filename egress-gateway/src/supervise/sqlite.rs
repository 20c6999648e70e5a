//! The SQLite store (the default): one database file, shared by the bottles that name
//! it, each store scoped to its bottle. WAL, a busy timeout, and the protocol enforced in
//! the schema itself, so another tool answering with plain SQL is held to it: a response
//! only for a pending proposal, at most one, and every decision copied to `audit` by a
//! trigger.
use std::{
    fs,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    sync::Mutex,
    time::Duration,
};

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use super::{
    protocol::{AuditEntry, Closed, Payload, Proposal, Response, Scope, Status},
    store::{self, Store, StoreError},
};

/// How long a writer waits for another's lock before the operation fails (closed).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS proposals (
    id            TEXT PRIMARY KEY,
    bottle        TEXT NOT NULL,
    tool          TEXT NOT NULL,
    host          TEXT NOT NULL,
    method        TEXT NOT NULL,
    path          TEXT NOT NULL,
    reason        TEXT NOT NULL,
    context       TEXT NOT NULL,      -- the match replaced by ********, never the value
    justification TEXT NOT NULL,
    payload_hash  TEXT NOT NULL,
    created_at    INTEGER NOT NULL,   -- seconds since the epoch
    closed_at     INTEGER,            -- set by the gateway when the hold ends
    closed_reason TEXT                -- decided | timeout | abandoned | covered | failed
);
CREATE INDEX IF NOT EXISTS proposals_open ON proposals (bottle, closed_at);
CREATE TABLE IF NOT EXISTS responses (
    proposal_id TEXT PRIMARY KEY REFERENCES proposals (id),
    status      TEXT NOT NULL,        -- approved | modified | rejected
    notes       TEXT NOT NULL DEFAULT '',
    scope       TEXT,                 -- once | gateway | persist; NULL means gateway
    decided_by  TEXT,
    decided_at  INTEGER
);
CREATE TABLE IF NOT EXISTS audit (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    proposal_id TEXT NOT NULL,
    bottle      TEXT NOT NULL,
    host        TEXT NOT NULL,
    method      TEXT NOT NULL,
    path        TEXT NOT NULL,
    status      TEXT NOT NULL,
    scope       TEXT NOT NULL,
    reason      TEXT NOT NULL,
    decided_by  TEXT,
    decided_at  INTEGER
);
CREATE TABLE IF NOT EXISTS counters (
    bottle TEXT NOT NULL,
    name   TEXT NOT NULL,             -- refused_over_cap | abandoned
    value  INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (bottle, name)
);
CREATE TRIGGER IF NOT EXISTS responses_only_while_pending BEFORE INSERT ON responses
WHEN NOT EXISTS (SELECT 1 FROM proposals WHERE id = NEW.proposal_id AND closed_at IS NULL)
BEGIN
    SELECT RAISE(ABORT, 'the proposal is not pending');
END;
CREATE TRIGGER IF NOT EXISTS audit_every_decision AFTER INSERT ON responses
WHEN NEW.status IN ('approved', 'modified', 'rejected')
BEGIN
    INSERT INTO audit (proposal_id, bottle, host, method, path, status, scope, reason, decided_by, decided_at)
    SELECT p.id, p.bottle, p.host, p.method, p.path, NEW.status, COALESCE(NEW.scope, 'gateway'), NEW.notes,
           NEW.decided_by, NEW.decided_at
    FROM proposals p WHERE p.id = NEW.proposal_id;
END;
";

const PROPOSAL_COLUMNS: &str =
    "id, bottle, tool, host, method, path, reason, context, justification, payload_hash, created_at";

pub struct SqliteStore {
    path: PathBuf,
    bottle: String,
    conn: Mutex<Connection>,
}

impl SqliteStore {
    /// Creates the database (0600, in a private directory) if missing and its schema;
    /// refuses a file or directory a bottle could write to. The gateway's way in.
    pub fn prepare(path: &Path, bottle: &str) -> Result<SqliteStore, StoreError> {
        let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        store::prepare_private_dir(dir)?;
        if !path.exists() {
            // An empty file is an empty database; creating it here fixes its mode, and
            // SQLite gives the -wal and -shm files the same.
            fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| StoreError::Db { path: path.to_path_buf(), reason: e.to_string() })?;
        }
        store::check_private_file(path)?;
        let store = Self::connect(path, bottle)?;
        store.migrate()?;
        Ok(store)
    }

    /// An existing database, checked but not created: the operator's way in. A missing
    /// file is `None` (the gateway never ran with it).
    pub fn open_existing(path: &Path, bottle: &str) -> Result<Option<SqliteStore>, StoreError> {
        if !path.exists() {
            return Ok(None);
        }
        if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            store::check_private_dir(dir)?;
        }
        store::check_private_file(path)?;
        let store = Self::connect(path, bottle)?;
        store.migrate()?;
        Ok(Some(store))
    }

    /// The schema, and the columns later versions added to an older database.
    fn migrate(&self) -> Result<(), StoreError> {
        let conn = self.lock();
        conn.execute_batch(SCHEMA).map_err(|e| self.db(e))?;
        let has_reason: bool = conn
            .query_row("SELECT COUNT(*) FROM pragma_table_info('proposals') WHERE name = 'closed_reason'", [], |r| {
                r.get::<_, i64>(0)
            })
            .map_err(|e| self.db(e))?
            > 0;
        if !has_reason {
            conn.execute_batch("ALTER TABLE proposals ADD COLUMN closed_reason TEXT").map_err(|e| self.db(e))?;
        }
        Ok(())
    }

    fn connect(path: &Path, bottle: &str) -> Result<SqliteStore, StoreError> {
        let err = |e: rusqlite::Error| StoreError::Db { path: path.to_path_buf(), reason: e.to_string() };
        let conn =
            Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX)
                .map_err(err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(err)?;
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0)).map_err(err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Db {
                path: path.to_path_buf(),
                reason: format!("journal mode is {mode}, not WAL"),
            });
        }
        conn.execute_batch("PRAGMA foreign_keys = ON; PRAGMA synchronous = FULL;").map_err(err)?;
        Ok(SqliteStore { path: path.to_path_buf(), bottle: bottle.to_string(), conn: Mutex::new(conn) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn db(&self, e: rusqlite::Error) -> StoreError {
        StoreError::Db { path: self.path.clone(), reason: e.to_string() }
    }

    fn query_proposals(&self, filter: &str, args: &[&dyn rusqlite::ToSql]) -> Result<Vec<Proposal>, StoreError> {
        let conn = self.lock();
        let sql = format!("SELECT {PROPOSAL_COLUMNS} FROM proposals p WHERE p.bottle = ?1 AND {filter}");
        let mut stmt = conn.prepare(&sql).map_err(|e| self.db(e))?;
        let mut all: Vec<&dyn rusqlite::ToSql> = vec![&self.bottle];
        all.extend_from_slice(args);
        let rows = stmt.query_map(all.as_slice(), row_to_proposal).map_err(|e| self.db(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.db(e))
    }
}

fn row_to_proposal(r: &rusqlite::Row<'_>) -> rusqlite::Result<Proposal> {
    Ok(Proposal {
        id: r.get(0)?,
        bottle: r.get(1)?,
        tool: r.get(2)?,
        payload: Payload { host: r.get(3)?, method: r.get(4)?, path: r.get(5)?, reason: r.get(6)?, context: r.get(7)? },
        justification: r.get(8)?,
        payload_hash: r.get(9)?,
        created_at: r.get::<_, i64>(10)?.max(0) as u64,
    })
}

fn parse_scope(id: &str, text: Option<String>) -> Result<Option<Scope>, StoreError> {
    text.map(|s| s.parse::<Scope>()).transpose().map_err(|reason| StoreError::Malformed { id: id.to_string(), reason })
}

impl Store for SqliteStore {
    fn location(&self) -> &Path {
        &self.path
    }

    fn write_proposal(&self, p: &Proposal) -> Result<(), StoreError> {
        let conn = self.lock();
        conn.execute(
            &format!(
                "INSERT INTO proposals ({PROPOSAL_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"
            ),
            params![
                p.id,
                p.bottle,
                p.tool,
                p.payload.host,
                p.payload.method,
                p.payload.path,
                p.payload.reason,
                p.payload.context,
                p.justification,
                p.payload_hash,
                p.created_at as i64
            ],
        )
        .map_err(|e| self.db(e))?;
        Ok(())
    }

    fn pending(&self) -> Result<Vec<Proposal>, StoreError> {
        self.query_proposals(
            "p.closed_at IS NULL AND NOT EXISTS (SELECT 1 FROM responses r WHERE r.proposal_id = p.id) \
             ORDER BY p.created_at, p.id",
            &[],
        )
    }

    fn proposal(&self, id: &str) -> Result<Option<Proposal>, StoreError> {
        Ok(self.query_proposals("p.id = ?2", &[&id])?.into_iter().next())
    }

    fn write_response(&self, id: &str, r: &Response) -> Result<(), StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(|e| self.db(e))?;
        let state: Option<(Option<i64>, bool)> = tx
            .query_row(
                "SELECT p.closed_at, EXISTS (SELECT 1 FROM responses r WHERE r.proposal_id = p.id) \
                 FROM proposals p WHERE p.id = ?1 AND p.bottle = ?2",
                params![id, self.bottle],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()
            .map_err(|e| self.db(e))?;
        match state {
            None => return Err(StoreError::UnknownId(id.to_string())),
            Some((_, true)) => return Err(StoreError::AlreadyDecided(id.to_string())),
            Some((Some(_), false)) => {
                let why: Option<String> = tx
                    .query_row("SELECT closed_reason FROM proposals WHERE id = ?1", params![id], |r| r.get(0))
                    .map_err(|e| self.db(e))?;
                let why = why.and_then(|w| w.parse().ok());
                return Err(StoreError::Closed { id: id.to_string(), why });
            }
            Some((None, false)) => {}
        }
        tx.execute(
            "INSERT INTO responses (proposal_id, status, notes, scope, decided_by, decided_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                id,
                r.status.as_str(),
                r.notes,
                r.scope.map(Scope::as_str),
                r.decided_by,
                r.decided_at.map(|t| t as i64)
            ],
        )
        .map_err(|e| self.db(e))?;
        tx.commit().map_err(|e| self.db(e))
    }

    fn read_response(&self, id: &str) -> Result<Option<Response>, StoreError> {
        type Row = (String, String, Option<String>, Option<String>, Option<i64>);
        let row: Option<Row> = self
            .lock()
            .query_row(
                "SELECT status, notes, scope, decided_by, decided_at FROM responses WHERE proposal_id = ?1",
                params![id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .optional()
            .map_err(|e| self.db(e))?;
        let Some((status, notes, scope, decided_by, decided_at)) = row else { return Ok(None) };
        let status = status.parse::<Status>().map_err(|reason| StoreError::Malformed { id: id.to_string(), reason })?;
        Ok(Some(Response {
            status,
            notes,
            scope: parse_scope(id, scope)?,
            decided_by,
            decided_at: decided_at.map(|t| t.max(0) as u64),
        }))
    }

    fn close(&self, id: &str, why: Closed) -> Result<(), StoreError> {
        self.lock()
            .execute(
                "UPDATE proposals SET closed_at = ?1, closed_reason = ?2 WHERE id = ?3 AND bottle = ?4 \
                 AND closed_at IS NULL",
                params![super::protocol::now() as i64, why.as_str(), id, self.bottle],
            )
            .map_err(|e| self.db(e))?;
        Ok(())
    }

    fn closed(&self, id: &str) -> Result<Option<Closed>, StoreError> {
        let why: Option<Option<String>> = self
            .lock()
            .query_row(
                "SELECT closed_reason FROM proposals WHERE id = ?1 AND bottle = ?2 AND closed_at IS NOT NULL",
                params![id, self.bottle],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.db(e))?;
        Ok(why.flatten().and_then(|w| w.parse().ok()))
    }

    fn close_stale(&self) -> Result<usize, StoreError> {
        self.lock()
            .execute(
                "UPDATE proposals SET closed_at = ?1, closed_reason = 'abandoned' WHERE bottle = ?2 \
                 AND closed_at IS NULL",
                params![super::protocol::now() as i64, self.bottle],
            )
            .map_err(|e| self.db(e))
    }

    fn pending_ids(&self) -> Result<Vec<String>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached(
                "SELECT p.id FROM proposals p WHERE p.bottle = ?1 AND p.closed_at IS NULL \
                 AND NOT EXISTS (SELECT 1 FROM responses r WHERE r.proposal_id = p.id)",
            )
            .map_err(|e| self.db(e))?;
        let rows = stmt.query_map(params![self.bottle], |r| r.get(0)).map_err(|e| self.db(e))?;
        rows.collect::<Result<Vec<String>, _>>().map_err(|e| self.db(e))
    }

    fn bump(&self, name: &str, delta: u64) -> Result<(), StoreError> {
        self.lock()
            .execute(
                "INSERT INTO counters (bottle, name, value) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (bottle, name) DO UPDATE SET value = value + excluded.value",
                params![self.bottle, name, delta as i64],
            )
            .map_err(|e| self.db(e))?;
        Ok(())
    }

    fn counters(&self) -> Result<std::collections::BTreeMap<String, u64>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare("SELECT name, value FROM counters WHERE bottle = ?1").map_err(|e| self.db(e))?;
        let rows = stmt
            .query_map(params![self.bottle], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?.max(0) as u64)))
            .map_err(|e| self.db(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.db(e))
    }

    fn history(&self) -> Result<Vec<AuditEntry>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare(
                "SELECT proposal_id, bottle, host, method, path, status, scope, reason, decided_by, decided_at \
                 FROM audit WHERE bottle = ?1 ORDER BY seq",
            )
            .map_err(|e| self.db(e))?;
        type Row = (String, String, String, String, String, String, String, String, Option<String>, Option<i64>);
        let rows = stmt
            .query_map(params![self.bottle], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                    r.get(8)?,
                    r.get(9)?,
                ))
            })
            .map_err(|e| self.db(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (proposal_id, bottle, host, method, path, status, scope, reason, decided_by, decided_at): Row =
                row.map_err(|e| self.db(e))?;
            // The trigger audits known statuses only; a misspelt scope is an error, not skipped.
            let status = status.parse().map_err(|reason| StoreError::Malformed { id: proposal_id.clone(), reason })?;
            let scope = parse_scope(&proposal_id, Some(scope))?.unwrap_or_default();
            out.push(AuditEntry {
                proposal_id,
                bottle,
                host,
                method,
                path,
                status,
                scope,
                reason,
                decided_by,
                decided_at: decided_at.map(|t| t.max(0) as u64),
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    use super::*;
    use crate::supervise::store::tests::{payload, protocol_suite, temp_dir};

    #[test]
    fn sqlite_passes_the_protocol_suite() {
        let dir = temp_dir("sqlite");
        let path = dir.join("supervise.db");
        let store = SqliteStore::prepare(&path, "demo").unwrap();
        let raw = Connection::open(&path).unwrap();
        protocol_suite(&store, &|id, status| {
            raw.execute("INSERT INTO responses (proposal_id, status) VALUES (?1, ?2)", params![id, status]).unwrap();
        });
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
    }

    #[test]
    fn bottles_sharing_a_database_see_only_their_own_proposals() {
        let path = temp_dir("sqlite-shared").join("s.db");
        let (a, b) = (SqliteStore::prepare(&path, "a").unwrap(), SqliteStore::prepare(&path, "b").unwrap());
        let p = Proposal::new("a", payload("x.test"));
        a.write_proposal(&p).unwrap();
        assert!(b.pending().unwrap().is_empty());
        assert!(matches!(
            b.write_response(&p.id, &Response::by_operator(Status::Approved, "x", None)),
            Err(StoreError::UnknownId(_))
        ));
        assert_eq!(a.pending().unwrap().len(), 1);
    }

    #[test]
    fn the_schema_holds_foreign_tools_to_the_protocol() {
        let path = temp_dir("sqlite-raw").join("s.db");
        let store = SqliteStore::prepare(&path, "demo").unwrap();
        let p = Proposal::new("demo", payload("x.test"));
        store.write_proposal(&p).unwrap();
        store.close(&p.id, Closed::Timeout).unwrap();
        let raw = Connection::open(&path).unwrap();
        let late = raw.execute("INSERT INTO responses (proposal_id, status) VALUES (?1, 'approved')", params![p.id]);
        assert!(late.is_err(), "a response to a closed proposal was accepted");
        assert!(store.history().unwrap().is_empty());
    }

    #[test]
    fn refuses_a_database_a_bottle_could_write() {
        let dir = temp_dir("sqlite-perm");
        let path = dir.join("s.db");
        SqliteStore::prepare(&path, "demo").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o666)).unwrap();
        assert!(matches!(SqliteStore::prepare(&path, "demo"), Err(StoreError::Unsafe { .. })));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        assert!(matches!(SqliteStore::open_existing(&path, "demo"), Err(StoreError::Unsafe { .. })));
        assert!(SqliteStore::open_existing(&dir.join("none.db"), "demo").unwrap().is_none());
    }
}
