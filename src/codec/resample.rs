//! placeholder
/// Errors.
#[derive(Debug, thiserror::Error)]
pub enum ResampleError {
    /// placeholder
    #[error("{0}")]
    Other(String),
}
