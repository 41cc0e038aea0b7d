//! The one wire format for every byte that crosses the host/plugin boundary.
//!
//! MessagePack with named fields (`rmp_serde::to_vec_named`): self-describing, so a field
//! added with `#[serde(default)]` decodes from an older version's bytes, and a map can be
//! transcoded to JSON for people. Chosen over JSON by measurement (`host/benches/plugin.rs`,
//! group `codec`): 27–32% smaller for a typical message and state, and faster for states
//! (1.1–2.6x); for small messages neither is reliably faster on a noisy 2-core machine.

use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt;

mod value;

/// A value could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodecError {
    message: String,
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CodecError {}

/// Encodes a value as MessagePack with named fields.
///
/// ```
/// #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
/// struct Point { x: i32 }
/// let bytes = graft_plugin::codec::encode(&Point { x: 3 }).unwrap();
/// assert_eq!(graft_plugin::codec::decode::<Point>(&bytes).unwrap(), Point { x: 3 });
/// ```
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    rmp_serde::to_vec_named(value).map_err(|error| CodecError {
        message: format!("cannot encode: {error}"),
    })
}

/// Decodes MessagePack bytes.
///
/// A value of the wrong shape is refused with the path of the field that failed and what
/// was expected there:
///
/// ```
/// #[derive(serde::Serialize)]
/// struct Sent { ttl_ms: &'static str }
/// #[derive(serde::Deserialize, Debug)]
/// struct Expected { ttl_ms: u64 }
/// let bytes = graft_plugin::codec::encode(&Sent { ttl_ms: "soon" }).unwrap();
/// let error = graft_plugin::codec::decode::<Expected>(&bytes).unwrap_err();
/// assert_eq!(
///     error.to_string(),
///     r#"cannot decode: invalid type: string "soon", expected u64 at ttl_ms"#
/// );
/// ```
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    match rmp_serde::from_slice(bytes) {
        Ok(value) => Ok(value),
        Err(_) => Err(CodecError {
            message: format!("cannot decode: {}", explain_failure::<T>(bytes)),
        }),
    }
}

/// Says why `bytes` do not decode as a `T`, naming the field's path. Only called after a
/// failed decode, so it can afford to decode twice.
fn explain_failure<T: DeserializeOwned>(bytes: &[u8]) -> String {
    // The same deserializer, with the path recorded: right for truncated or malformed bytes.
    let mut deserializer = rmp_serde::Deserializer::from_read_ref(bytes);
    let direct = match serde_path_to_error::deserialize::<_, T>(&mut deserializer) {
        Ok(_) => return "the value decodes only when its path is tracked".to_owned(),
        Err(error) => with_path(error),
    };
    // Well-formed bytes of the wrong shape: serde's own words for the value and what was
    // expected, which rmp_serde replaces with its marker for numbers and booleans.
    let Ok(tree) = rmp_serde::from_slice::<value::Value>(bytes) else {
        return direct;
    };
    match serde_path_to_error::deserialize::<_, T>(tree) {
        Ok(_) => direct,
        Err(error) => with_path(error),
    }
}

fn with_path<E: fmt::Display>(error: serde_path_to_error::Error<E>) -> String {
    let path = error.path().to_string();
    if path == "." {
        error.into_inner().to_string()
    } else {
        format!("{} at {path}", error.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Serialize)]
    struct Old {
        count: i64,
    }

    #[derive(Deserialize, Debug, PartialEq)]
    struct New {
        count: i64,
        #[serde(default)]
        history: Vec<i64>,
    }

    #[test]
    fn a_field_added_with_serde_default_decodes_from_old_bytes() {
        let bytes = encode(&Old { count: 7 }).unwrap();
        let new: New = decode(&bytes).unwrap();
        assert_eq!(
            new,
            New {
                count: 7,
                history: vec![]
            }
        );
    }

    #[test]
    fn garbage_is_a_decode_error_not_a_panic() {
        let error = decode::<New>(&[0xc1, 0xff, 0x00]).unwrap_err();
        assert!(error.to_string().starts_with("cannot decode"), "{error}");
    }

    #[derive(Serialize)]
    struct SentSession {
        user: &'static str,
        options: SentOptions,
    }

    #[derive(Serialize)]
    struct SentOptions {
        ttl_ms: &'static str,
    }

    #[derive(Deserialize, Debug)]
    #[allow(dead_code)]
    struct Session {
        user: String,
        options: Options,
    }

    #[derive(Deserialize, Debug)]
    #[allow(dead_code)]
    struct Options {
        ttl_ms: u64,
    }

    #[test]
    fn a_field_of_the_wrong_type_is_refused_with_its_path_and_what_was_expected() {
        let bytes = encode(&SentSession {
            user: "ada",
            options: SentOptions { ttl_ms: "soon" },
        })
        .unwrap();
        let error = decode::<Session>(&bytes).unwrap_err().to_string();
        assert_eq!(
            error,
            r#"cannot decode: invalid type: string "soon", expected u64 at options.ttl_ms"#
        );
        assert!(!error.contains("marker"), "{error}");
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    enum Command {
        Put { key: String, ttl_ms: Option<u64> },
        Stop,
    }

    #[test]
    fn a_wrong_type_inside_an_enum_variant_names_the_variant_and_the_field() {
        #[derive(Serialize)]
        enum SentCommand {
            Put { key: &'static str, ttl_ms: bool },
        }
        let bytes = encode(&SentCommand::Put {
            key: "a",
            ttl_ms: true,
        })
        .unwrap();
        let error = decode::<Command>(&bytes).unwrap_err().to_string();
        assert_eq!(
            error,
            "cannot decode: invalid type: boolean `true`, expected u64 at Put.ttl_ms"
        );
        // Values of the right shape still decode, through either representation.
        let good = Command::Put {
            key: "a".to_owned(),
            ttl_ms: Some(3),
        };
        assert_eq!(decode::<Command>(&encode(&good).unwrap()).unwrap(), good);
        assert_eq!(
            decode::<Command>(&encode(&Command::Stop).unwrap()).unwrap(),
            Command::Stop
        );
    }

    #[test]
    fn a_missing_field_is_named() {
        let bytes = encode(&Old { count: 1 }).unwrap();
        #[derive(Deserialize, Debug)]
        #[allow(dead_code)]
        struct Needs {
            count: i64,
            owner: String,
        }
        let error = decode::<Needs>(&bytes).unwrap_err().to_string();
        assert_eq!(error, "cannot decode: missing field `owner`");
    }
}
