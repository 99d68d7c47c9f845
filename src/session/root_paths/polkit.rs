//! polkit's JavaScript rules: the ones that say yes to an owner without
//! authentication, found by a heuristic.

use super::{OwnerFacts, RootPath, RulesFile};

/// The rules in a polkit rules file that pass `owner` without
/// authentication. JavaScript is not parsed: this is a heuristic, tuned to
/// err on the side of finding a path. Each `polkit.addRule(` up to the next
/// `polkit.add…` is one rule (comments ignored); it passes the owner if it
/// returns `polkit.Result.YES` and
/// - names the owner as a string (`subject.user == "alice"`, a list of
///   names), or one of the owner's groups as a string beside
///   `isInGroup`, or
/// - tests neither `subject.user` nor `isInGroup` (it passes everyone), or
/// - tests them negated (`subject.user != …`, `!subject.isInGroup(…)`:
///   everyone but some),
///
/// unless it requires `subject.local == true`: a local seat, which a guest's
/// SSH session never is (Debian's packagekit rule for the sudo group); or
/// it is for pkexec alone (`action.id == "org.freedesktop.policykit.exec"`
/// and no other action): pkexec opens a PAM session through the
/// `polkit-1` stack, which the admin check gates.
pub fn polkit_rules(file: &RulesFile, owner: &OwnerFacts) -> Vec<RootPath> {
    let code = without_js_comments(&file.text);
    let starts: Vec<usize> = code.match_indices("polkit.add").map(|(i, _)| i).collect();
    let mut out = Vec::new();
    for (n, &at) in starts.iter().enumerate() {
        let end = starts.get(n + 1).copied().unwrap_or(code.len());
        let rule = &code[at..end];
        if !rule.starts_with("polkit.addRule") {
            continue;
        }
        let dense: String = rule.chars().filter(|c| !c.is_whitespace()).collect();
        if !dense.contains("polkit.Result.YES") {
            continue;
        }
        if dense.contains("subject.local==true") || dense.contains("subject.local===true") {
            continue;
        }
        let pkexec_only = ["==", "==="]
            .iter()
            .any(|eq| dense.contains(&format!("action.id{eq}\"org.freedesktop.policykit.exec\"")))
            && dense.matches("action.id").count() == 1
            && !dense.contains("||");
        if pkexec_only {
            continue;
        }
        let literal = |name: &str| {
            dense.contains(&format!("\"{name}\"")) || dense.contains(&format!("'{name}'"))
        };
        let tests_user = dense.contains("subject.user");
        let tests_group = dense.contains("isInGroup(");
        let negated = dense.contains("subject.user!=") || dense.contains("!subject.isInGroup(");
        let names_owner =
            literal(&owner.name) || (tests_group && owner.groups.iter().any(|(g, _)| literal(g)));
        if names_owner || negated || !(tests_user || tests_group) {
            out.push(RootPath::Polkit {
                file: file.path.clone(),
                line: code[..at].matches('\n').count() + 1,
            });
        }
    }
    out
}

/// `text` with `//` and `/* */` comments blanked (newlines kept, so line
/// numbers stay), strings left alone.
fn without_js_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        if let Some(q) = quote {
            out.push(c);
            if c == '\\' {
                out.extend(chars.next());
            } else if c == q || c == '\n' {
                quote = None;
            }
            continue;
        }
        match (c, chars.peek()) {
            ('/', Some('/')) => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            ('/', Some('*')) => {
                chars.next();
                let mut star = false;
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                    }
                    if star && c == '/' {
                        break;
                    }
                    star = c == '*';
                }
                out.push(' ');
            }
            ('"' | '\'' | '`', _) => {
                quote = Some(c);
                out.push(c);
            }
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::tests::{owner, NO_SUDO};
    use super::super::{RootPath, RulesFile};
    use super::polkit_rules;

    fn polkit(rule: &str) -> Vec<usize> {
        let file = RulesFile {
            path: "/etc/polkit-1/rules.d/10-x.rules".into(),
            text: rule.into(),
        };
        polkit_rules(&file, &owner(NO_SUDO, &["sudo", "netdev"]))
            .into_iter()
            .map(|p| match p {
                RootPath::Polkit { line, .. } => line,
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn polkit_rules_that_say_yes_to_the_owner_count() {
        let yes = |cond: &str| {
            format!("// a rule\npolkit.addRule(function(action, subject) {{\n    if ({cond}) {{\n        return polkit.Result.YES;\n    }}\n}});\n")
        };
        for cond in [
            "subject.user == \"alice\"",
            "subject.user === 'alice'",
            "[\"bob\", \"alice\"].indexOf(subject.user) >= 0",
            "subject.isInGroup(\"netdev\")",
            "action.id == \"org.freedesktop.systemd1.manage-units\"",
            "subject.user != \"bob\"",
            "!subject.isInGroup(\"wheel\")",
            "subject.isInGroup(\"sudo\") && subject.active == true",
        ] {
            assert_eq!(polkit(&yes(cond)), [2], "{cond}");
        }
        for cond in [
            "subject.user == \"bob\"",
            "subject.user == \"alicex\"",
            "subject.isInGroup(\"wheel\")",
            // Debian's packagekit rule: local seats only.
            "subject.active == true && subject.local == true && subject.isInGroup(\"sudo\")",
        ] {
            assert!(polkit(&yes(cond)).is_empty(), "{cond}");
        }
        // Not a yes; yes in a comment only; an admin rule.
        let pkexec = "polkit.addRule(function(action, subject) {\n  if (action.id == \"org.freedesktop.policykit.exec\" && subject.user == \"alice\") { return polkit.Result.YES; }\n});\n";
        assert!(polkit(pkexec).is_empty(), "pkexec alone is gated by PAM");
        let either = "polkit.addRule(function(action, subject) {\n  if ((action.id == \"org.freedesktop.policykit.exec\" || action.id == \"org.freedesktop.systemd1.manage-units\") && subject.user == \"alice\") { return polkit.Result.YES; }\n});\n";
        assert_eq!(polkit(either), vec![1]);
        let no = "polkit.addRule(function(action, subject) {\n  if (subject.user == \"alice\") return polkit.Result.AUTH_ADMIN;\n  // return polkit.Result.YES;\n  /* polkit.Result.YES */\n});\npolkit.addAdminRule(function(action, subject) { return [\"unix-user:alice\"]; });\n";
        assert!(polkit(no).is_empty());
        // The second of two rules, by its line.
        let two = format!(
            "{}{}",
            yes("subject.user == \"bob\""),
            yes("subject.user == \"alice\"")
        );
        assert_eq!(polkit(&two), [8]);
    }
}
