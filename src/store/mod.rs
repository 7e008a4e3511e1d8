//! Durable state in redb: the source of truth for nodes and containers.
//!
//! # Schema (version 1)
//!
//! | table        | key                         | value                                  |
//! |--------------|-----------------------------|----------------------------------------|
//! | `meta`       | `"schema_version"`, `"serial"` | u64                                 |
//! | `nodes`      | node name                   | JSON of [`model::Node`](crate::model::Node)         |
//! | `containers` | `"<user>/<stack>/<name>"`   | JSON of [`model::Container`](crate::model::Container) (tombstones included) |
//! | `lost`       | node name                   | `()`: the node's lease had lapsed when last published |
//! | `user_tokens`| SHA-256 of a user token     | the user it acts for                   |
//! | `stacks`     | `"<user>/<stack>"`          | JSON of [`StackRecord`]                |
//! | `assignments`| `"<user>/<stack>/<name>"`   | JSON of [`Assignment`]: where placement put a container |
//! | `journal`    | serial (u64) a diff leads to | [`Diff::encode`] bytes, oldest trimmed first |
//!
//! `meta` also holds `"zone_fingerprint"`: a hash of the zone file and the record policy that
//! the stored journal was computed with. A different fingerprint at start-up means the stored
//! zone can no longer be rebuilt exactly, so the journal starts over.
//!
//! Values are JSON so a record can be read with any tool and new optional fields can be added
//! without a migration. Keys are labels, which cannot contain `/`.
//!
//! # Update protocol
//!
//! Only the control plane's single writer calls [`Store::commit`]: it gathers the changes of
//! many requests into one transaction, commits it durably (one fsync), and only then answers
//! the requests and publishes the snapshot. After a crash the database opens at the last
//! durable commit, so every acknowledged write is there.

use std::path::Path;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use serde::{Deserialize, Serialize};

use crate::model::{Container, ContainerKey, Label, Node};
use crate::placement::{Assignment, ServiceSpec};
use crate::snapshot::journal::Diff;
use crate::stackfile::Stackfile;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const NODES: TableDefinition<&str, &[u8]> = TableDefinition::new("nodes");
const CONTAINERS: TableDefinition<&str, &[u8]> = TableDefinition::new("containers");
const LOST: TableDefinition<&str, ()> = TableDefinition::new("lost");
const USER_TOKENS: TableDefinition<&str, &str> = TableDefinition::new("user_tokens");
const STACKS: TableDefinition<&str, &[u8]> = TableDefinition::new("stacks");
const ASSIGNMENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("assignments");
const JOURNAL: TableDefinition<u64, &[u8]> = TableDefinition::new("journal");

const SCHEMA_VERSION: u64 = 1;
const KEY_SCHEMA: &str = "schema_version";
const KEY_SERIAL: &str = "serial";
const KEY_FINGERPRINT: &str = "zone_fingerprint";
const KEY_ASSIGNMENT_INDEX: &str = "assignment_index";

/// Why the store failed; none of these is the caller's fault, all leave the data as it was.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the database {path}: {source}")]
    Open {
        path: String,
        source: Box<redb::DatabaseError>,
    },
    #[error(
        "the database was written by a newer stackdns (schema {found}, this build knows {SCHEMA_VERSION}); upgrade stackdns"
    )]
    NewerSchema { found: u64 },
    #[error("database record {table}/{key} is unreadable: {message}")]
    Corrupt {
        table: &'static str,
        key: String,
        message: String,
    },
    #[error("database operation failed: {0}")]
    Redb(String),
}

fn redb_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Redb(e.to_string())
}

/// One change, applied in order inside a commit.
#[derive(Debug, Clone)]
pub enum Op {
    PutNode(Node),
    DeleteNode(Label),
    PutContainer(Container),
    DeleteContainer(ContainerKey),
    /// Whether a node's lease had lapsed, as published.
    SetLost(Label, bool),
    /// A user token (by hash) and its user.
    PutUserToken(String, Label),
    DeleteUserTokens(Label),
    PutStack(Box<StackRecord>),
    DeleteStack(Label, Label),
    PutAssignment(Assignment),
    DeleteAssignment(ContainerKey),
    /// The assignment index after this commit (see `control::stacks`).
    AssignmentIndex(u64),
}

/// A stack as stored: the Stackfile as the user sent it, as it was read (what agents run:
/// image, command, environment), and the services placement works from, with their current
/// targets (a scale changes the target, not the file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StackRecord {
    pub user: Label,
    pub stack: Label,
    pub body: String,
    pub content_type: Option<String>,
    pub file: Stackfile,
    pub services: Vec<ServiceSpec>,
}

impl StackRecord {
    pub fn storage_key(&self) -> String {
        format!("{}/{}", self.user, self.stack)
    }
}

/// What a commit does to the IXFR journal.
#[derive(Debug, Clone, Copy)]
pub enum JournalWrite<'d> {
    Keep,
    /// Append this diff, and forget the ones leading to serials before `keep_from`.
    Append {
        diff: &'d Diff,
        keep_from: u32,
    },
    /// Forget every diff (the chain is broken), and record the zone's new fingerprint.
    Reset {
        fingerprint: u64,
    },
}

