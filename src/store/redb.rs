//! The embedded store on redb: the schema, its key encoding, and durable commits.
//!
//! This header is the one description of the schema; `docs/` points here.
//!
//! # Schema (version 3)
//!
//! | table        | key                         | value                                  |
//! |--------------|-----------------------------|----------------------------------------|
//! | `meta`       | `"schema_version"`, `"serial"`, `"assignment_index"`, `"zone_fingerprint"` | u64 |
//! | `nodes`      | node name                   | JSON of [`Node`]                       |
//! | `containers` | `"<user>/<stack>/<name>"`   | [`Container`] in the binary form of [`codec`](super::codec) (tombstones included); rows from schema 1 are JSON and are read as such |
//! | `lost`       | node name                   | `()`: the node's lease had lapsed when last published |
//! | `user_tokens`| SHA-256 (hex) of a user token | the user it acts for                 |
//! | `user_limits`| user name                   | JSON of [`Limits`](crate::model::Limits): what an admin allows the user |
//! | `stacks`     | `"<user>/<stack>"`          | JSON of [`StackRecord`]                |
//! | `assignments`| `"<user>/<stack>/<name>"`   | JSON of [`Assignment`](crate::model::Assignment): where placement put a container |
//! | `journal`    | serial (u64) a difference leads to | the difference's bytes (`snapshot::journal`), oldest trimmed first |
//! | `floors`     | node name                   | u64: the highest generation of the node's containers whose tombstones were removed (`--tombstone-retention`); a report of an unknown container from the node at or below it is stale |
//!
//! `zone_fingerprint` is a hash of the zone file and the record policy that the stored journal
//! was computed with. A different fingerprint at start-up means the stored zone can no longer
//! be rebuilt exactly, so the journal starts over.
//!
//! Values are JSON so a record can be read with any tool and new optional fields can be added
//! without a migration, except containers: there are as many as everything else together, so
//! they take a compact binary form (schema 2). A schema-1 database opens as schema 3 and its
//! JSON rows are rewritten as their containers change; older versions of stackdns then refuse
//! it. Schema 3 adds the `floors` table and the stop time of a tombstone (a flag and a field of
//! the binary form, which schema 2 readers would refuse). Keys are labels joined by `/`, which a label cannot contain.
//!
//! # Update protocol
//!
//! Only the control plane's single writer calls [`Store::commit`]: it gathers the changes of
//! many requests into one transaction, commits it durably (one fsync), and only then answers
//! the requests and publishes the snapshot. After a crash the database opens at the last
//! durable commit, so every acknowledged write is there.

use std::path::Path;

