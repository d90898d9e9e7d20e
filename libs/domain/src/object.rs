//! Structs read from JSON objects only.
//!
//! serde's derived `Deserialize` of a struct also takes a sequence, its fields in order, so a
//! program whose `tiers` are `[["Bronze", 0, 100]]` used to be accepted. What a client writes as
//! a struct ([`crate::ProgramSpec`] and the structs in it) is read through [`Object`] (or the
//! `deserialize_with` helpers below), which asks the format for a map: a sequence, a string or
//! a number is refused with "invalid type: …, expected a JSON object".

use std::fmt;
use std::marker::PhantomData;

use serde::de::value::MapAccessDeserializer;
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

/// A `T` that was written as an object (a map), never as a sequence of its fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Object<T>(pub T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct OnlyMaps<T>(PhantomData<T>);

        impl<'de, T: Deserialize<'de>> Visitor<'de> for OnlyMaps<T> {
            type Value = T;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map))
            }
        }

        d.deserialize_map(OnlyMaps(PhantomData)).map(Object)
    }
}

/// `deserialize_with` of a struct field.
pub fn one<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<T, D::Error> {
    Object::deserialize(d).map(|o| o.0)
}

/// `deserialize_with` of an optional struct field (with `#[serde(default)]`).
pub fn option<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    Option::<Object<T>>::deserialize(d).map(|o| o.map(|o| o.0))
}

/// `deserialize_with` of a list of structs.
pub fn list<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
    Vec::<Object<T>>::deserialize(d).map(|v| v.into_iter().map(|o| o.0).collect())
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use crate::Program;

    fn demo() -> Value {
        serde_json::to_value(Program::demo()).unwrap()
    }

    #[test]
    fn a_program_and_its_structs_are_objects_only() {
        assert!(serde_json::from_value::<Program>(demo()).is_ok());
        let mut cases =
            vec![json!(["EUR", 1, 50, null, {"metric": "visits", "window_days": 1}, []])];
        for (field, positional) in [
            ("tiers", json!([["Bronze", 0, 100]])),
            ("stamp_card", json!([10, "free-coffee"])),
            ("tier_qualification", json!(["spend_cents", 365])),
            ("rewards", json!([["free-coffee", "Free coffee", 100]])),
            ("tiers", json!(["Bronze"])),
        ] {
            let mut p = demo();
            p[field] = positional;
            cases.push(p);
        }
        for p in cases {
            let e = serde_json::from_value::<Program>(p.clone())
                .unwrap_err()
                .to_string();
            assert!(e.contains("expected a JSON object"), "{p}: {e}");
        }
        // `stamp_card` may still be null or left out.
        let mut p = demo();
        p["stamp_card"] = Value::Null;
        assert!(serde_json::from_value::<Program>(p.clone())
            .unwrap()
            .stamp_card
            .is_none());
        p.as_object_mut().unwrap().remove("stamp_card");
        assert!(serde_json::from_value::<Program>(p).is_ok());
    }
}
