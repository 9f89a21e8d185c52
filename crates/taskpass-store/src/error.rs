use thiserror::Error;

/// Why a store operation failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The thing asked for does not exist (or is not the caller's).
    #[error("{what} not found")]
    NotFound {
        /// What was looked for, e.g. `task task_01…`.
        what: String,
    },
    /// The name or binding is already taken.
    #[error("{what} already exists")]
    AlreadyExists {
        /// What clashed.
        what: String,
    },
    /// A precondition checked inside the transaction does not hold (task not open, agent
    /// not active, agent offboarded).
    #[error("{0}")]
    Precondition(String),
    /// The store file was written by a newer Taskpass, or is not a Taskpass store.
    #[error(
        "store schema version {found} is not supported (this build reads up to {supported}): upgrade taskpassd"
    )]
    UnsupportedSchema {
        /// The version in the file.
        found: u64,
        /// The newest version this build reads.
        supported: u64,
    },
    /// A stored value could not be decoded: the file is damaged or was edited.
    #[error("stored {what} is corrupt: {detail}")]
    Corrupt {
        /// The table.
        what: &'static str,
        /// The decoder's message.
        detail: String,
    },
    /// The database engine failed (I/O, full disk, lock held by another process).
    #[error("store I/O failed: {0}")]
    Engine(String),
    /// The writer thread is gone (the broker is shutting down).
    #[error("store is closed")]
    Closed,
}

macro_rules! engine_error {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Engine(e.to_string())
            }
        }
    )*};
}
engine_error!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);