use ::redb::{Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

#[cfg(doc)]
use super::StackRecord;
use super::{Batch, JournalWrite, Loaded, Op, Store, StoreError, codec};
#[cfg(doc)]
use crate::model::Node;
use crate::model::{Container, ContainerKey, Label};

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const NODES: TableDefinition<&str, &[u8]> = TableDefinition::new("nodes");
const CONTAINERS: TableDefinition<&str, &[u8]> = TableDefinition::new("containers");
const LOST: TableDefinition<&str, ()> = TableDefinition::new("lost");
const USER_TOKENS: TableDefinition<&str, &str> = TableDefinition::new("user_tokens");
const USER_LIMITS: TableDefinition<&str, &[u8]> = TableDefinition::new("user_limits");
const STACKS: TableDefinition<&str, &[u8]> = TableDefinition::new("stacks");
const ASSIGNMENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("assignments");
const JOURNAL: TableDefinition<u64, &[u8]> = TableDefinition::new("journal");
const FLOORS: TableDefinition<&str, u64> = TableDefinition::new("floors");

const SCHEMA_VERSION: u64 = 3;
const KEY_SCHEMA: &str = "schema_version";
const KEY_SERIAL: &str = "serial";
const KEY_FINGERPRINT: &str = "zone_fingerprint";
const KEY_ASSIGNMENT_INDEX: &str = "assignment_index";

/// Any redb error, for `map_err`.
fn db(e: impl Into<::redb::Error>) -> StoreError {
    StoreError::Database(e.into())
}

/// The key of a stack record.
fn stack_key(user: &Label, stack: &Label) -> String {
    format!("{user}/{stack}")
}

/// The key of a container or an assignment: labels cannot contain '/', so it is unambiguous.
fn container_key(key: &ContainerKey) -> String {
    format!("{}/{}/{}", key.user, key.stack, key.name)
}

/// Page cache the server gives redb by default, in MiB (`--db-cache-mb`).
pub const DEFAULT_CACHE_MB: usize = 8;

/// The database file, opened.
pub struct RedbStore {
    path: std::path::PathBuf,
    cache_bytes: usize,
    /// Only the writer uses the store; the lock is for the reopen below, never contended.
    db: std::sync::Mutex<Opened>,
}

struct Opened {
    /// `None` after a reopen failed.
    db: Option<Database>,
    /// An operation failed: redb refuses every later one after an I/O error (`PreviousIo`)
    /// until the file is opened again, so it is, before the next commit or load.
    reopen: bool,
}

impl RedbStore {
    /// Opens (or creates) the database file, with `cache_bytes` of page cache, and checks its
    /// schema version.
    pub fn open(path: &Path, cache_bytes: usize) -> Result<Self, StoreError> {
        let db = open_database(path, cache_bytes)?;
        Ok(Self {
            path: path.to_owned(),
            cache_bytes,
            db: std::sync::Mutex::new(Opened {
                db: Some(db),
                reopen: false,
            }),
        })
    }

    /// Runs `f` on the database, opening it again first if the last operation failed; a
    /// failure of `f` marks it for reopening.
    fn with<T>(&self, f: impl FnOnce(&Database) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let mut opened = self.db.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if opened.reopen || opened.db.is_none() {
            // The old handle goes first: it holds the file's lock.
            opened.db = None;
            opened.db = Some(open_database(&self.path, self.cache_bytes)?);
            opened.reopen = false;
            tracing::info!(path = %self.path.display(), "database opened again after a failure");
        }
        let Some(db) = opened.db.as_ref() else {
            return Err(StoreError::Closed);
        };
        let result = f(db);
        if result.is_err() {
            opened.reopen = true;
        }
        result
    }
}

/// Opens the file (through the fault-injecting backend if `STACKDNS_STORAGE_FAULTS` is set,
/// see [`faults`](super::faults)) and brings its schema up to date.
fn open_database(path: &Path, cache_bytes: usize) -> Result<Database, StoreError> {
    let open_error = |e: ::redb::DatabaseError| StoreError::Open {
        path: path.display().to_string(),
        source: Box::new(e),
    };
    let mut builder = Database::builder();
    builder.set_cache_size(cache_bytes);
    let database = match std::env::var_os(super::faults::CONTROL_ENV) {
        None => builder.create(path).map_err(open_error)?,
        Some(control) => {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)
                .map_err(|e| open_error(e.into()))?;
            let backend = super::faults::FaultyBackend::new(file, control.into()).map_err(open_error)?;
            builder.create_with_backend(backend).map_err(open_error)?
        }
    };
    let txn = database.begin_write().map_err(db)?;
    {
        let mut meta = txn.open_table(META).map_err(db)?;
        let found = meta.get(KEY_SCHEMA).map_err(db)?.map(|v| v.value());
        match found {
            Some(v) if v > SCHEMA_VERSION => {
                return Err(StoreError::NewerSchema {
                    found: v,
                    known: SCHEMA_VERSION,
                });
            }
            // Schemas 1 and 2 differ only in how containers are written and in a table
            // that starts empty; their rows stay readable: from now on the file is schema 3.
            Some(v) if v == SCHEMA_VERSION => {}
            _ => {
                meta.insert(KEY_SCHEMA, SCHEMA_VERSION).map_err(db)?;
            }
        }
        txn.open_table(NODES).map_err(db)?;
        txn.open_table(CONTAINERS).map_err(db)?;
        txn.open_table(LOST).map_err(db)?;
        txn.open_table(USER_TOKENS).map_err(db)?;
        txn.open_table(USER_LIMITS).map_err(db)?;
        txn.open_table(STACKS).map_err(db)?;
        txn.open_table(ASSIGNMENTS).map_err(db)?;
        txn.open_table(JOURNAL).map_err(db)?;
        txn.open_table(FLOORS).map_err(db)?;
    }
    txn.commit().map_err(db)?;
    Ok(database)
}

impl Store for RedbStore {
    /// Reads every record.
    fn load(&self) -> Result<Loaded, StoreError> {
        self.with(load)
    }

    /// Applies the batch's ops, journal change and serial in one durable transaction.
    fn commit(&self, batch: Batch<'_>) -> Result<(), StoreError> {
        self.with(|database| commit(database, batch))
    }
}

