//! The storage seam: what the control writer asks of a durable store, and the records it
//! stores. The writer holds a `Box<dyn Store>` and knows nothing of the engine behind it.
//!
//! ```text
//!  control writer --Batch{ops, serial, journal}--> Store::commit   (durable before Ok)
//!                 <--------------Loaded------------ Store::load     (start-up, after a failure)
//! ```
//!
//! [`redb`] is the embedded engine and the default. [`etcd`] keeps the same records as a log
//! of batches ([`log`]) in an etcd cluster that several instances share: it answers
//! [`Store::cluster`], through which an instance follows what the others commit and learns
//! whether it leads. Records are the platform's own [`model`] types plus the few defined here;
//! zone differences travel as opaque bytes the store never reads.

pub mod codec;
pub mod copy;
pub mod etcd;
pub mod faults;
pub mod image;
pub mod log;
pub mod redb;

use crate::model::{Assignment, Container, ContainerKey, Label, Limits, Node, ServiceSpec};
use crate::stackfile::Stackfile;

pub use self::redb::RedbStore;

/// What the writer needs from a durable store.
pub trait Store: Send + 'static {
    /// Reads every record.
    fn load(&self) -> Result<Loaded, StoreError>;

    /// Applies a batch in one transaction; returns only once it is durable. On `Err` nothing
    /// of the batch was stored.
    fn commit(&self, batch: Batch<'_>) -> Result<(), StoreError>;

    /// For a store several instances share: who leads, and the batches the others commit
    /// (handed out once; later calls answer `followed: None`). `None`: this instance is the
    /// store's only writer.
    fn cluster(&self) -> Option<Cluster> {
        None
    }
}

/// How an instance takes part in a shared store.
pub struct Cluster {
    /// This instance's id (as in [`etcd::Leader::id`]).
    pub id: String,
    /// The instance that may commit, as etcd last said (`None`: an election is under way or
    /// etcd cannot be reached).
    pub leader: tokio::sync::watch::Receiver<Option<etcd::Leader>>,
    /// Every batch committed after the last load, in order.
    pub followed: Option<tokio::sync::mpsc::Receiver<etcd::Followed>>,
}

/// Why the store failed; none of these is the caller's fault, all leave the data as it was.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the database {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: Box<::redb::DatabaseError>,
    },
    #[error(
        "the database was written by a newer stackdns (schema {found}, this build knows {known}); upgrade stackdns"
    )]
    NewerSchema { found: u64, known: u64 },
    #[error("database record {table}/{key} is unreadable: {source}")]
    Corrupt {
        table: &'static str,
        key: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("cannot encode a {what} record: {source}")]
    Encode {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("database operation failed: {0}")]
    Database(#[from] ::redb::Error),
    #[error("the database is closed after a failure and could not be opened again")]
    Closed,
    #[error("etcd: cannot {action}: {source}")]
    Etcd {
        action: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("this instance does not lead the cluster; only the leader commits")]
    NotLeader,
    #[error(
        "another instance committed after position {position}, or took the leadership: this batch was not stored"
    )]
    Conflict { position: u64 },
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
    /// An admin's limits for one user (absent: the server's defaults).
    PutUserLimits(Label, Limits),
    PutAssignment(Assignment),
    DeleteAssignment(ContainerKey),
    /// The assignment index after this commit (see `control::stacks`).
    AssignmentIndex(u64),
    /// A node's generation floor: the highest generation of its containers whose tombstones
    /// were removed after their retention.
    PutFloor(Label, u64),
}

/// A stack as stored: the Stackfile as the user sent it, as it was read (what agents run:
/// image, command, environment), and the services placement works from, with their current
/// targets (a scale changes the target, not the file). The parsed form is what is read back,
/// so a stricter parser in a later version cannot lose a stored stack.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StackRecord {
    pub user: Label,
    pub stack: Label,
    pub body: String,
    pub content_type: Option<String>,
    pub file: Stackfile,
    pub services: Vec<ServiceSpec>,
}

/// What a commit does to the IXFR journal of zone differences.
#[derive(Debug, Clone, Copy)]
pub enum JournalWrite<'d> {
    Keep,
    /// Append the difference leading to serial `to` (opaque bytes), and forget the ones
    /// leading to serials before `keep_from`.
    Append {
        to: u32,
        diff: &'d [u8],
        keep_from: u32,
    },
    /// Forget every difference (the chain is broken), and record the zone's new fingerprint.
    Reset {
        fingerprint: u64,
    },
}

/// One durable transaction: the changes of a batch, the serial that publishes them, and what
/// happens to the journal.
#[derive(Debug, Clone, Copy)]
pub struct Batch<'a> {
    pub ops: &'a [Op],
    pub serial: u32,
    pub journal: JournalWrite<'a>,
    /// The position in a shared log of the state this batch was made on ([`Loaded::position`]
    /// plus the batches since): a shared store refuses it if another batch came first. redb
    /// has one writer and ignores it.
    pub after: u64,
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
    /// Users with limits of their own.
    pub user_limits: Vec<(Label, Limits)>,
    pub assignments: Vec<Assignment>,
    pub assignment_index: u64,
    /// The journal's differences, oldest first: (serial each leads to, its bytes).
    pub journal: Vec<(u32, Vec<u8>)>,
    /// The zone fingerprint the journal was computed with.
    pub fingerprint: Option<u64>,
    /// Generation floors by node (see [`Op::PutFloor`]).
    pub floors: Vec<(Label, u64)>,
    /// How many batches a shared log held when this was read (0 for redb).
    pub position: u64,
}
