//! Checks on what frameworks send, with Mesos's error texts (`src/master/validation.cpp`,
//! `src/common/roles.cpp`, `src/common/validation.cpp`).

use std::collections::BTreeSet;

use mesoblk_proto::mesos::v1::framework_info::capability::Type as Capability;
use mesoblk_proto::mesos::v1::scheduler::OfferConstraints;
use mesoblk_proto::mesos::v1::FrameworkInfo;

/// Longest ID Mesos accepts (`NAME_MAX`).
const ID_LENGTH_MAX: usize = 255;

/// Whether the framework declared `capability`.
pub fn has_capability(info: &FrameworkInfo, capability: Capability) -> bool {
    info.capabilities
        .iter()
        .any(|c| c.r#type == Some(capability as i32))
}

/// The pre-MULTI_ROLE role (`FrameworkInfo.role`, default `*`).
#[allow(deprecated)] // Mesos still honours `role` for frameworks without MULTI_ROLE.
pub fn legacy_role(info: &FrameworkInfo) -> &str {
    info.role.as_deref().unwrap_or("*")
}

#[allow(deprecated)]
fn has_legacy_role(info: &FrameworkInfo) -> bool {
    info.role.is_some()
}

/// The roles a framework subscribes with: `roles` for MULTI_ROLE frameworks, else `{role}`.
pub fn framework_roles(info: &FrameworkInfo) -> BTreeSet<String> {
    if has_capability(info, Capability::MultiRole) {
        info.roles.iter().cloned().collect()
    } else {
        BTreeSet::from([legacy_role(info).to_string()])
    }
}

/// stout's `stringify(set)`: `{ a, b }`.
pub fn stringify_set<'a>(items: impl IntoIterator<Item = &'a String>) -> String {
    let items: Vec<&str> = items.into_iter().map(String::as_str).collect();
    format!("{{ {} }}", items.join(", "))
}

/// A role name (Mesos's `roles::validate`).
pub fn validate_role(role: &str) -> Result<(), String> {
    if role == "*" {
        return Ok(());
    }
    if role.starts_with('/') {
        return Err(format!("Role '{role}' cannot start with a slash"));
    }
    if role.ends_with('/') {
        return Err(format!("Role '{role}' cannot end with a slash"));
    }
    if role.contains("//") {
        return Err(format!("Role '{role}' cannot contain two adjacent slashes"));
    }
    let components: Vec<&str> = role.split('/').filter(|c| !c.is_empty()).collect();
    if components.is_empty() {
        return Err("Role names cannot be the empty string".into());
    }
    for component in components {
        match component {
            "." => return Err(format!("Role '{role}' cannot include '.' as a component")),
            ".." => return Err(format!("Role '{role}' cannot include '..' as a component")),
            "*" => return Err(format!("Role '{role}' cannot include '*' as a component")),
            _ => {}
        }
        if component.starts_with('-') {
            return Err(format!(
                "Role component '{component}' is invalid because it starts with a dash"
            ));
        }
        if component
            .chars()
            .any(|c| matches!(c, '\u{8}' | '\t' | '\n' | '\u{b}' | '\u{c}' | '\r' | ' '))
        {
            return Err(format!(
                "Role component '{component}' is invalid because it contains backspace or whitespace"
            ));
        }
    }
    Ok(())
}

/// An ID chosen by a client (Mesos's `common::validation::validateID`).
pub fn validate_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("ID must not be empty".into());
    }
    if id.len() > ID_LENGTH_MAX {
        return Err(format!(
            "ID must not be greater than {ID_LENGTH_MAX} characters"
        ));
    }
    if id == "." || id == ".." {
        return Err(format!("'{id}' is disallowed"));
    }
    if id.chars().any(|c| c.is_control() || c == '/' || c == '\\') {
        return Err(format!("'{id}' contains invalid characters"));
    }
    Ok(())
}

/// `FrameworkInfo` on its own (Mesos's `validation::framework::validate`).
pub fn validate_framework_info(info: &FrameworkInfo) -> Result<(), String> {
    let multi_role = has_capability(info, Capability::MultiRole);
    if multi_role {
        if has_legacy_role(info) {
            return Err(
                "'FrameworkInfo.role' must not be set when the framework is MULTI_ROLE capable"
                    .into(),
            );
        }
        let mut seen = BTreeSet::new();
        let duplicates: BTreeSet<&String> =
            info.roles.iter().filter(|r| !seen.insert(*r)).collect();
        if !duplicates.is_empty() {
            return Err(format!(
                "'FrameworkInfo.roles' contains duplicate items: {}",
                stringify_set(duplicates)
            ));
        }
        for role in &info.roles {
            validate_role(role)
                .map_err(|e| format!("'FrameworkInfo.roles' contains invalid role: {e}"))?;
        }
    } else {
        if !info.roles.is_empty() {
            return Err("'FrameworkInfo.roles' must not be set when the framework is not MULTI_ROLE capable".into());
        }
        validate_role(legacy_role(info))
            .map_err(|e| format!("'FrameworkInfo.role' is not a valid role: {e}"))?;
    }
    if let Some(id) = info.id.as_ref().filter(|id| !id.value.is_empty()) {
        validate_id(&id.value)?;
    }
    failover_timeout(info)?;
    Ok(())
}

