//! Handlers behind one type: JSON text in, JSON text or a `Failure` out.
//! Typed handlers are wrapped here, so the session never sees a user type.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::{Context, Failure};

pub(crate) type Answer = Result<String, Failure>;
pub(crate) type BoxAnswer = Pin<Box<dyn Future<Output = Answer> + Send>>;
pub(crate) type Handler = Arc<dyn Fn(String, Context) -> BoxAnswer + Send + Sync>;

/// Wraps a typed handler: decodes the arguments (a decoding error is fatal,
/// since every attempt would get the same arguments) and encodes the result.
pub(crate) fn typed<A, R, F, Fut>(function: String, handler: F) -> Handler
where
    A: DeserializeOwned + Send + 'static,
    R: Serialize + Send + 'static,
    F: Fn(A, Context) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<R, Failure>> + Send + 'static,
{
    Arc::new(move |args_json: String, ctx: Context| -> BoxAnswer {
        let args = match decode_args::<A>(&function, &args_json) {
            Ok(args) => args,
            Err(failure) => return Box::pin(std::future::ready(Err(failure))),
        };
        let running = handler(args, ctx);
        Box::pin(async move {
            let value = running.await?;
            serde_json::to_string(&value).map_err(|e| Failure::fatal(format!("could not encode the result: {e}")))
        })
    })
}

/// Wraps a handler that takes and returns JSON text as it is, for workers
/// that pass payloads through without a typed model of them.
pub(crate) fn raw<F, Fut>(handler: F) -> Handler
where
    F: Fn(String, Context) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<String, Failure>> + Send + 'static,
{
    Arc::new(move |args_json: String, ctx: Context| -> BoxAnswer { Box::pin(handler(args_json, ctx)) })
}

/// Decodes arguments, naming the offending field: serde_json alone says
/// "invalid type: string, expected u32" without saying where.
pub(crate) fn decode_args<A: DeserializeOwned>(function: &str, args_json: &str) -> Result<A, Failure> {
    let mut deserializer = serde_json::Deserializer::from_str(args_json);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        if path == "." {
            // Errors at the root name the field themselves ("missing field `uri`").
            Failure::fatal(format!("bad arguments for {function}: {inner}"))
        } else {
            Failure::fatal(format!("bad arguments for {function}: field `{path}`: {inner}"))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Args {
        uri: String,
        index: u32,
        parts: Vec<String>,
    }

    fn check(json: &str, expected: &str) {
        let failure = decode_args::<Args>("media.encode", json).unwrap_err();
        assert!(!failure.is_retryable());
        assert_eq!(failure.message(), expected);
    }

    #[test]
    fn bad_arguments_name_the_field() {
        check(
            r#"{"uri": "a", "parts": []}"#,
            "bad arguments for media.encode: missing field `index` at line 1 column 25",
        );
        check(
            r#"{"uri": "a", "index": "x", "parts": []}"#,
            "bad arguments for media.encode: field `index`: invalid type: string \"x\", expected u32 at line 1 column 25",
        );
        check(
            r#"{"uri": "a", "index": 1, "parts": ["p", 2]}"#,
            "bad arguments for media.encode: field `parts[1]`: invalid type: integer `2`, expected a string at line 1 column 41",
        );
        check(
            "3",
            "bad arguments for media.encode: invalid type: integer `3`, expected struct Args at line 1 column 1",
        );
    }
}
