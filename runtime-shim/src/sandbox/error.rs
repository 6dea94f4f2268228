//! The core's one error type. Each front end maps it once to its own
//! terms: the containerd adapter to ttrpc status codes, the CLI to an exit
//! status and a message.

/// Why a core operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// Bad input: a spec, bundle, annotation or argument, named in the text.
    #[error("{0}")]
    Invalid(String),
    /// No such container or process.
    #[error("{0}")]
    NotFound(String),
    /// The name is taken.
    #[error("{0}")]
    Exists(String),
    /// The operation does not fit the task's state (start twice, delete
    /// while running, ...).
    #[error("{0}")]
    WrongState(String),
    /// The sandbox VM could not be started or is gone.
    #[error("{0}")]
    Unavailable(String),
    /// The agent failed or refused a request (its own code and message).
    #[error("{}", .0.message())]
    Agent(kata_like_protocol::AgentClientError),
    /// Anything else, with what was being done.
    #[error("{0}")]
    Failed(String),
}

impl CoreError {
    /// Wraps the text of a failed step as [`CoreError::Failed`].
    pub fn failed(what: impl std::fmt::Display) -> CoreError {
        CoreError::Failed(what.to_string())
    }

    /// Wraps the text of bad input as [`CoreError::Invalid`].
    pub fn invalid(what: impl std::fmt::Display) -> CoreError {
        CoreError::Invalid(what.to_string())
    }
}
