//! placeholder
/// Errors.
#[derive(Debug, thiserror::Error)]
pub enum PcmError {
    /// placeholder
    #[error("{0}")]
    Other(String),
}
