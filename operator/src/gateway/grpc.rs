//! The little of gRPC the gateway must understand to route: message framing,
//! status-only responses, and the routing fields of a few requests, decoded
//! with partial messages (prost skips every field they do not name).

use std::convert::Infallible;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Every body the gateway sends or forwards.
pub type Body = BoxBody<Bytes, BoxError>;

/// gRPC status codes the gateway answers with itself.
pub mod code {
    pub const OK: u32 = 0;
    pub const NOT_FOUND: u32 = 5;
    pub const PERMISSION_DENIED: u32 = 7;
    pub const INTERNAL: u32 = 13;
    pub const UNAVAILABLE: u32 = 14;
}

/// The fields of `moby.buildkit.v1.SolveRequest` that route a build
/// (docs/protocol.md §3.4).
#[derive(Clone, PartialEq, prost::Message)]
pub struct SolveIds {
    #[prost(string, tag = "1")]
    pub r#ref: String,
    #[prost(string, tag = "5")]
    pub session: String,
    /// What the client asks to be granted (`--allow`).
    #[prost(string, repeated, tag = "9")]
    pub entitlements: Vec<String>,
}

/// `StatusRequest` (and the history requests): field 1 is the build ref.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RefOnly {
    #[prost(string, tag = "1")]
    pub r#ref: String,
}

/// One length-prefixed message.
pub fn frame(message: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + message.len());
    out.put_u8(0);
    out.put_u32(message.len() as u32);
    out.put_slice(message);
    out.freeze()
}

/// The messages of a complete body; `None` when the framing is broken or a
/// message is compressed (the gateway never negotiates compression).
pub fn messages(mut body: &[u8]) -> Option<Vec<Bytes>> {
    let mut out = Vec::new();
    while !body.is_empty() {
        if body.len() < 5 || body[0] != 0 {
            return None;
        }
        let len = (&body[1..5]).get_u32() as usize;
        let rest = &body[5..];
        if rest.len() < len {
            return None;
        }
        out.push(Bytes::copy_from_slice(&rest[..len]));
        body = &rest[len..];
    }
    Some(out)
}

/// Percent-encodes a `grpc-message` as the gRPC spec asks.
fn encode_message(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for b in message.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn grpc_headers(headers: &mut HeaderMap, code: u32, message: &str) {
    headers.insert("grpc-status", HeaderValue::from(code));
    if let Ok(v) = HeaderValue::from_str(&encode_message(message)) {
        headers.insert("grpc-message", v);
    }
}

pub fn empty() -> Body {
    Full::new(Bytes::new()).map_err(|e: Infallible| match e {}).boxed()
}

pub fn full(bytes: Bytes) -> Body {
    Full::new(bytes).map_err(|e: Infallible| match e {}).boxed()
}

/// A trailers-only response: the call fails with `code` and `message`.
pub fn status(code: u32, message: &str) -> Response<Body> {
    let mut response = Response::new(empty());
    *response.status_mut() = StatusCode::OK;
    response.headers_mut().insert("content-type", HeaderValue::from_static("application/grpc"));
    grpc_headers(response.headers_mut(), code, message);
    response
}

/// Trailers ending a call with `code`.
pub fn trailers(code: u32, message: &str) -> HeaderMap {
    let mut t = HeaderMap::new();
    grpc_headers(&mut t, code, message);
    t
}

/// A successful unary response carrying `message`.
pub fn unary(message: &[u8]) -> Response<Body> {
    let frames =
        vec![Ok::<_, BoxError>(Frame::data(frame(message))), Ok(Frame::trailers(trailers(code::OK, "")))];
    let body = StreamBody::new(futures::stream::iter(frames)).boxed();
    let mut response = Response::new(body);
    response.headers_mut().insert("content-type", HeaderValue::from_static("application/grpc"));
    response
}

/// A successful server-streaming response of `messages`.
pub fn streamed(messages: Vec<Bytes>) -> Response<Body> {
    let mut frames: Vec<Result<Frame<Bytes>, BoxError>> =
        messages.iter().map(|m| Ok(Frame::data(frame(m)))).collect();
    frames.push(Ok(Frame::trailers(trailers(code::OK, ""))));
    let mut response = Response::new(StreamBody::new(futures::stream::iter(frames)).boxed());
    response.headers_mut().insert("content-type", HeaderValue::from_static("application/grpc"));
    response
}

/// The grpc-status of a finished call: from the trailers, else the headers
/// (trailers-only responses).
pub fn call_status(headers: &HeaderMap, trailers: Option<&HeaderMap>) -> (u32, String) {
    let source = trailers.filter(|t| t.contains_key("grpc-status")).unwrap_or(headers);
    let code = source.get("grpc-status").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    let message = source.get("grpc-message").and_then(|v| v.to_str().ok()).unwrap_or_default();
    (code.unwrap_or(code::INTERNAL), message.to_owned())
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    #[test]
    fn frames_split_back_into_their_messages() {
        let mut body = frame(b"one").to_vec();
        body.extend_from_slice(&frame(b""));
        body.extend_from_slice(&frame(b"three"));
        assert_eq!(messages(&body).unwrap(), [&b"one"[..], b"", b"three"]);
        assert!(messages(&body[..body.len() - 1]).is_none(), "a cut message");
        assert!(messages(&[1, 0, 0, 0, 0]).is_none(), "compressed");
    }

    #[test]
    fn solve_ids_are_read_from_a_full_solve_request_and_the_rest_is_skipped() {
        use kiln_proto::buildkit::moby::buildkit::v1::SolveRequest;
        let req = SolveRequest {
            r#ref: "r1".into(),
            session: "s1".into(),
            frontend: "dockerfile.v0".into(),
            frontend_attrs: [
                ("local-sessionid:context".to_owned(), "s2".to_owned()),
                ("local-sessionid:dockerfile".to_owned(), "s1".to_owned()),
                ("target".to_owned(), "x".to_owned()),
            ]
            .into(),
            source_policy_session: "s3".into(),
            ..SolveRequest::default()
        };
        let ids = SolveIds::decode(req.encode_to_vec().as_slice()).unwrap();
        assert_eq!((ids.r#ref.as_str(), ids.session.as_str()), ("r1", "s1"));
    }

    #[test]
    fn grpc_messages_are_percent_encoded() {
        let r = status(code::UNAVAILABLE, "builder lost: 100% gone\n");
        assert_eq!(r.headers()["grpc-status"], "14");
        assert_eq!(r.headers()["grpc-message"], "builder lost: 100%25 gone%0A");
        assert_eq!(call_status(r.headers(), None), (14, "builder lost: 100%25 gone%0A".to_owned()));
    }
}
