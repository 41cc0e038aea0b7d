//! Who may do what over HTTP: the token (32 random bytes, hex), and the checks every
//! request (`Host`) and every mutation (token, `Origin`) passes.
//!
//! Invariants: the token is compared in constant time (every byte is looked at whatever
//! differs first); the checks only read headers and decide, they never log the token.
//!
//! Tricky: `Origin` is compared with `http://` + the request's own `Host`, as the browser
//! sent it, so the page works under whichever name the operator opened (`localhost` or
//! `127.0.0.1`); a DNS-rebound page has a matching pair, which is why a loopback server
//! also insists on a loopback `Host` ([`check_host`]) and mutations need the token anyway.

use axum::http::HeaderMap;
use axum::http::StatusCode;
use std::net::SocketAddr;
use thiserror::Error;

/// The secret mutations need: 32 bytes from `/dev/urandom`, as 64 lowercase hex digits.
#[derive(Clone)]
pub struct Token(String);

impl Token {
    /// A new random token.
    pub fn generate() -> std::io::Result<Token> {
        use std::io::Read as _;
        let mut bytes = [0u8; 32];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
        Ok(Token(
            bytes.iter().map(|byte| format!("{byte:02x}")).collect(),
        ))
    }

    /// The token as text (to print for the operator).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `candidate` is this token; takes the same time wherever they differ.
    pub fn matches(&self, candidate: &str) -> bool {
        let (expected, candidate) = (self.0.as_bytes(), candidate.as_bytes());
        if expected.len() != candidate.len() {
            // The length is not the secret (always 64).
            return false;
        }
        expected
            .iter()
            .zip(candidate)
            .fold(0u8, |difference, (a, b)| difference | (a ^ b))
            == 0
    }
}

/// The token never shows in logs or debug output.
impl std::fmt::Debug for Token {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("Token(…)")
    }
}

/// Why a request was refused before it ran.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum AccessError {
    /// A mutation without a token.
    #[error(
        "this action needs the token `graft start --http` printed (send it as `Authorization: Bearer TOKEN` or `X-Graft-Token: TOKEN`)"
    )]
    MissingToken,
    /// A mutation with another token.
    #[error("the token is not this host's (it changes each time `graft start` runs)")]
    WrongToken,
    /// A mutation sent from a page of another origin.
    #[error("requests from another origin are refused: Origin {origin:?} is not {expected:?}")]
    ForeignOrigin {
        /// The request's `Origin`.
        origin: String,
        /// This server's origin, as the request named it in `Host`.
        expected: String,
    },
    /// A request to a loopback server that names another host (a DNS-rebound page).
    #[error(
        "this server listens on loopback and answers only requests addressed to it (Host {host:?} is not a loopback name)"
    )]
    UnexpectedHost {
        /// The request's `Host`, if any.
        host: String,
    },
}

impl AccessError {
    /// The HTTP status it is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            AccessError::MissingToken | AccessError::WrongToken => StatusCode::UNAUTHORIZED,
            AccessError::ForeignOrigin { .. } | AccessError::UnexpectedHost { .. } => {
                StatusCode::FORBIDDEN
            }
        }
    }

    /// A word scripts can match on.
    pub fn kind(&self) -> &'static str {
        match self {
            AccessError::MissingToken => "missing_token",
            AccessError::WrongToken => "wrong_token",
            AccessError::ForeignOrigin { .. } => "foreign_origin",
            AccessError::UnexpectedHost { .. } => "unexpected_host",
        }
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|value| value.to_str().ok())
}

/// A server bound to loopback answers only requests whose `Host` is a loopback name with
/// its port; a server bound elsewhere (named by the operator) answers any `Host`.
pub fn check_host(headers: &HeaderMap, bound: SocketAddr) -> Result<(), AccessError> {
    if !bound.ip().is_loopback() {
        return Ok(());
    }
    let host = header(headers, "host").unwrap_or_default();
    let port = bound.port();
    let allowed = [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("[::1]:{port}"),
        bound.to_string(),
    ];
    if allowed.iter().any(|name| name.eq_ignore_ascii_case(host)) {
        Ok(())
    } else {
        Err(AccessError::UnexpectedHost {
            host: host.to_owned(),
        })
    }
}

