//! The crate error: every module's failures end here, each mapped to the gRPC
//! code containerd turns into its errdefs (NotFound, AlreadyExists, ...).

use containerd_shim_protos::ttrpc::{self, Code};

use crate::cgroups::shim::ShimCgroupError;
use crate::cgroups::SetupError;
use crate::runtime::RuntimeError;
use crate::stdio::StdioError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
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
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Stdio(#[from] StdioError),
    #[error(transparent)]
    CgroupSetup(#[from] SetupError),
    #[error(transparent)]
    ShimCgroup(#[from] ShimCgroupError),
    #[error("{0}")]
    Internal(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io { context: context.into(), source }
    }

    pub fn code(&self) -> Code {
        match self {
            Error::InvalidArgument(_) => Code::INVALID_ARGUMENT,
            Error::NotFound(_) => Code::NOT_FOUND,
            Error::AlreadyExists(_) => Code::ALREADY_EXISTS,
            Error::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
            Error::Unimplemented(_) => Code::UNIMPLEMENTED,
            Error::Unavailable(_) => Code::UNAVAILABLE,
            Error::Runtime(e) => e.code(),
            Error::Stdio(e) => e.code(),
            Error::CgroupSetup(SetupError::NoSystemd { .. }) => Code::FAILED_PRECONDITION,
            Error::CgroupSetup(SetupError::SystemdPath { .. }) => Code::INVALID_ARGUMENT,
            Error::ShimCgroup(_) => Code::FAILED_PRECONDITION,
            Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => Code::NOT_FOUND,
            Error::Io { .. } | Error::Internal(_) => Code::INTERNAL,
        }
    }
}

impl From<Error> for ttrpc::Error {
    fn from(e: Error) -> Self {
        ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), e.to_string()))
    }
}
