//! The envelope version carried by every Herald payload.

use std::borrow::Cow;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Version of the wire format. Today only `1` exists.
///
/// It is an explicit field (not an enum tag) so that a producer sending a version this
/// Herald does not know gets "unsupported envelope version 2" instead of a vague parse error.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EnvelopeVersion;

impl EnvelopeVersion {
    pub const CURRENT: u32 = 1;
}

impl Serialize for EnvelopeVersion {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(Self::CURRENT)
    }
}

impl<'de> Deserialize<'de> for EnvelopeVersion {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = u32::deserialize(d)?;
        if v == Self::CURRENT {
            Ok(EnvelopeVersion)
        } else {
            Err(serde::de::Error::custom(format!(
                "unsupported envelope version {v}; this Herald understands version {}",
                Self::CURRENT
            )))
        }
    }
}

impl JsonSchema for EnvelopeVersion {
    fn schema_name() -> Cow<'static, str> {
        "EnvelopeVersion".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "Envelope version. Only 1 exists today.",
            "type": "integer",
            "const": 1
        })
    }
}