fn load(database: &Database) -> Result<Loaded, StoreError> {
    let txn = database.begin_read().map_err(db)?;
    let meta = txn.open_table(META).map_err(db)?;
    let serial = meta.get(KEY_SERIAL).map_err(db)?.map_or(0, |v| v.value()) as u32;
    let fingerprint = meta.get(KEY_FINGERPRINT).map_err(db)?.map(|v| v.value());
    let nodes = read_all(&txn.open_table(NODES).map_err(db)?, "nodes", json)?;
    let containers = read_all(&txn.open_table(CONTAINERS).map_err(db)?, "containers", container)?;
    let mut lost = Vec::new();
    for row in txn.open_table(LOST).map_err(db)?.iter().map_err(db)? {
        let (name, _) = row.map_err(db)?;
        lost.push(
            Label::parse("node", name.value()).map_err(|e| StoreError::Corrupt {
                table: "lost",
                key: name.value().to_owned(),
                source: e.into(),
            })?,
        );
    }
    let assignment_index = meta
        .get(KEY_ASSIGNMENT_INDEX)
        .map_err(db)?
        .map_or(0, |v| v.value());
    let stacks = read_all(&txn.open_table(STACKS).map_err(db)?, "stacks", json)?;
    let assignments = read_all(&txn.open_table(ASSIGNMENTS).map_err(db)?, "assignments", json)?;
    let mut user_limits = Vec::new();
    for row in txn.open_table(USER_LIMITS).map_err(db)?.iter().map_err(db)? {
        let (user, value) = row.map_err(db)?;
        let corrupt = |source: Box<dyn std::error::Error + Send + Sync>| StoreError::Corrupt {
            table: "user_limits",
            key: user.value().to_owned(),
            source,
        };
        let name = Label::parse("user", user.value()).map_err(|e| corrupt(e.into()))?;
        let limits = serde_json::from_slice(value.value()).map_err(|e| corrupt(e.into()))?;
        user_limits.push((name, limits));
    }
    let mut user_tokens = Vec::new();
    for row in txn.open_table(USER_TOKENS).map_err(db)?.iter().map_err(db)? {
        let (hash, user) = row.map_err(db)?;
        let user = Label::parse("user", user.value()).map_err(|e| StoreError::Corrupt {
            table: "user_tokens",
            key: hash.value().to_owned(),
            source: e.into(),
        })?;
        user_tokens.push((hash.value().to_owned(), user));
    }
    let mut journal = Vec::new();
    for row in txn.open_table(JOURNAL).map_err(db)?.iter().map_err(db)? {
        let (serial, bytes) = row.map_err(db)?;
        let serial = u32::try_from(serial.value()).map_err(|_| StoreError::Corrupt {
            table: "journal",
            key: serial.value().to_string(),
            source: "the key is not a 32-bit serial".into(),
        })?;
        journal.push((serial, bytes.value().to_vec()));
    }
    let mut floors = Vec::new();
    for row in txn.open_table(FLOORS).map_err(db)?.iter().map_err(db)? {
        let (name, floor) = row.map_err(db)?;
        let node = Label::parse("node", name.value()).map_err(|e| StoreError::Corrupt {
            table: "floors",
            key: name.value().to_owned(),
            source: e.into(),
        })?;
        floors.push((node, floor.value()));
    }
    Ok(Loaded {
        floors,
        serial,
        nodes,
        containers,
        lost,
        user_tokens,
        user_limits,
        stacks,
        assignments,
        assignment_index,
        journal,
        fingerprint,
        position: 0,
    })
}

