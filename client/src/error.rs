//! Why a client operation failed: one error type for the contract, the image and the CKKS layer,
//! with messages a person can act on (they reach the page and the command line as they are).

use blindsight_core::layout::LayoutError;
use blindsight_core::{CkksError, ParamsError, WireError};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("contract version {found} is not supported (this client speaks version {expected})")]
    Version { expected: u32, found: u32 },
    #[error("invalid contract: {0}")]
    Contract(String),
    #[error("parameter set: {0}")]
    Params(#[from] ParamsError),
    #[error("the contract's parameter fingerprint does not match parameter set {0}")]
    Fingerprint(String),
    #[error("no evaluation key with index {index} (the contract lists {count})")]
    KeyIndex { index: usize, count: usize },
    #[error("image: {0}")]
    Image(String),
    #[error("layout: {0}")]
    Layout(#[from] LayoutError),
    #[error("{0}")]
    Ckks(#[from] CkksError),
    #[error("{0}")]
    Wire(#[from] WireError),
}