/// A mutation needs the token and, when it has an `Origin`, this server's own origin.
pub fn check_mutation(headers: &HeaderMap, token: &Token) -> Result<(), AccessError> {
    let presented = header(headers, "authorization")
        .and_then(|value| {
            value
                .strip_prefix("Bearer ")
                .or_else(|| value.strip_prefix("bearer "))
        })
        .or_else(|| header(headers, "x-graft-token"))
        .map(str::trim);
    match presented {
        None | Some("") => return Err(AccessError::MissingToken),
        Some(candidate) if !token.matches(candidate) => return Err(AccessError::WrongToken),
        Some(_) => {}
    }
    if let Some(origin) = headers.get("origin") {
        let origin = origin.to_str().unwrap_or("(not text)");
        let expected = format!("http://{}", header(headers, "host").unwrap_or_default());
        if !origin.eq_ignore_ascii_case(&expected) {
            return Err(AccessError::ForeignOrigin {
                origin: origin.to_owned(),
                expected,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn tokens_are_random_hex_and_match_only_themselves() {
        let (one, two) = (Token::generate().unwrap(), Token::generate().unwrap());
        assert_eq!(one.as_str().len(), 64);
        assert!(one.as_str().bytes().all(|byte| byte.is_ascii_hexdigit()));
        assert_ne!(one.as_str(), two.as_str());
        assert!(one.matches(one.as_str()));
        assert!(!one.matches(two.as_str()));
        assert!(!one.matches(""));
        assert!(!one.matches(&one.as_str()[1..]));
        assert_eq!(format!("{one:?}"), "Token(…)");
    }

    #[test]
    fn a_mutation_needs_the_token_and_its_own_origin() {
        let token = Token::generate().unwrap();
        let bearer = format!("Bearer {}", token.as_str());
        let host = ("host", "127.0.0.1:9464");
        assert_eq!(
            check_mutation(&headers(&[host]), &token),
            Err(AccessError::MissingToken)
        );
        assert_eq!(
            check_mutation(&headers(&[host, ("authorization", "Bearer nope")]), &token),
            Err(AccessError::WrongToken)
        );
        assert_eq!(
            check_mutation(&headers(&[host, ("authorization", &bearer)]), &token),
            Ok(())
        );
        assert_eq!(
            check_mutation(&headers(&[host, ("x-graft-token", token.as_str())]), &token),
            Ok(())
        );
        assert_eq!(
            check_mutation(
                &headers(&[
                    host,
                    ("authorization", &bearer),
                    ("origin", "http://127.0.0.1:9464")
                ]),
                &token
            ),
            Ok(())
        );
        let foreign = check_mutation(
            &headers(&[
                host,
                ("authorization", &bearer),
                ("origin", "http://evil.example"),
            ]),
            &token,
        )
        .unwrap_err();
        assert_eq!(foreign.status(), StatusCode::FORBIDDEN);
        assert!(foreign.to_string().contains("evil.example"), "{foreign}");
        assert_eq!(
            check_mutation(
                &headers(&[host, ("authorization", &bearer), ("origin", "null")]),
                &token
            )
            .map_err(|error| error.kind()),
            Err("foreign_origin")
        );
    }

    #[test]
    fn a_loopback_server_answers_only_loopback_host_names() {
        let bound: SocketAddr = "127.0.0.1:9464".parse().unwrap();
        for host in [
            "127.0.0.1:9464",
            "localhost:9464",
            "LOCALHOST:9464",
            "[::1]:9464",
        ] {
            assert_eq!(
                check_host(&headers(&[("host", host)]), bound),
                Ok(()),
                "{host}"
            );
        }
        for host in ["rebound.example:9464", "127.0.0.1:80", "localhost"] {
            assert_eq!(
                check_host(&headers(&[("host", host)]), bound).map_err(|error| error.kind()),
                Err("unexpected_host"),
                "{host}"
            );
        }
        assert!(check_host(&HeaderMap::new(), bound).is_err());
        let anywhere: SocketAddr = "0.0.0.0:9464".parse().unwrap();
        assert_eq!(
            check_host(&headers(&[("host", "box.example:9464")]), anywhere),
            Ok(())
        );
    }
}