/// The framework's failover timeout; Mesos refuses values that are not a valid duration.
pub fn failover_timeout(info: &FrameworkInfo) -> Result<std::time::Duration, String> {
    let secs = info.failover_timeout.unwrap_or(0.0);
    // stout's `Duration::create(double)`: int64 nanoseconds; negatives behave as zero.
    let nanos = secs * 1e9;
    if !nanos.is_finite() || nanos.abs() >= 9.2e18 {
        return Err(format!(
            "The framework failover_timeout ({secs}) is invalid"
        ));
    }
    Ok(std::time::Duration::try_from_secs_f64(secs.max(0.0)).unwrap_or_default())
}

/// Suppressed roles and offer constraints against the framework's roles
/// (`createAllocatorFrameworkOptions`).
pub fn validate_allocator_options(
    roles: &BTreeSet<String>,
    suppressed_roles: &[String],
    offer_constraints: Option<&OfferConstraints>,
) -> Result<(), String> {
    let invalid: BTreeSet<&String> = suppressed_roles
        .iter()
        .filter(|r| !roles.contains(*r))
        .collect();
    if !invalid.is_empty() {
        return Err(format!(
            "Suppressed roles {} are not contained in the set of roles",
            stringify_set(invalid)
        ));
    }
    if let Some(constraints) = offer_constraints {
        let mut constrained: Vec<&String> = constraints.role_constraints.keys().collect();
        constrained.sort();
        if let Some(role) = constrained.into_iter().find(|r| !roles.contains(*r)) {
            return Err(format!(
                "Offer constraints specify `role_constraints` for a role '{role}'not contained in the set of roles"
            ));
        }
    }
    Ok(())
}

/// What may not change when a framework resubscribes or updates (`validateUpdate`).
pub fn validate_update(old: &FrameworkInfo, new: &FrameworkInfo) -> Result<(), String> {
    if old.principal != new.principal {
        return Err("Changing framework's principal is not allowed.".into());
    }
    if old.user != new.user {
        return Err(format!(
            "Updating 'FrameworkInfo.user' is unsupported; attempted to update from '{}' to '{}'",
            old.user, new.user
        ));
    }
    let (old_cp, new_cp) = (
        old.checkpoint.unwrap_or(false),
        new.checkpoint.unwrap_or(false),
    );
    if old_cp != new_cp {
        return Err(format!(
            "Updating 'FrameworkInfo.checkpoint' is unsupported; attempted to update from '{old_cp}' to '{new_cp}'"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_follow_mesos_rules() {
        for ok in ["*", "a", "a/b", "team-1/dev", "a.b"] {
            assert_eq!(validate_role(ok), Ok(()), "{ok}");
        }
        for bad in [
            "", "/a", "a/", "a//b", ".", "a/..", "a/*", "-a", "a b", "a\tb",
        ] {
            assert!(validate_role(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ids_follow_mesos_rules() {
        assert!(validate_id("abc-0000").is_ok());
        for bad in ["", ".", "..", "a/b", "a\\b", "a\nb"] {
            assert!(validate_id(bad).is_err(), "{bad:?}");
        }
        assert!(validate_id(&"x".repeat(256)).is_err());
    }

    #[test]
    fn multi_role_frameworks_use_roles_only() {
        use mesoblk_proto::mesos::v1::framework_info::Capability as Cap;
        let mut info = FrameworkInfo {
            user: "u".into(),
            name: "n".into(),
            roles: vec!["a".into()],
            ..Default::default()
        };
        assert!(validate_framework_info(&info)
            .unwrap_err()
            .contains("not MULTI_ROLE capable"));
        info.capabilities.push(Cap {
            r#type: Some(Capability::MultiRole as i32),
        });
        assert_eq!(validate_framework_info(&info), Ok(()));
        info.roles.push("a".into());
        assert_eq!(
            validate_framework_info(&info),
            Err("'FrameworkInfo.roles' contains duplicate items: { a }".into())
        );
    }

    #[test]
    fn failover_timeout_must_be_a_duration() {
        let mut info = FrameworkInfo::default();
        assert_eq!(failover_timeout(&info), Ok(std::time::Duration::ZERO));
        info.failover_timeout = Some(100.0);
        assert_eq!(
            failover_timeout(&info),
            Ok(std::time::Duration::from_secs(100))
        );
        info.failover_timeout = Some(f64::INFINITY);
        assert!(failover_timeout(&info).is_err());
        info.failover_timeout = Some(1e300);
        assert!(failover_timeout(&info).is_err());
    }
}