fn commit(database: &Database, batch: Batch<'_>) -> Result<(), StoreError> {
    let Batch {
        ops, serial, journal, ..
    } = batch;
    let mut txn = database.begin_write().map_err(db)?;
    txn.set_durability(Durability::Immediate).map_err(db)?;
    {
        let mut meta = txn.open_table(META).map_err(db)?;
        let mut nodes = txn.open_table(NODES).map_err(db)?;
        let mut containers = txn.open_table(CONTAINERS).map_err(db)?;
        let mut lost = txn.open_table(LOST).map_err(db)?;
        let mut user_tokens = txn.open_table(USER_TOKENS).map_err(db)?;
        let mut user_limits = txn.open_table(USER_LIMITS).map_err(db)?;
        let mut stacks = txn.open_table(STACKS).map_err(db)?;
        let mut assignments = txn.open_table(ASSIGNMENTS).map_err(db)?;
        let mut floors = txn.open_table(FLOORS).map_err(db)?;
        let mut record = Vec::with_capacity(128);
        for op in ops {
            match op {
                Op::PutNode(node) => {
                    nodes
                        .insert(node.name.as_str(), encode("node", node)?.as_slice())
                        .map_err(db)?;
                }
                Op::DeleteNode(name) => {
                    nodes.remove(name.as_str()).map_err(db)?;
                }
                Op::PutContainer(c) => {
                    record.clear();
                    codec::encode_container(c, &mut record).map_err(|e| StoreError::Corrupt {
                        table: "containers",
                        key: container_key(&c.key),
                        source: e.into(),
                    })?;
                    containers
                        .insert(container_key(&c.key).as_str(), record.as_slice())
                        .map_err(db)?;
                }
                Op::DeleteContainer(key) => {
                    containers.remove(container_key(key).as_str()).map_err(db)?;
                }
                Op::SetLost(node, true) => {
                    lost.insert(node.as_str(), ()).map_err(db)?;
                }
                Op::SetLost(node, false) => {
                    lost.remove(node.as_str()).map_err(db)?;
                }
                Op::PutUserToken(hash, user) => {
                    user_tokens.insert(hash.as_str(), user.as_str()).map_err(db)?;
                }
                Op::DeleteUserTokens(user) => {
                    user_tokens.retain(|_, u| u != user.as_str()).map_err(db)?;
                }
                Op::PutStack(record) => {
                    stacks
                        .insert(
                            stack_key(&record.user, &record.stack).as_str(),
                            encode("stack", record)?.as_slice(),
                        )
                        .map_err(db)?;
                }
                Op::DeleteStack(user, stack) => {
                    stacks.remove(stack_key(user, stack).as_str()).map_err(db)?;
                }
                Op::PutUserLimits(user, limits) => {
                    user_limits
                        .insert(user.as_str(), encode("user limits", limits)?.as_slice())
                        .map_err(db)?;
                }
                Op::PutAssignment(a) => {
                    assignments
                        .insert(
                            container_key(&a.container).as_str(),
                            encode("assignment", a)?.as_slice(),
                        )
                        .map_err(db)?;
                }
                Op::DeleteAssignment(key) => {
                    assignments.remove(container_key(key).as_str()).map_err(db)?;
                }
                Op::AssignmentIndex(index) => {
                    meta.insert(KEY_ASSIGNMENT_INDEX, *index).map_err(db)?;
                }
                Op::PutFloor(node, floor) => {
                    floors.insert(node.as_str(), *floor).map_err(db)?;
                }
            }
        }
        let mut table = txn.open_table(JOURNAL).map_err(db)?;
        match journal {
            JournalWrite::Keep => {}
            JournalWrite::Append { to, diff, keep_from } => {
                table.insert(u64::from(to), diff).map_err(db)?;
                while table
                    .first()
                    .map_err(db)?
                    .is_some_and(|(serial, _)| serial.value() < u64::from(keep_from))
                {
                    table.pop_first().map_err(db)?;
                }
            }
            JournalWrite::Reset { fingerprint } => {
                table.retain(|_, _| false).map_err(db)?;
                meta.insert(KEY_FINGERPRINT, fingerprint).map_err(db)?;
            }
        }
        meta.insert(KEY_SERIAL, u64::from(serial)).map_err(db)?;
    }
    txn.commit().map_err(db)
}

fn encode<T: serde::Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|source| StoreError::Encode { what, source })
}

/// A row's value as a record, or why it is not one.
type Decoded<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Decoded<T> {
    Ok(serde_json::from_slice(bytes)?)
}

/// A container row: the binary form, or the JSON of schema 1.
fn container(bytes: &[u8]) -> Decoded<Container> {
    if bytes.first() == Some(&b'{') {
        return json(bytes);
    }
    Ok(codec::decode_container(bytes)?)
}

