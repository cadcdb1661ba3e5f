//! The crate error: every module's failures end here, each mapped to the gRPC
//! code containerd turns into its errdefs (NotFound, AlreadyExists, ...).

use containerd_shim_protos::ttrpc::{self, Code};

use crate::cgroups::shim::ShimCgroupError;
use crate::cgroups::SetupError;
use crate::container::StateError;
use crate::runtime::RuntimeError;
use crate::stdio::StdioError;
use crate::tasklist::TaskListError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    // Refusals with nothing underneath them: the message names the task or
    // exec and what is wrong. Failures with a cause are the variants below.
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Unimplemented(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
    #[error(transparent)]
    TaskList(#[from] TaskListError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Stdio(#[from] StdioError),
    #[error(transparent)]
    CgroupSetup(#[from] SetupError),
    #[error(transparent)]
    ShimCgroup(#[from] ShimCgroupError),
    /// Something a request carried (or pointed at) does not decode.
    #[error("{what}: {source}")]
    Malformed { what: String, source: BoxError },
    /// Keel could not encode or serve what it had.
    #[error("{what}: {source}")]
    Internal { what: String, source: BoxError },
}

/// The source of a decode or encode failure (protobuf, JSON, TOML, ttrpc, ...).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io { context: context.into(), source }
    }

    /// For `map_err`: `what` (naming the task and the input) does not decode.
    pub fn malformed<E: Into<BoxError>>(what: impl Into<String>) -> impl FnOnce(E) -> Self {
        let what = what.into();
        move |source| Error::Malformed { what, source: source.into() }
    }

    /// For `map_err`: Keel failed at `what` on its own data.
    pub fn internal<E: Into<BoxError>>(what: impl Into<String>) -> impl FnOnce(E) -> Self {
        let what = what.into();
        move |source| Error::Internal { what, source: source.into() }
    }

    pub fn code(&self) -> Code {
        match self {
            Error::InvalidArgument(_) => Code::INVALID_ARGUMENT,
            Error::NotFound(_) => Code::NOT_FOUND,
            Error::AlreadyExists(_) => Code::ALREADY_EXISTS,
            Error::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
            Error::Unimplemented(_) => Code::UNIMPLEMENTED,
            Error::Unavailable(_) => Code::UNAVAILABLE,
            Error::TaskList(e) => e.code(),
            Error::State(e) => e.code(),
            Error::Runtime(e) => e.code(),
            Error::Stdio(e) => e.code(),
            Error::CgroupSetup(SetupError::NoSystemd { .. }) => Code::FAILED_PRECONDITION,
            Error::CgroupSetup(SetupError::SystemdPath { .. }) => Code::INVALID_ARGUMENT,
            Error::ShimCgroup(_) => Code::FAILED_PRECONDITION,
            Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => Code::NOT_FOUND,
            Error::Malformed { .. } => Code::INVALID_ARGUMENT,
            Error::Io { .. } | Error::Internal { .. } => Code::INTERNAL,
        }
    }
}

impl From<Error> for ttrpc::Error {
    fn from(e: Error) -> Self {
        ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), e.to_string()))
    }
}
