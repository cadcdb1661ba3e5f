//! Checks on the Linux resources of an Update before the runtime sees them.

use oci_spec::runtime::LinuxResources;

/// Rejects values no runtime accepts, naming the field.
pub fn validate(r: &LinuxResources) -> Result<(), String> {
    if let Some(m) = r.memory() {
        for (name, v) in [("memory.limit", m.limit()), ("memory.reservation", m.reservation()), ("memory.swap", m.swap())] {
            if let Some(v) = v {
                if v < -1 || v == 0 {
                    return Err(format!("{name} {v} is invalid (want a positive byte count, or -1 for unlimited)"));
                }
            }
        }
    }
    if let Some(c) = r.cpu() {
        if let Some(q) = c.quota() {
            if q < -1 || q == 0 {
                return Err(format!("cpu.quota {q} is invalid (want a positive count of microseconds, or -1)"));
            }
        }
        if let Some(0) = c.shares() {
            return Err("cpu.shares 0 is invalid".into());
        }
    }
    if let Some(p) = r.pids() {
        if p.limit() < -1 {
            return Err(format!("pids.limit {} is invalid (want a positive count, or 0/-1 for unlimited)", p.limit()));
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
        let err = validate(&parse(r#"{"memory":{"limit":-5}}"#)).expect_err("negative memory");
        assert!(err.contains("memory.limit -5"), "{err}");
        let err = validate(&parse(r#"{"pids":{"limit":-7}}"#)).expect_err("negative pids");
        assert!(err.contains("pids.limit -7"), "{err}");
        assert!(validate(&parse(r#"{"memory":{"limit":16777216},"cpu":{"shares":512}}"#)).is_ok());
    }
}
