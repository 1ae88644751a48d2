//! Path parameters with the API's error format: axum's `Path` answers a segment it cannot read
//! (not UTF-8, a key index that is not a number) with plain text; here it is the JSON 404 every
//! other unknown resource gets.

use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::api::error::ApiError;

pub struct ApiPath<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(v)) => Ok(Self(v)),
            Err(e) => Err(ApiError::not_found(
                "not_found",
                format!("no such resource: {}", e.body_text()),
            )),
        }
    }
}