/// Everything stored, as read at start-up.
#[derive(Debug, Default)]
pub struct Loaded {
    pub serial: u32,
    pub nodes: Vec<Node>,
    pub containers: Vec<Container>,
    /// Nodes that were lost when the last serial was published.
    pub lost: Vec<Label>,
    /// User token hashes and their users.
    pub user_tokens: Vec<(String, Label)>,
    pub stacks: Vec<StackRecord>,
    pub assignments: Vec<Assignment>,
    pub assignment_index: u64,
    /// The journal, oldest first.
    pub journal: Vec<Diff>,
    pub fingerprint: Option<u64>,
}

pub struct Store {
    db: Database,
}

impl Store {
    /// Opens (or creates) the database file and checks its schema version.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(|e| StoreError::Open {
            path: path.display().to_string(),
            source: Box::new(e),
        })?;
        let txn = db.begin_write().map_err(redb_err)?;
        {
            let mut meta = txn.open_table(META).map_err(redb_err)?;
            let found = meta.get(KEY_SCHEMA).map_err(redb_err)?.map(|v| v.value());
            match found {
                Some(v) if v > SCHEMA_VERSION => return Err(StoreError::NewerSchema { found: v }),
                Some(_) => {}
                None => {
                    meta.insert(KEY_SCHEMA, SCHEMA_VERSION).map_err(redb_err)?;
                }
            }
            txn.open_table(NODES).map_err(redb_err)?;
            txn.open_table(CONTAINERS).map_err(redb_err)?;
            txn.open_table(LOST).map_err(redb_err)?;
            txn.open_table(USER_TOKENS).map_err(redb_err)?;
            txn.open_table(STACKS).map_err(redb_err)?;
            txn.open_table(ASSIGNMENTS).map_err(redb_err)?;
            txn.open_table(JOURNAL).map_err(redb_err)?;
        }
        txn.commit().map_err(redb_err)?;
        Ok(Self { db })
    }

    /// Reads every record.
    pub fn load(&self) -> Result<Loaded, StoreError> {
        let txn = self.db.begin_read().map_err(redb_err)?;
        let meta = txn.open_table(META).map_err(redb_err)?;
        let serial = meta.get(KEY_SERIAL).map_err(redb_err)?.map_or(0, |v| v.value()) as u32;
        let fingerprint = meta.get(KEY_FINGERPRINT).map_err(redb_err)?.map(|v| v.value());
        let nodes = read_all(&txn.open_table(NODES).map_err(redb_err)?, "nodes")?;
        let containers = read_all(&txn.open_table(CONTAINERS).map_err(redb_err)?, "containers")?;
        let mut lost = Vec::new();
        for row in txn.open_table(LOST).map_err(redb_err)?.iter().map_err(redb_err)? {
            let (name, _) = row.map_err(redb_err)?;
            lost.push(
                Label::parse("node", name.value()).map_err(|e| StoreError::Corrupt {
                    table: "lost",
                    key: name.value().to_owned(),
                    message: e.to_string(),
                })?,
            );
        }
        let assignment_index = meta
            .get(KEY_ASSIGNMENT_INDEX)
            .map_err(redb_err)?
            .map_or(0, |v| v.value());
        let stacks = read_all(&txn.open_table(STACKS).map_err(redb_err)?, "stacks")?;
        let assignments = read_all(&txn.open_table(ASSIGNMENTS).map_err(redb_err)?, "assignments")?;
        let mut user_tokens = Vec::new();
        for row in txn
            .open_table(USER_TOKENS)
            .map_err(redb_err)?
            .iter()
            .map_err(redb_err)?
        {
            let (hash, user) = row.map_err(redb_err)?;
            let user = Label::parse("user", user.value()).map_err(|e| StoreError::Corrupt {
                table: "user_tokens",
                key: hash.value().to_owned(),
                message: e.to_string(),
            })?;
            user_tokens.push((hash.value().to_owned(), user));
        }
        let mut journal = Vec::new();
        for row in txn
            .open_table(JOURNAL)
            .map_err(redb_err)?
            .iter()
            .map_err(redb_err)?
        {
            let (serial, bytes) = row.map_err(redb_err)?;
            journal.push(Diff::decode(bytes.value()).ok_or_else(|| StoreError::Corrupt {
                table: "journal",
                key: serial.value().to_string(),
                message: "not a zone difference".to_owned(),
            })?);
        }
        Ok(Loaded {
            serial,
            nodes,
            containers,
            lost,
            user_tokens,
            stacks,
            assignments,
            assignment_index,
            journal,
            fingerprint,
        })
    }

    /// Applies `ops`, the journal change and `serial` in one durable transaction.
    pub fn commit(&self, ops: &[Op], serial: u32, journal: JournalWrite<'_>) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write().map_err(redb_err)?;
        txn.set_durability(Durability::Immediate).map_err(redb_err)?;
        {
            let mut meta = txn.open_table(META).map_err(redb_err)?;
            let mut nodes = txn.open_table(NODES).map_err(redb_err)?;
            let mut containers = txn.open_table(CONTAINERS).map_err(redb_err)?;
            let mut lost = txn.open_table(LOST).map_err(redb_err)?;
            let mut user_tokens = txn.open_table(USER_TOKENS).map_err(redb_err)?;
            let mut stacks = txn.open_table(STACKS).map_err(redb_err)?;
            let mut assignments = txn.open_table(ASSIGNMENTS).map_err(redb_err)?;
            for op in ops {
                match op {
                    Op::PutNode(node) => {
                        nodes
                            .insert(node.name.as_str(), encode(node)?.as_slice())
                            .map_err(redb_err)?;
                    }
                    Op::DeleteNode(name) => {
                        nodes.remove(name.as_str()).map_err(redb_err)?;
                    }
                    Op::PutContainer(c) => {
                        containers
                            .insert(c.key.storage_key().as_str(), encode(c)?.as_slice())
                            .map_err(redb_err)?;
                    }
                    Op::DeleteContainer(key) => {
                        containers.remove(key.storage_key().as_str()).map_err(redb_err)?;
                    }
                    Op::SetLost(node, true) => {
                        lost.insert(node.as_str(), ()).map_err(redb_err)?;
                    }
                    Op::SetLost(node, false) => {
                        lost.remove(node.as_str()).map_err(redb_err)?;
                    }
                    Op::PutUserToken(hash, user) => {
                        user_tokens
                            .insert(hash.as_str(), user.as_str())
                            .map_err(redb_err)?;
                    }
                    Op::DeleteUserTokens(user) => {
                        user_tokens.retain(|_, u| u != user.as_str()).map_err(redb_err)?;
                    }
                    Op::PutStack(record) => {
                        stacks
                            .insert(record.storage_key().as_str(), encode(record)?.as_slice())
                            .map_err(redb_err)?;
                    }
                    Op::DeleteStack(user, stack) => {
                        stacks
                            .remove(format!("{user}/{stack}").as_str())
                            .map_err(redb_err)?;
                    }
                    Op::PutAssignment(a) => {
                        assignments
                            .insert(a.container.storage_key().as_str(), encode(a)?.as_slice())
                            .map_err(redb_err)?;
                    }
                    Op::DeleteAssignment(key) => {
                        assignments.remove(key.storage_key().as_str()).map_err(redb_err)?;
                    }
                    Op::AssignmentIndex(index) => {
                        meta.insert(KEY_ASSIGNMENT_INDEX, *index).map_err(redb_err)?;
                    }
                }
            }
            let mut table = txn.open_table(JOURNAL).map_err(redb_err)?;
            match journal {
                JournalWrite::Keep => {}
                JournalWrite::Append { diff, keep_from } => {
                    table
                        .insert(u64::from(diff.to), diff.encode().as_slice())
                        .map_err(redb_err)?;
                    while table
                        .first()
                        .map_err(redb_err)?
                        .is_some_and(|(serial, _)| serial.value() < u64::from(keep_from))
                    {
                        table.pop_first().map_err(redb_err)?;
                    }
                }
                JournalWrite::Reset { fingerprint } => {
                    table.retain(|_, _| false).map_err(redb_err)?;
                    meta.insert(KEY_FINGERPRINT, fingerprint).map_err(redb_err)?;
                }
            }
            meta.insert(KEY_SERIAL, u64::from(serial)).map_err(redb_err)?;
        }
        txn.commit().map_err(redb_err)
    }
}

fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(redb_err)
}

fn read_all<T: serde::de::DeserializeOwned>(
    table: &redb::ReadOnlyTable<&str, &[u8]>,
    name: &'static str,
) -> Result<Vec<T>, StoreError> {
    let mut out = Vec::new();
    for row in table.iter().map_err(redb_err)? {
        let (key, value) = row.map_err(redb_err)?;
        let record = serde_json::from_slice(value.value()).map_err(|e| StoreError::Corrupt {
            table: name,
            key: key.value().to_owned(),
            message: e.to_string(),
        })?;
        out.push(record);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Port;

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
        };
        {
            let store = Store::open(&path).expect("open");
            store
                .commit(
                    &[Op::PutNode(node.clone()), Op::PutContainer(container.clone())],
                    42,
                    JournalWrite::Keep,
                )
                .expect("commit");
        }
        let store = Store::open(&path).expect("reopen");
        let loaded = store.load().expect("load");
        assert_eq!(loaded.serial, 42);
        assert_eq!(loaded.nodes, vec![node]);
        assert_eq!(loaded.containers, vec![container.clone()]);
        store
            .commit(
                &[
                    Op::DeleteContainer(container.key),
                    Op::DeleteNode(label("node-do")),
                ],
                43,
                JournalWrite::Keep,
            )
            .expect("delete");
        let loaded = store.load().expect("load");
        assert!(loaded.nodes.is_empty() && loaded.containers.is_empty());
    }
}
