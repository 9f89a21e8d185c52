//! One JSON text per value, whatever serde_json's features.

/// `v` as JSON with every object's members sorted by name, whatever order serde_json keeps
/// (a dependency that turns on its `preserve_order`, as cedar-policy does, changes it for the
/// whole build): one text for one value.
pub fn canonical_json(v: &serde_json::Value) -> String {
    use serde_json::Value;
    fn write(v: &Value, out: &mut String) {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                out.push('{');
                for (i, k) in keys.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&Value::String(k.clone()).to_string());
                    out.push(':');
                    if let Some(v) = m.get(k) {
                        write(v, out);
                    }
                }
                out.push('}');
            }
            Value::Array(a) => {
                out.push('[');
                for (i, v) in a.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write(v, out);
                }
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut out = String::new();
    write(v, &mut out);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn members_are_written_sorted() {
        let v: serde_json::Value =
            serde_json::from_str(r#"{"b":1,"a":{"z":[{"y":2,"x":1}],"c":"d"}}"#)
                .unwrap_or_default();
        assert_eq!(
            super::canonical_json(&v),
            r#"{"a":{"c":"d","z":[{"x":1,"y":2}]},"b":1}"#
        );
    }
}
