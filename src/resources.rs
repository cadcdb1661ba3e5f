//! Checks on the Linux resources of an Update before the runtime sees them.

use oci_spec::runtime::LinuxResources;

/// A value no runtime accepts, with its field and what would be right.
#[derive(Debug, thiserror::Error)]
#[error("{field} {value} is invalid (want {want})")]
pub struct InvalidResource {
    pub field: &'static str,
    pub value: i64,
    pub want: &'static str,
}

/// Rejects values no runtime accepts, naming the field.
pub fn validate(r: &LinuxResources) -> Result<(), InvalidResource> {
    let bad = |field, value, want| Err(InvalidResource { field, value, want });
    if let Some(m) = r.memory() {
        for (name, v) in [("memory.limit", m.limit()), ("memory.reservation", m.reservation()), ("memory.swap", m.swap())] {
            if let Some(v) = v {
                if v < -1 || v == 0 {
                    return bad(name, v, "a positive byte count, or -1 for unlimited");
                }
            }
        }
    }
    if let Some(c) = r.cpu() {
        if let Some(q) = c.quota() {
            if q < -1 || q == 0 {
                return bad("cpu.quota", q, "a positive count of microseconds, or -1");
            }
        }
        if let Some(0) = c.shares() {
            return bad("cpu.shares", 0, "a positive weight");
        }
    }
    if let Some(p) = r.pids() {
        if p.limit() < -1 {
            return bad("pids.limit", p.limit(), "a positive count, or 0/-1 for unlimited");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> LinuxResources {
        serde_json::from_str(json).expect("resources json")
    }

    #[test]
    fn negative_limits_are_rejected_with_the_field_named() {
        let err = validate(&parse(r#"{"memory":{"limit":-5}}"#)).expect_err("negative memory").to_string();
        assert!(err.contains("memory.limit -5"), "{err}");
        let err = validate(&parse(r#"{"pids":{"limit":-7}}"#)).expect_err("negative pids").to_string();
        assert!(err.contains("pids.limit -7"), "{err}");
        assert!(validate(&parse(r#"{"memory":{"limit":16777216},"cpu":{"shares":512}}"#)).is_ok());
    }
}
