//! doas.conf: the rules that permit an owner (doas takes the last rule
//! that matches).

use super::{OwnerFacts, RootPath, RulesFile};

/// One doas.conf rule.
#[derive(Debug, PartialEq, Eq)]
struct DoasRule {
    line: usize,
    permit: bool,
    nopass: bool,
    identity: String,
    target: Option<String>,
    has_cmd: bool,
}

/// The first `permit` rule for `owner` that no later blanket `deny` undoes
/// (doas takes the last matching rule).
pub(super) fn doas_rule(file: &RulesFile, owner: &OwnerFacts) -> Option<RootPath> {
    let rules: Vec<DoasRule> = doas_rules(&file.text)
        .into_iter()
        .filter(|r| doas_identity_matches(&r.identity, owner))
        .collect();
    let standing: Vec<&DoasRule> = rules
        .iter()
        .enumerate()
        .filter(|(i, r)| {
            r.permit
                && !rules[i + 1..].iter().any(|d| {
                    !d.permit && !d.has_cmd && (d.target.is_none() || d.target == r.target)
                })
        })
        .map(|(_, r)| r)
        .collect();
    let first = standing.first()?;
    Some(RootPath::Doas {
        file: file.path.clone(),
        line: first.line,
        password: !standing.iter().any(|r| r.nopass),
    })
}

fn doas_identity_matches(identity: &str, owner: &OwnerFacts) -> bool {
    match identity.strip_prefix(':') {
        Some(group) => owner
            .groups
            .iter()
            .any(|(name, gid)| name == group || gid.to_string() == group),
        None => identity == owner.name || identity == owner.uid.to_string(),
    }
}

/// The rules of a doas.conf, each with the line it starts on. Lines that
/// are not rules are skipped (doas refuses to run with them, which is not
/// a way to root).
fn doas_rules(text: &str) -> Vec<DoasRule> {
    let mut rules = Vec::new();
    for (line, words) in doas_lines(text) {
        let mut words = words.iter().map(String::as_str).peekable();
        let permit = match words.next() {
            Some("permit") => true,
            Some("deny") => false,
            _ => continue,
        };
        let mut nopass = false;
        while let Some(&word) = words.peek() {
            match word {
                "nopass" => nopass = true,
                "nolog" | "persist" | "keepenv" => {}
                "setenv" => {
                    // setenv { … }: skip to the closing brace.
                    for w in words.by_ref() {
                        if w.ends_with('}') {
                            break;
                        }
                    }
                    continue;
                }
                _ => break,
            }
            words.next();
        }
        let Some(identity) = words.next() else {
            continue;
        };
        let mut target = None;
        let mut has_cmd = false;
        while let Some(word) = words.next() {
            match word {
                "as" => target = words.next().map(str::to_string),
                "cmd" => has_cmd = true,
                _ => {}
            }
        }
        rules.push(DoasRule {
            line,
            permit,
            nopass,
            identity: identity.to_string(),
            target,
            has_cmd,
        });
    }
    rules
}

/// doas.conf's logical lines as words: `#` comments dropped, `"…"` quoted
/// words kept whole, a backslash before a newline joining lines.
fn doas_lines(text: &str) -> Vec<(usize, Vec<String>)> {
    let mut out = Vec::new();
    let (mut words, mut word) = (Vec::new(), String::new());
    let (mut line, mut start) = (1, 1);
    let (mut quoted, mut comment) = (false, false);
    let mut chars = text.chars();
    let end_word = |word: &mut String, words: &mut Vec<String>| {
        if !word.is_empty() {
            words.push(std::mem::take(word));
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '\n' => {
                line += 1;
                comment = false;
                if !quoted {
                    end_word(&mut word, &mut words);
                    if !words.is_empty() {
                        out.push((start, std::mem::take(&mut words)));
                    }
                    start = line;
                }
            }
            _ if comment => {}
            '\\' => match chars.next() {
                Some('\n') => line += 1,
                Some(next) => word.push(next),
                None => {}
            },
            '"' => quoted = !quoted,
            '#' if !quoted => comment = true,
            c if c.is_whitespace() && !quoted => end_word(&mut word, &mut words),
            c => {
                if words.is_empty() && word.is_empty() {
                    start = line;
                }
                word.push(c);
            }
        }
    }
    end_word(&mut word, &mut words);
    if !words.is_empty() {
        out.push((start, words));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::tests::{host, owner, NO_SUDO};
    use super::super::{find, HostFacts, RootPath, RulesFile, DOAS_CONF};

    fn doas(text: &str) -> Vec<RootPath> {
        let host = HostFacts {
            doas: Some(Ok(RulesFile {
                path: DOAS_CONF.into(),
                text: text.into(),
            })),
            ..host()
        };
        find(&host, &owner(NO_SUDO, &["wheel"]))
    }

    #[test]
    fn doas_rules_for_the_owner_or_a_group_of_hers_count() {
        let at = |line, password| {
            vec![RootPath::Doas {
                file: DOAS_CONF.into(),
                line,
                password,
            }]
        };
        assert_eq!(doas("permit nopass alice as root\n"), at(1, false));
        assert_eq!(doas("# admins\n\npermit persist :wheel\n"), at(3, true));
        assert_eq!(
            doas("permit setenv { PATH=/bin } 1000 cmd id\n"),
            at(1, true)
        );
        assert_eq!(doas("permit keepenv \\\n  nopass alice\n"), at(1, false));
        assert_eq!(doas("permit \"alice\" as root # mine\n"), at(1, true));
        assert_eq!(
            doas("permit nopass :wheel\ndeny alice as root cmd id\n"),
            at(1, false)
        );
        for none in [
            "permit nopass bob as root\n",
            "permit :admins\n",
            "# permit nopass alice\n",
            "permit nopass alice as root\ndeny alice\n",
            "permit nopass :wheel as root\ndeny alice as root\n",
            "permit alicex\n",
        ] {
            assert!(doas(none).is_empty(), "{none}: {:?}", doas(none));
        }
        let text = doas("permit nopass alice\n")[0].to_string();
        assert_eq!(
            text,
            "without a password through doas (/etc/doas.conf line 1)"
        );
    }
}
