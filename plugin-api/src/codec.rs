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
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    rmp_serde::from_slice(bytes).map_err(|error| CodecError {
        message: format!("cannot decode: {error}"),
    })
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
}
