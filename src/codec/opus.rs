//! placeholder
/// Errors.
#[derive(Debug, thiserror::Error)]
pub enum OpusError {
    /// placeholder
    #[error("{0}")]
    Other(String),
}
