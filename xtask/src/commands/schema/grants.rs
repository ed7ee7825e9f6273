//! Who got which privileges, and who lost them, between two ACLs as the catalog query prints
//! them (`grantee: PRIV, PRIV (granted by x); grantee: PRIV`), so drift names the grantee of a
//! grant made or revoked by hand, as it names the trigger that was disabled.

use std::collections::{BTreeMap, BTreeSet};

/// Each grantee's privileges (with their `WITH GRANT OPTION` and grantor, as printed).
fn parse(acl: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut grantees: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    if acl == "none" {
        return grantees;
    }
    for entry in acl.split("; ") {
        let Some((grantee, privileges)) = entry.split_once(": ") else { continue };
        let (privileges, grantor) = match privileges.split_once(" (granted by ") {
            Some((privileges, by)) => (privileges, format!(" (granted by {}", by)),
            None => (privileges, String::new()),
        };
        let set = grantees.entry(grantee.to_owned()).or_default();
        set.extend(privileges.split(", ").map(|p| format!("{p}{grantor}")));
    }
    grantees
}

/// The changes from `expected` to `found`, grantee by grantee: `reporting got DELETE, INSERT;
/// auditor lost SELECT`. A missing side is an ACL with no entry of ours (the default one, whose
/// owner entry is not known here, so the owner's changes are said only where both sides list it).
pub fn changes(expected: Option<&str>, found: Option<&str>) -> Option<String> {
    let (expected, found) = (parse(expected.unwrap_or("none")), parse(found.unwrap_or("none")));
    let both_known =
        |grantee: &str| grantee != "<owner>" || (expected.contains_key(grantee) && found.contains_key(grantee));
    let grantees: BTreeSet<&String> = expected.keys().chain(found.keys()).collect();
    let mut said = Vec::new();
    for grantee in grantees.into_iter().filter(|g| both_known(g)) {
        let none = BTreeSet::new();
        let (before, after) = (expected.get(grantee).unwrap_or(&none), found.get(grantee).unwrap_or(&none));
        let got: Vec<&str> = after.difference(before).map(String::as_str).collect();
        let lost: Vec<&str> = before.difference(after).map(String::as_str).collect();
        let who = if grantee == "<owner>" { "the owner" } else { grantee.as_str() };
        if !got.is_empty() {
            said.push(format!("{who} got {}", got.join(", ")));
        }
        if !lost.is_empty() {
            said.push(format!("{who} lost {}", lost.join(", ")));
        }
    }
    (!said.is_empty()).then(|| said.join("; "))
}

#[cfg(test)]
mod tests {
    use super::changes;

    #[test]
    fn grantees_are_named_with_what_they_got_and_lost() {
        assert_eq!(
            changes(None, Some("<owner>: DELETE, INSERT, SELECT; reporting: DELETE, INSERT, SELECT, UPDATE"))
                .as_deref(),
            Some("reporting got DELETE, INSERT, SELECT, UPDATE")
        );
        assert_eq!(
            changes(
                Some("<owner>: SELECT, UPDATE; reader: SELECT"),
                Some("<owner>: SELECT; auditor: SELECT (granted by boss)")
            )
            .as_deref(),
            Some("the owner lost UPDATE; auditor got SELECT (granted by boss); reader lost SELECT")
        );
        assert_eq!(changes(Some("reader: SELECT"), None).as_deref(), Some("reader lost SELECT"));
        assert_eq!(changes(Some("reader: SELECT"), Some("reader: SELECT")), None);
    }
}
