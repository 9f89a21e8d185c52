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
    /// A record could not be serialised; nothing was written.
    #[error("cannot serialise {what}: {detail}")]
    Encode {
        /// What was being written.
        what: &'static str,
        /// The serialiser's message.
        detail: String,
    },
    /// The store's file cannot be written or read now (a full disk, an I/O error): the write
    /// was not made. The store reopens its file and probes it until writes succeed again.
    #[error("the store cannot write: {0}")]
    Unwritable(String),
    /// The database engine failed (the lock is held by another process, an internal error).
    #[error("store I/O failed: {0}")]
    Engine(String),
    /// The writer thread is gone (the broker is shutting down).
    #[error("store is closed")]
    Closed,
}

impl From<redb::StorageError> for StoreError {
    fn from(e: redb::StorageError) -> Self {
        match e {
            // An I/O error latches the database: every later call fails with PreviousIo
            // until the file is reopened, which the writer does.
            // DatabaseClosed: a reader that held the file while the writer closed it.
            redb::StorageError::Io(_)
            | redb::StorageError::PreviousIo
            | redb::StorageError::DatabaseClosed => StoreError::Unwritable(e.to_string()),
            other => StoreError::Engine(other.to_string()),
        }
    }
}

macro_rules! engine_error {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                match e.into_storage() {
                    Ok(s) => s.into(),
                    Err(other) => StoreError::Engine(other),
                }
            }
        }
    )*};
}
engine_error!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::CommitError
);

/// The storage error inside each of redb's error types, when that is what it is.
trait IntoStorage {
    fn into_storage(self) -> Result<redb::StorageError, String>;
}

impl IntoStorage for redb::Error {
    fn into_storage(self) -> Result<redb::StorageError, String> {
        match self {
            redb::Error::Io(e) => Ok(redb::StorageError::Io(e)),
            redb::Error::PreviousIo => Ok(redb::StorageError::PreviousIo),
            other => Err(other.to_string()),
        }
    }
}

impl IntoStorage for redb::DatabaseError {
    fn into_storage(self) -> Result<redb::StorageError, String> {
        match self {
            redb::DatabaseError::Storage(s) => Ok(s),
            other => Err(other.to_string()),
        }
    }
}

impl IntoStorage for redb::TransactionError {
    fn into_storage(self) -> Result<redb::StorageError, String> {
        match self {
            redb::TransactionError::Storage(s) => Ok(s),
            other => Err(other.to_string()),
        }
    }
}

impl IntoStorage for redb::TableError {
    fn into_storage(self) -> Result<redb::StorageError, String> {
        match self {
            redb::TableError::Storage(s) => Ok(s),
            other => Err(other.to_string()),
        }
    }
}

impl IntoStorage for redb::CommitError {
    fn into_storage(self) -> Result<redb::StorageError, String> {
        match self {
            redb::CommitError::Storage(s) => Ok(s),
            other => Err(other.to_string()),
        }
    }
}