/// Every row of `table`, read with `decode`; the first unreadable one is reported by key.
fn read_all<T>(
    table: &::redb::ReadOnlyTable<&str, &[u8]>,
    name: &'static str,
    decode: fn(&[u8]) -> Decoded<T>,
) -> Result<Vec<T>, StoreError> {
    // Sized from the table's row count, capped: a damaged count must not abort the start.
    let rows = usize::try_from(table.len().map_err(db)?).unwrap_or(usize::MAX);
    let mut out = Vec::with_capacity(rows.min(1 << 22));
    for row in table.iter().map_err(db)? {
        let (key, value) = row.map_err(db)?;
        let record = decode(value.value()).map_err(|source| StoreError::Corrupt {
            table: name,
            key: key.value().to_owned(),
            source,
        })?;
        out.push(record);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Container, Node, Port};

    fn label(s: &str) -> Label {
        Label::parse("test", s).expect("valid label")
    }

    #[test]
    fn commits_survive_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db.redb");
        let node = Node {
            name: label("node-do"),
            address: "95.85.30.162".parse().expect("ip"),
            labels: Default::default(),
            tags: vec![],
            capacity: None,
            token_sha256: "00".into(),
            owner: None,
            tenants: None,
        };
        let container = Container {
            key: ContainerKey {
                user: label("honeniq"),
                stack: label("quickstart-ruby"),
                name: label("web-1"),
            },
            node: label("node-do"),
            service: label("web"),
            address: None,
            ports: vec![Port {
                container_port: 80,
                host_port: Some(80),
                protocol: crate::model::Protocol::Tcp,
            }],
            generation: 3,
            running: true,
            ready: true,
            detail: None,
            placed: false,
            stopped_at: None,
        };
        {
            let store = RedbStore::open(&path, 1 << 20).expect("open");
            store
                .commit(Batch {
                    ops: &[
                        Op::PutNode(node.clone()),
                        Op::PutContainer(container.clone()),
                        Op::PutFloor(label("node-gone"), 3),
                        Op::PutFloor(label("node-gone"), 9),
                    ],
                    serial: 42,
                    journal: JournalWrite::Keep,
                    after: 0,
                })
                .expect("commit");
        }
        let store = RedbStore::open(&path, 1 << 20).expect("reopen");
        let loaded = store.load().expect("load");
        assert_eq!(loaded.serial, 42);
        assert_eq!(loaded.nodes, vec![node]);
        assert_eq!(loaded.containers, vec![container.clone()]);
        assert_eq!(loaded.floors, vec![(label("node-gone"), 9)]);
        store
            .commit(Batch {
                ops: &[
                    Op::DeleteContainer(container.key),
                    Op::DeleteNode(label("node-do")),
                ],
                serial: 43,
                journal: JournalWrite::Keep,
                after: 0,
            })
            .expect("delete");
        let loaded = store.load().expect("load");
        assert!(loaded.nodes.is_empty() && loaded.containers.is_empty());
    }

    #[test]
    fn schema_1_json_rows_are_read_and_the_file_becomes_schema_3() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db.redb");
        let json = r#"{"key":{"user":"u","stack":"s","name":"web-1"},"node":"n1","service":"web","address":null,"ports":[{"container_port":80,"host_port":8080,"protocol":"tcp"}],"generation":3,"running":true}"#;
        {
            // What stackdns 0.1 with schema 1 left on disk.
            let db = Database::create(&path).expect("create");
            let txn = db.begin_write().expect("txn");
            txn.open_table(META)
                .expect("meta")
                .insert(KEY_SCHEMA, 1)
                .expect("schema");
            txn.open_table(CONTAINERS)
                .expect("containers")
                .insert("u/s/web-1", json.as_bytes())
                .expect("row");
            txn.commit().expect("commit");
        }
        let store = RedbStore::open(&path, 1 << 20).expect("open");
        let loaded = store.load().expect("load");
        assert_eq!(loaded.containers.len(), 1);
        let c = &loaded.containers[0];
        assert_eq!((c.key.name.as_str(), c.generation, c.ready), ("web-1", 3, true));
        assert_eq!(c.ports[0].host_port, Some(8080));
        // Rewritten in the binary form when it changes, and read back the same.
        let mut changed = c.clone();
        changed.generation = 4;
        store
            .commit(Batch {
                ops: &[Op::PutContainer(changed.clone())],
                serial: 2,
                journal: JournalWrite::Keep,
                after: 0,
            })
            .expect("commit");
        assert_eq!(store.load().expect("load").containers, vec![changed]);
        drop(store);
        let db = Database::create(&path).expect("reopen raw");
        let txn = db.begin_read().expect("read");
        let meta = txn.open_table(META).expect("meta");
        assert_eq!(meta.get(KEY_SCHEMA).expect("get").map(|v| v.value()), Some(3));
        let containers = txn.open_table(CONTAINERS).expect("containers");
        let row = containers.get("u/s/web-1").expect("get").expect("row");
        assert_eq!(row.value().first(), Some(&1), "binary, version 1");
    }
}
